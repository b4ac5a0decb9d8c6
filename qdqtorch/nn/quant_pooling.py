"""Pooling layers with an input quantizer (TensorRT runs INT8 pooling when its input is quantized)."""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..descriptor import QuantDescriptor
from ._base import QuantInputMixin


class _QuantPool(QuantInputMixin):
    def __init__(self, *args: Any, quant_desc_input: Optional[QuantDescriptor] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_quantizers(quant_desc_input)


class QuantMaxPool1d(_QuantPool, nn.MaxPool1d):
    """nn.MaxPool1d with an input quantizer."""


class QuantMaxPool2d(_QuantPool, nn.MaxPool2d):
    """nn.MaxPool2d with an input quantizer."""


class QuantMaxPool3d(_QuantPool, nn.MaxPool3d):
    """nn.MaxPool3d with an input quantizer."""


class QuantAvgPool1d(_QuantPool, nn.AvgPool1d):
    """nn.AvgPool1d with an input quantizer."""


class QuantAvgPool2d(_QuantPool, nn.AvgPool2d):
    """nn.AvgPool2d with an input quantizer."""


class QuantAvgPool3d(_QuantPool, nn.AvgPool3d):
    """nn.AvgPool3d with an input quantizer."""


class QuantAdaptiveAvgPool1d(_QuantPool, nn.AdaptiveAvgPool1d):
    """nn.AdaptiveAvgPool1d with an input quantizer."""


class QuantAdaptiveAvgPool2d(_QuantPool, nn.AdaptiveAvgPool2d):
    """nn.AdaptiveAvgPool2d with an input quantizer."""


class QuantAdaptiveAvgPool3d(_QuantPool, nn.AdaptiveAvgPool3d):
    """nn.AdaptiveAvgPool3d with an input quantizer."""
