"""Choosing integer weight codes that minimise a layer's output error: nearest, AdaRound and GPTQ rounding.

Every solver works on one layer's quadratic reconstruction problem. With `Xq` the layer's quantized input rows
(from the quantized model) and `Xf` the float model's input rows, output row c's error is
``||Xq w_c - Xf wf_c||^2 = w_c^T H w_c - 2 w_c^T t_c + const`` where ``H = Xq^T Xq / n`` and
``t_c = (Xq^T Xf / n) wf_c``. The weights are ``w = scale * codes`` with integer codes in [lo, hi], so a solver
picks codes; rows (output channels) are independent and solved together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from ..errors import UsageError

ROUNDINGS = ("nearest", "adaround", "gptq")

# AdaRound's rectified sigmoid stretch (Nagel et al. 2020): h(V) = clamp(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)
ZETA, GAMMA = 1.1, -0.1


@dataclass
class Problem:
    """One layer's reconstruction problem (float64 or float32 tensors on one device).

    weight: float weights (rows, d); scale: per-row step (rows,); lo/hi: integer code bounds; hessian: H (d, d);
    target: t (rows, d), the linear term (float weights seen through the float/quantized input cross moment).
    """

    weight: torch.Tensor
    scale: torch.Tensor
    lo: int
    hi: int
    hessian: torch.Tensor
    target: torch.Tensor

    def loss(self, codes: torch.Tensor) -> torch.Tensor:
        """Per-row ``w^T H w - 2 w^T t`` for weights ``scale * codes`` (the output error up to a constant)."""
        w = codes * self.scale[:, None]
        return ((w @ self.hessian) * w).sum(1) - 2 * (w * self.target).sum(1)


def nearest_codes(p: Problem) -> torch.Tensor:
    """Round-to-nearest codes of the float weights (what plain fake quant uses)."""
    return torch.clamp(torch.round(p.weight / p.scale[:, None]), p.lo, p.hi)


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def adaround_codes(p: Problem, iters: int = 500, lr: float = 1e-2, reg: float = 0.01, warmup: float = 0.2,
                   beta: tuple = (20.0, 2.0), on_step: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """AdaRound: learn per weight whether to round down or up, minimising the output error plus an annealed
    regulariser that pushes every soft rounding h(V) to 0 or 1; returns the hard codes.

    The output error is normalised per row by ``scale^2 * mean(diag H)`` (a one-step change of one weight costs
    about 1), so `reg` means the same on every layer. Gradients are analytic (no autograd): the error is quadratic.
    """
    scale = p.scale[:, None]
    floor = torch.floor(p.weight / scale)
    rest = (p.weight / scale - floor).clamp(1e-4, 1 - 1e-4)
    v = torch.log((rest - GAMMA) / (ZETA - rest)).requires_grad_(False)   # h(v) == rest at the start
    norm = (scale.pow(2) * torch.diagonal(p.hessian).mean().clamp_min(1e-30))
    m = torch.zeros_like(v)
    s2 = torch.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    start = int(warmup * iters)
    for step in range(iters):
        sig = torch.sigmoid(v)
        h = torch.clamp(sig * (ZETA - GAMMA) + GAMMA, 0, 1)
        codes = floor + h
        inside = (codes >= p.lo) & (codes <= p.hi)
        w = scale * codes.clamp(p.lo, p.hi)
        grad_w = 2 * (w @ p.hessian - p.target) / norm              # d error / d w, normalised
        grad_h = grad_w * scale * inside
        if step >= start:
            frac = (step - start) / max(iters - start, 1)
            b = beta[0] + (beta[1] - beta[0]) * frac
            u = 2 * h - 1
            grad_h = grad_h - reg * b * u.abs().pow(b - 1) * torch.sign(u) * 2
        dh_dv = (ZETA - GAMMA) * sig * (1 - sig) * ((h > 0) & (h < 1))
        g = grad_h * dh_dv
        m.mul_(b1).add_(g, alpha=1 - b1)
        s2.mul_(b2).addcmul_(g, g, value=1 - b2)
        mhat = m / (1 - b1 ** (step + 1))
        shat = s2 / (1 - b2 ** (step + 1))
        v = v - lr * mhat / (shat.sqrt() + eps)
        if on_step is not None:
            on_step()
    return torch.clamp(floor + (_h(v) >= 0.5).to(floor.dtype), p.lo, p.hi)


def gptq_codes(p: Problem, damp: float = 0.01, block: int = 128) -> torch.Tensor:
    """GPTQ (Frantar et al. 2022) on the least-squares optimum ``w* = H^-1 t``: quantize one input column at a
    time and spread its error over the columns not yet quantized through the inverse Hessian."""
    d = p.hessian.shape[0]
    diag = torch.diagonal(p.hessian)
    lam = damp * diag.mean().clamp_min(1e-30)
    h = p.hessian + lam * torch.eye(d, dtype=p.hessian.dtype, device=p.hessian.device)
    # the damped optimum leans towards the float weights where the data says little
    w = torch.linalg.solve(h, (p.target + lam * p.weight).T).T.clone()
    dead = diag <= 0
    w[:, dead] = p.weight[:, dead]
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    scale = p.scale[:, None]
    codes = torch.zeros_like(w)
    for i0 in range(0, d, block):
        i1 = min(i0 + block, d)
        wb = w[:, i0:i1].clone()
        err = torch.zeros_like(wb)
        hb = hinv[i0:i1, i0:i1]
        for j in range(i1 - i0):
            q = torch.clamp(torch.round(wb[:, j:j + 1] / scale), p.lo, p.hi)
            codes[:, i0 + j] = q[:, 0]
            e = (wb[:, j:j + 1] - q * scale) / hb[j, j]
            wb[:, j:] -= e * hb[j:j + 1, j:]
            err[:, j:j + 1] = e
        w[:, i1:] -= err @ hinv[i0:i1, i1:]
    return codes


def solve(p: Problem, method: str, **kwargs) -> torch.Tensor:
    """Integer codes (rows, d), as floats, for `method` in ROUNDINGS."""
    if method == "nearest":
        return nearest_codes(p)
    if method == "adaround":
        return adaround_codes(p, **kwargs)
    if method == "gptq":
        return gptq_codes(p, **{k: v for k, v in kwargs.items() if k in ("damp", "block")})
    raise UsageError(f"unknown rounding {method!r}; choose one of {ROUNDINGS}")
