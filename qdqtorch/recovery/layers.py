"""The layers recovery can re-round (Conv1d/2d/3d and Linear twins with an enabled per-row weight quantizer) and
their input as rows of the layer's matrix product (im2col), so the output error is a quadratic form of the weights."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..nn import QuantConv1d, QuantConv2d, QuantConv3d, QuantLinear, TensorQuantizer
from ..tensor_quant import amax_to_scale, quant_bounds

RECOVERABLE = (QuantConv1d, QuantConv2d, QuantConv3d, QuantLinear)


def skip_reason(module: nn.Module) -> Optional[str]:
    """Why a weighted quantized layer cannot be re-rounded (None when it can)."""
    q = getattr(module, "_weight_quantizer", None)
    if not isinstance(q, TensorQuantizer) or not q.is_enabled:
        return "weight not quantized"
    if not isinstance(module, RECOVERABLE):
        return f"{type(module).__name__} is not supported"
    if q.amax is None:
        return "weight quantizer has no amax (calibrate first)"
    if q.axis not in (None, 0):
        return f"weight quantizer axis {q.axis} (only per-tensor or per output channel)"
    if not q.fake_quant:
        return "weight quantizer outputs integer codes (fake_quant=False)"
    if isinstance(module, nn.modules.conv._ConvNd) and module.padding_mode != "zeros":
        return f"padding_mode {module.padding_mode!r}"
    return None


def weighted_quant_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Every module with an enabled weight quantizer, in registration order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(getattr(m, "_weight_quantizer", None), TensorQuantizer) and m._weight_quantizer.is_enabled]


def groups_of(module: nn.Module) -> int:
    """Convolution groups (1 for Linear)."""
    return int(getattr(module, "groups", 1))


def weight_rows(module: nn.Module, group: int) -> torch.Tensor:
    """The weights of one group as a (rows, d) float matrix whose columns match `input_rows`."""
    w = module.weight.detach()
    per = w.shape[0] // groups_of(module)
    return w[group * per:(group + 1) * per].reshape(per, -1)


def scale_and_bounds(module: nn.Module) -> Tuple[torch.Tensor, int, int]:
    """Per-output-row quantization step of the weight (rows,) and the integer code bounds."""
    q = module._weight_quantizer
    lo, hi = quant_bounds(q.num_bits, q.unsigned, q.narrow_range)
    scale = amax_to_scale(q.amax, hi).to(module.weight.device).reshape(-1)
    if scale.numel() == 1:
        scale = scale.expand(module.weight.shape[0])
    return scale, lo, hi


def input_rows(module: nn.Module, x: torch.Tensor, group: int) -> torch.Tensor:
    """The layer input as rows (positions, d): a Linear's feature vectors, or a convolution's receptive-field
    patches of one group (zero padding included), ordered like `weight_rows` columns."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    g = groups_of(module)
    cin = x.shape[1] // g
    x = x[:, group * cin:(group + 1) * cin]
    dims = x.dim() - 2
    if dims == 1:  # as a 2-D image of height 1
        x = x.unsqueeze(2)
        k, s, p, d = ((1, *module.kernel_size), (1, *module.stride), (0, *module.padding), (1, *module.dilation))
    elif dims == 2:
        k, s, p, d = module.kernel_size, module.stride, module.padding, module.dilation
    else:
        return _patches_3d(module, x)
    if isinstance(module.padding, str):
        raise UsageError(f"padding={module.padding!r} is not supported by recovery")
    cols = F.unfold(x, k, dilation=d, padding=p, stride=s)         # (n, cin*k*k, positions)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _patches_3d(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    k, s, p, d = module.kernel_size, module.stride, module.padding, module.dilation
    x = F.pad(x, (p[2], p[2], p[1], p[1], p[0], p[0]))
    for axis in range(3):
        x = x.unfold(2 + axis, d[axis] * (k[axis] - 1) + 1, s[axis])[..., ::d[axis]]
    # (n, c, od, oh, ow, kd, kh, kw) -> (positions, c*kd*kh*kw)
    n, c = x.shape[:2]
    return x.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, c * k[0] * k[1] * k[2])
