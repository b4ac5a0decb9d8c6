"""Quantized twins of Conv{1,2,3}d and ConvTranspose{1,2,3}d: quantize input and weight, then convolve."""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..descriptor import QUANT_DESC_8BIT_CONVTRANSPOSE_WEIGHT_PER_CHANNEL
from ._base import QuantWeightMixin


class _QuantConvNd(QuantWeightMixin):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x, w = self._quant_input_and_weight(input)
        return self._conv_forward(x, w, self.bias)


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """nn.Conv1d with per-tensor input and per-channel (axis 0) weight quantizers."""


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """nn.Conv2d with per-tensor input and per-channel (axis 0) weight quantizers."""


class QuantConv3d(_QuantConvNd, nn.Conv3d):
    """nn.Conv3d with per-tensor input and per-channel (axis 0) weight quantizers."""


class _QuantConvTransposeNd(_QuantConvNd):
    default_quant_desc_weight = QUANT_DESC_8BIT_CONVTRANSPOSE_WEIGHT_PER_CHANNEL
    _conv_transpose = None  # F.conv_transpose{1,2,3}d
    _spatial_dims = 0

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              self._spatial_dims, self.dilation)
        x, w = self._quant_input_and_weight(input)
        return type(self)._conv_transpose(x, w, self.bias, self.stride, self.padding, output_padding, self.groups,
                                          self.dilation)


class QuantConvTranspose1d(_QuantConvTransposeNd, nn.ConvTranspose1d):
    """nn.ConvTranspose1d with per-tensor input and per-channel (axis 1) weight quantizers."""
    _conv_transpose, _spatial_dims = F.conv_transpose1d, 1


class QuantConvTranspose2d(_QuantConvTransposeNd, nn.ConvTranspose2d):
    """nn.ConvTranspose2d with per-tensor input and per-channel (axis 1) weight quantizers."""
    _conv_transpose, _spatial_dims = F.conv_transpose2d, 2


class QuantConvTranspose3d(_QuantConvTransposeNd, nn.ConvTranspose3d):
    """nn.ConvTranspose3d with per-tensor input and per-channel (axis 1) weight quantizers."""
    _conv_transpose, _spatial_dims = F.conv_transpose3d, 3
