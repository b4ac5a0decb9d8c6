"""Pooling layers with an input quantizer (TensorRT runs INT8 pooling when its input is quantized)."""
from __future__ import annotations

from torch import nn

from ._base import QuantInputMixin


class _QuantPool(QuantInputMixin):
    """Pooling twin: the float layer after an input quantizer."""


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
