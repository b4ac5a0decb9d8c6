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
        self._min: Optional[torch.Tensor] = None  # signed minimum (per-tensor only), for shifted grids
        self.num_collected = 0

    @property
    def min_value(self) -> Optional[float]:
        """The most negative value collected (per-tensor calibrators; None before data or per channel)."""
        return None if self._min is None else float(self._min)

    def collect(self, x: torch.Tensor) -> None:
        """Fold one tensor into the running max (kept on the tensor's device)."""
        x = x.detach()
        if self.axis is None:
            low, high = torch.aminmax(x)  # one pass for max |x| and the minimum, kept on the device (no sync)
            amax = torch.maximum(-low, high).float()
            low = low.float()
            self._min = low if self._min is None else torch.minimum(self._min, low.to(self._min.device))
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
        if other._min is not None:
            theirs_min = other._min.to(self._min.device) if self._min is not None else other._min.clone()
            self._min = theirs_min if self._min is None else torch.minimum(self._min, theirs_min)
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
        low = state.get("min")
        self._min = None if low is None else torch.tensor(float(low)).to(device)

    def reset(self) -> None:
        """Forget everything collected."""
        self._max = None
        self._min = None
        self.num_collected = 0

    def __repr__(self) -> str:
        return f"MaxCalibrator(axis={self.axis}, collected={self.num_collected})"
