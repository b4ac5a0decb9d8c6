"""Quantized twin of nn.Linear."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..descriptor import QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW
from ._base import QuantWeightMixin


class QuantLinear(QuantWeightMixin, nn.Linear):
    """nn.Linear with per-tensor input and per-row (axis 0) weight quantizers."""

    default_quant_desc_weight = QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x, w = self._quant_input_and_weight(input)
        return F.linear(x, w, self.bias)
