"""Symmetric linear (fake) quantization of tensors: the arithmetic every TensorQuantizer runs.

Scale convention (TensorRT's): ``scale = amax / max_bound`` with ``max_bound = 2**(bits-1) - 1`` (signed) or
``2**bits - 1`` (unsigned); codes are ``clamp(round_half_even(x / scale), min_bound, max_bound)`` and the fake-quant
value is ``code * scale``. A per-tensor quantizer may carry an integer zero point ``zp`` (a *shifted grid*, see
`TensorQuantizer.zero_point`): codes ``clamp(round(x / scale) + zp, min_bound, max_bound)``, value
``(code - zp) * scale``, i.e. the same codes moved to cover ``[(min_bound - zp), (max_bound - zp)] * scale`` for
one-sided tensors such as SiLU outputs. Gradients are straight-through inside the grid's range and zero outside
(clipped STE).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .errors import UsageError

AMAX_FLOOR = 1e-7
"""Smallest amax turned into a scale: dead channels (amax 0) get a tiny positive scale instead of 0, NaN or Inf."""


def quant_bounds(num_bits: int, unsigned: bool = False, narrow_range: bool = True) -> Tuple[int, int]:
    """Integer code range (min_bound, max_bound) for a bit width and sign."""
    if unsigned:
        return 0, (1 << num_bits) - 1
    max_bound = (1 << (num_bits - 1)) - 1
    return (-max_bound if narrow_range else -max_bound - 1), max_bound


def amax_to_scale(amax: torch.Tensor, max_bound: int) -> torch.Tensor:
    """Per-tensor or per-channel float32 scale from amax, floored so that it is always positive and finite."""
    return amax.detach().float().clamp_min(AMAX_FLOOR) / max_bound


def _channel_view(t: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """Reshape a 1-D per-channel tensor so it broadcasts along `axis` of an `ndim`-dimensional tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


def normalize_axis(axis: Optional[int], ndim: int, size_of: Optional[torch.Size] = None) -> Optional[int]:
    """Turn a possibly negative axis into a non-negative one, with a clear error if it is out of range."""
    if axis is None:
        return None
    if not -ndim <= axis < ndim:
        raise UsageError(f"quantization axis {axis} is out of range for a {ndim}-D tensor"
                         + (f" of shape {tuple(size_of)}" if size_of is not None else ""))
    return axis % ndim


def fake_tensor_quant(x: torch.Tensor, amax: torch.Tensor, num_bits: int = 8, unsigned: bool = False,
                      narrow_range: bool = True, axis: Optional[int] = None, zero_point: int = 0) -> torch.Tensor:
    """Fake-quantize `x` with a fixed amax (scalar, or 1-D along `axis`); clipped straight-through gradient.

    Uses torch's fused fake_quantize kernels (which ONNX export turns into QuantizeLinear/DequantizeLinear), or on
    CPU without autograd the same arithmetic as plain vectorised ops, with bit-identical results.
    """
    lo, hi = quant_bounds(num_bits, unsigned, narrow_range)
    scale = amax_to_scale(amax, hi).to(x.device)
    dtype = x.dtype
    xf = x if dtype == torch.float32 else x.float()
    if zero_point and axis is not None:
        raise UsageError("a zero point (shifted grid) is only supported for per-tensor quantization")
    if axis is None and _use_inference_kernel(xf):
        out = _inference_fake_quant(xf, scale.reshape(()), lo, hi, zero_point)
    elif axis is None:
        zero = torch.tensor(zero_point, dtype=torch.int32, device=x.device)
        out = torch.fake_quantize_per_tensor_affine(xf, scale.reshape(()), zero, lo, hi)
    else:
        axis = normalize_axis(axis, x.dim(), x.shape)
        scale = scale.reshape(-1)
        zero = torch.zeros(scale.numel(), dtype=torch.int32, device=x.device)
        out = torch.fake_quantize_per_channel_affine(xf, scale, zero, axis, lo, hi)
    return out if dtype == torch.float32 else out.to(dtype)


def _use_inference_kernel(x: torch.Tensor) -> bool:
    """On CPU without autograd, vectorised elementwise ops beat torch's fused kernel, which also builds the STE
    mask and runs about 4x slower there; on GPU the fused kernel is one pass and stays. Never while tracing."""
    if x.device.type != "cpu" or (x.requires_grad and torch.is_grad_enabled()):
        return False
    return not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


def _inference_fake_quant(x: torch.Tensor, scale: torch.Tensor, lo: int, hi: int, zero_point: int = 0
                          ) -> torch.Tensor:
    """The same arithmetic as torch's per-tensor fake-quantize kernel (multiply by the float32 reciprocal, add the
    zero point, round half to even, clamp, remove the zero point, rescale), hence bit-identical values."""
    inv_scale = torch.reciprocal(scale)
    if not zero_point:
        return torch.mul(x, inv_scale).round_().clamp_(lo, hi).mul_(scale)
    return torch.mul(x, inv_scale).add_(zero_point).round_().clamp_(lo, hi).sub_(zero_point).mul_(scale)


def learnable_fake_tensor_quant(x: torch.Tensor, amax: torch.Tensor, num_bits: int = 8, unsigned: bool = False,
                                narrow_range: bool = True, axis: Optional[int] = None, zero_point: int = 0
                                ) -> torch.Tensor:
    """Fake-quantize with a gradient for amax as well (LSQ-style): d out / d amax = (code - x/scale) / max_bound.

    Inputs outside the range pass no gradient to `x` but tell amax to grow (their code sits at the bound).
    """
    lo, hi = quant_bounds(num_bits, unsigned, narrow_range)
    amax_b = amax if axis is None else _channel_view(amax, x.dim(), normalize_axis(axis, x.dim(), x.shape))
    # floored in value, not in gradient: an amax at the floor (all codes at the bound) must still learn to grow
    scale = (amax_b + (amax_b.clamp_min(AMAX_FLOOR) - amax_b).detach()) / hi
    scaled = x / scale + zero_point
    rounded = scaled + (torch.round(scaled) - scaled).detach()
    return (torch.clamp(rounded, lo, hi) - zero_point) * scale


def tensor_quant(x: torch.Tensor, amax: torch.Tensor, num_bits: int = 8, unsigned: bool = False,
                 narrow_range: bool = True, axis: Optional[int] = None, zero_point: int = 0
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Real quantization: integer codes (in x's float dtype) and the scale that maps them back to x's units
    (``(code - zero_point) * scale``)."""
    lo, hi = quant_bounds(num_bits, unsigned, narrow_range)
    scale = amax_to_scale(amax, hi).to(x.device)
    if axis is not None:
        scale = _channel_view(scale.reshape(-1), x.dim(), normalize_axis(axis, x.dim(), x.shape))
    codes = torch.clamp(torch.round(x.float() / scale) + zero_point, lo, hi)
    return codes.to(x.dtype), scale
