"""Quantized elementwise add and concat: modules that TensorRT placement rules insert around residuals/Concat."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..descriptor import QUANT_DESC_8BIT_PER_TENSOR, QuantDescriptor
from .tensor_quantizer import TensorQuantizer


class QuantAdd(nn.Module):
    """a + b with a quantizer on each input; disable one to quantize only the residual branch (Conv+Add fusion)."""

    def __init__(self, quant_desc_input: Optional[QuantDescriptor] = None, quantize: Sequence[bool] = (True, True)):
        super().__init__()
        desc = quant_desc_input or QUANT_DESC_8BIT_PER_TENSOR
        self._input0_quantizer = TensorQuantizer(desc, disabled=not quantize[0])
        self._input1_quantizer = TensorQuantizer(desc, disabled=not quantize[1])

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._input0_quantizer(a) + self._input1_quantizer(b)


class QuantConcat(nn.Module):
    """torch.cat with one quantizer shared by every input, so all inputs carry one scale and TensorRT drops the
    Concat instead of re-quantizing."""

    def __init__(self, dim: int = 1, quant_desc_input: Optional[QuantDescriptor] = None):
        super().__init__()
        self.dim = dim
        self._input_quantizer = TensorQuantizer(quant_desc_input or QUANT_DESC_8BIT_PER_TENSOR)

    def forward(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self._input_quantizer(t) for t in tensors], self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
