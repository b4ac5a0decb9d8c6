"""MaxCalibrator: running absolute maximum, per tensor or per channel."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

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
        self._max: Optional[torch.Tensor] = None
        self.min_value: Optional[float] = None  # signed minimum (per-tensor only), for shifted grids
        self.num_collected = 0

    def collect(self, x: torch.Tensor) -> None:
        """Fold one tensor into the running max (kept on the tensor's device)."""
        x = x.detach()
        if self.axis is None:
            amax = x.abs().amax().float()
            low = float(x.min()) if x.numel() else 0.0
            self.min_value = low if self.min_value is None else min(self.min_value, low)
        else:
            axis = normalize_axis(self.axis, x.dim(), x.shape)
            dims = [d for d in range(x.dim()) if d != axis]
            amax = (x.abs().amax(dim=dims) if dims else x.abs()).float()
        if not torch.isfinite(amax).all():  # NaN/Inf propagate into the max: one cheap check
            raise NonFiniteError("input holds NaN/Inf values")
        if self._max is None:
            self._max = amax
        elif self._max.shape != amax.shape:
            raise UsageError(f"MaxCalibrator: per-channel size changed from {tuple(self._max.shape)} to "
                             f"{tuple(amax.shape)} between batches (axis={self.axis})")
        else:
            self._max = torch.maximum(self._max, amax.to(self._max.device))
        self.num_collected += 1

    def compute_amax(self) -> Optional[torch.Tensor]:
        """The running max (None if nothing was collected)."""
        return None if self._max is None else self._max.clone()

    def merge_(self, other: "MaxCalibrator") -> None:
        """Fold another calibrator's statistics into this one (tied quantizers, distributed ranks)."""
        if other.min_value is not None:
            self.min_value = other.min_value if self.min_value is None else min(self.min_value, other.min_value)
        if other._max is None:
            return
        theirs = other._max
        self._max = theirs.clone() if self._max is None else torch.maximum(self._max, theirs.to(self._max.device))
        self.num_collected += other.num_collected

    @property
    def device(self) -> Optional[torch.device]:
        """Where the running max lives (None before any data)."""
        return None if self._max is None else self._max.device

    def state(self) -> Dict[str, Any]:
        """The collected statistics as plain data (running max on CPU, batch count), for `load_state`."""
        return {"max": None if self._max is None else self._max.detach().cpu().clone(), "n": self.num_collected,
                "min": self.min_value}

    def load_state(self, state: Mapping[str, Any], device: Optional[torch.device] = None) -> None:
        """Replace the statistics by a `state()` (e.g. all-reduced across ranks), on `device` if given."""
        value = state["max"]
        self._max = None if value is None else torch.as_tensor(value, dtype=torch.float32).to(device).clone()
        self.num_collected = int(state["n"])
        self.min_value = state.get("min")

    def reset(self) -> None:
        """Forget everything collected."""
        self._max = None
        self.min_value = None
        self.num_collected = 0

    def __repr__(self) -> str:
        return f"MaxCalibrator(axis={self.axis}, collected={self.num_collected})"
