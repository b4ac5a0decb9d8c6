"""Weight amax straight from the weight tensor: max, per-channel MSE search, percentile, or ADMM refinement."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import UsageError
from ..tensor_quant import normalize_axis, quant_bounds
from .methods import WEIGHT_METHODS


def _rows(weight: torch.Tensor, axis: Optional[int]) -> torch.Tensor:
    """|weight| as a 2-D (channels, elements) float32 matrix; one row when per-tensor."""
    w = weight.detach().float().abs()
    if axis is None:
        return w.reshape(1, -1)
    axis = normalize_axis(axis, w.dim(), w.shape)
    return w.movedim(axis, 0).reshape(w.shape[axis], -1)


def _finish(amax: torch.Tensor, axis: Optional[int]) -> torch.Tensor:
    return amax.reshape(()) if axis is None else amax


def weight_amax(weight: torch.Tensor, axis: Optional[int] = None, num_bits: int = 8, unsigned: bool = False,
                method: str = "max", *, percentile: float = 99.99, num_candidates: int = 100,
                admm_iters: int = 20) -> torch.Tensor:
    """amax of a weight tensor (scalar, or 1-D along `axis`) by `method`:

    max: max |w|; mse: per channel, the fraction of max |w| (from `num_candidates` in [0.5, 1]) with the smallest
    quantization MSE; percentile: per-channel torch.quantile of |w|; admm: alternate integer codes and the
    least-squares scale for those codes (the TNN tool's refinement), starting from max.
    """
    if method not in WEIGHT_METHODS:
        raise UsageError(f"unknown weight calibration method {method!r}; choose one of {WEIGHT_METHODS}")
    rows = _rows(weight, axis)
    amax = rows.amax(dim=1)
    if method == "max":
        return _finish(amax, axis)
    _, max_bound = quant_bounds(num_bits, unsigned)
    if method == "percentile":
        return _finish(torch.quantile(rows, percentile / 100.0, dim=1), axis)
    if method == "mse":
        fractions = torch.linspace(0.5, 1.0, num_candidates, device=rows.device)
        best_err = torch.full_like(amax, float("inf"))
        best = amax.clone()
        for frac in fractions:  # vectorised over channels and elements; loops only over the candidate grid
            cand = amax * frac
            scale = (cand.clamp_min(1e-12) / max_bound)[:, None]
            err = ((torch.clamp(torch.round(rows / scale), 0, max_bound) * scale - rows) ** 2).sum(1)
            better = err < best_err
            best = torch.where(better, cand, best)
            best_err = torch.where(better, err, best_err)
        return _finish(best, axis)
    # admm: fix codes, solve scale = <w, q> / <q, q>, repeat
    scale = (amax.clamp_min(1e-12) / max_bound)
    for _ in range(admm_iters):
        codes = torch.clamp(torch.round(rows / scale[:, None]), 0, max_bound)
        denom = (codes * codes).sum(1)
        new_scale = torch.where(denom > 0, (rows * codes).sum(1) / denom.clamp_min(1e-12), scale)
        if torch.allclose(new_scale, scale, rtol=1e-7, atol=0):
            scale = new_scale
            break
        scale = new_scale
    return _finish(torch.where(amax > 0, scale * max_bound, amax), axis)
