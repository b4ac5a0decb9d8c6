"""MaxCalibrator: running absolute maximum, per tensor or per channel."""
from __future__ import annotations

from typing import Optional

import torch

from ..tensor_quant import normalize_axis
from ..errors import UsageError


class NonFiniteError(UsageError):
    """A calibrator was fed NaN or Inf."""


class MaxCalibrator:
    """Tracks max |x| over every collected tensor, either globally or per index along `axis`."""

    def __init__(self, num_bits: int = 8, axis: Optional[int] = None, unsigned: bool = False) -> None:
        self.num_bits = num_bits
        self.axis = axis
        self.unsigned = unsigned
        self._amax: Optional[torch.Tensor] = None
        self.num_collected = 0

    def collect(self, x: torch.Tensor) -> None:
        """Fold one tensor into the running max (kept on the tensor's device)."""
        x = x.detach()
        if self.axis is None:
            amax = x.abs().amax().float()
        else:
            axis = normalize_axis(self.axis, x.dim(), x.shape)
            dims = [d for d in range(x.dim()) if d != axis]
            amax = (x.abs().amax(dim=dims) if dims else x.abs()).float()
        if not torch.isfinite(amax).all():  # NaN/Inf propagate into the max: one cheap check
            raise NonFiniteError("input holds NaN/Inf values")
        if self._amax is None:
            self._amax = amax
        elif self._amax.shape != amax.shape:
            raise UsageError(f"MaxCalibrator: per-channel size changed from {tuple(self._amax.shape)} to "
                             f"{tuple(amax.shape)} between batches (axis={self.axis})")
        else:
            self._amax = torch.maximum(self._amax, amax.to(self._amax.device))
        self.num_collected += 1

    def compute_amax(self) -> Optional[torch.Tensor]:
        """The running max (None if nothing was collected)."""
        return None if self._amax is None else self._amax.clone()

    def merge_(self, other: "MaxCalibrator") -> None:
        """Fold another calibrator's statistics into this one (tied quantizers, distributed ranks)."""
        if other._amax is None:
            return
        self._amax = other._amax.clone() if self._amax is None else torch.maximum(self._amax, other._amax.to(self._amax.device))
        self.num_collected += other.num_collected

    def reset(self) -> None:
        """Forget everything collected."""
        self._amax = None
        self.num_collected = 0

    def __repr__(self) -> str:
        return f"MaxCalibrator(axis={self.axis}, collected={self.num_collected})"
