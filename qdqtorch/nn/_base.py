"""Mixins shared by the quantized module twins: quantizer construction and conversion from float modules."""
from __future__ import annotations

import copy
from typing import Any, Optional, TypeVar

import torch
from torch import nn

from ..descriptor import QUANT_DESC_8BIT_CONV_WEIGHT_PER_CHANNEL, QUANT_DESC_8BIT_PER_TENSOR, QuantDescriptor
from .tensor_quantizer import TensorQuantizer

M = TypeVar("M", bound=nn.Module)


def _float_twin_args(module: nn.Module) -> dict:
    """Constructor keyword arguments that rebuild `module`'s float class with the same hyper-parameters."""
    if isinstance(module, nn.Linear):
        return dict(in_features=module.in_features, out_features=module.out_features, bias=module.bias is not None)
    if isinstance(module, nn.modules.conv._ConvNd):
        args = dict(in_channels=module.in_channels, out_channels=module.out_channels,
                    kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
                    dilation=module.dilation, groups=module.groups, bias=module.bias is not None,
                    padding_mode=module.padding_mode)
        if module.transposed:
            args["output_padding"] = module.output_padding
        return args
    raise TypeError(f"cannot build a quantized twin of {type(module).__name__}")


class QuantInputMixin:
    """Adds `_input_quantizer`, applied to the first forward argument (pooling layers)."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR

    def __init__(self, *args: Any, quant_desc_input: Optional[QuantDescriptor] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_quantizers(quant_desc_input)

    def _init_quantizers(self, quant_desc_input: Optional[QuantDescriptor] = None) -> None:
        self._input_quantizer = TensorQuantizer(quant_desc_input or self.default_quant_desc_input)

    def forward(self, input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return super().forward(self._input_quantizer(input), *args, **kwargs)

    @classmethod
    def from_float(cls, module: nn.Module, quant_desc_input: Optional[QuantDescriptor] = None, **_: Any) -> nn.Module:
        """A quantized copy of a float pooling module (no parameters to carry over)."""
        twin = cls.__new__(cls)
        twin.__dict__.update({k: (copy.copy(v) if isinstance(v, dict) else v) for k, v in module.__dict__.items()})
        twin._init_quantizers(quant_desc_input)
        return twin


class QuantWeightMixin:
    """Adds `_input_quantizer` and `_weight_quantizer` to a weighted layer (Conv*, ConvTranspose*, Linear)."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight = QUANT_DESC_8BIT_CONV_WEIGHT_PER_CHANNEL

    def __init__(self, *args: Any, quant_desc_input: Optional[QuantDescriptor] = None,
                 quant_desc_weight: Optional[QuantDescriptor] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_quantizers(quant_desc_input, quant_desc_weight)

    def _init_quantizers(self, quant_desc_input: Optional[QuantDescriptor] = None,
                         quant_desc_weight: Optional[QuantDescriptor] = None) -> None:
        self._input_quantizer = TensorQuantizer(quant_desc_input or self.default_quant_desc_input)
        self._weight_quantizer = TensorQuantizer(quant_desc_weight or self.default_quant_desc_weight)

    def _quant_input_and_weight(self, input: torch.Tensor) -> tuple:
        return self._input_quantizer(input), self._weight_quantizer(self.weight)

    @classmethod
    def from_float(cls, module: nn.Module, quant_desc_input: Optional[QuantDescriptor] = None,
                   quant_desc_weight: Optional[QuantDescriptor] = None) -> nn.Module:
        """A quantized twin sharing `module`'s weight and bias tensors, hyper-parameters, device, dtype and mode."""
        with torch.device("meta"):
            twin = cls(**_float_twin_args(module), quant_desc_input=quant_desc_input,
                       quant_desc_weight=quant_desc_weight, dtype=module.weight.dtype)
        twin.weight = module.weight
        twin.bias = module.bias
        twin._init_quantizers(quant_desc_input, quant_desc_weight)  # real (not meta) quantizers
        twin._input_quantizer.to(module.weight.device)
        twin._weight_quantizer.to(module.weight.device)
        twin.train(module.training)
        return twin
