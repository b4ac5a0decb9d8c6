"""HistogramCalibrator: a histogram of |x| and the amax searches TensorRT users know (entropy, mse, percentile).

The histogram keeps a fixed bin width chosen from the first non-zero batch and grows by appending bins when a larger
value arrives, so no count is ever lost or re-binned approximately. If it grows past `max_bins`, adjacent bins are
merged by an integer factor (again exact). Counts are int64 on the data's device. The entropy and mse searches evaluate
every candidate threshold in closed form from prefix sums: no Python loop over bins or candidates.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

import torch

from ..errors import UsageError
from ..tensor_quant import quant_bounds
from .max import NonFiniteError
from .methods import AMAX_METHODS


class HistogramCalibrator:
    """Collects a histogram of |x| (per tensor) and turns it into an amax with `compute_amax(method, ...)`."""

    def __init__(self, num_bits: int = 8, axis: Optional[int] = None, unsigned: bool = False,
                 num_bins: int = 2048, max_bins: Optional[int] = None) -> None:
        if axis is not None:
            raise UsageError("HistogramCalibrator is per-tensor only (axis=None); use MaxCalibrator per channel")
        if num_bins < 2:
            raise UsageError(f"HistogramCalibrator: num_bins must be >= 2, got {num_bins}")
        self.num_bits = num_bits
        self.axis = None
        self.unsigned = unsigned
        self.num_bins = num_bins
        self.max_bins = max_bins or 4 * num_bins
        self.counts: Optional[torch.Tensor] = None
        self.bin_width: Optional[float] = None
        self.max_value = 0.0
        self.min_value: Optional[float] = None  # signed minimum, for shifted grids
        self._pending_zeros = 0  # elements seen while every value so far was exactly 0
        self.num_collected = 0

    # ---- collection -------------------------------------------------------------------------------------------
    def collect(self, x: torch.Tensor) -> None:
        """Add |x| to the histogram (and x's minimum to `min_value`), growing its range if needed."""
        x = x.detach().float().reshape(-1)
        if x.numel() == 0:
            return
        low, high = (float(v) for v in torch.aminmax(x))  # one pass for both ends: max |x| and the minimum
        x = x.abs()
        self.num_collected += 1
        if not (math.isfinite(low) and math.isfinite(high)):
            raise NonFiniteError("input holds NaN/Inf values")
        self.min_value = low if self.min_value is None else min(self.min_value, low)
        xmax = max(-low, high)
        if self.counts is None:
            if xmax == 0.0:
                self._pending_zeros += x.numel()
                return
            self.bin_width = xmax / self.num_bins
            self.counts = torch.zeros(self.num_bins, dtype=torch.int64, device=x.device)
            self.counts[0] += self._pending_zeros
            self._pending_zeros = 0
        self.max_value = max(self.max_value, xmax)
        self._grow_to(xmax)
        # |x| >= 0, so truncation is floor; int32 indices + bincount is ~3x faster than floor-divide + int64
        idx = (x * (1.0 / self.bin_width)).to(torch.int32).clamp_(max=self.counts.numel() - 1)
        self.counts += torch.bincount(idx, minlength=self.counts.numel()).to(self.counts.device)

    def _grow_to(self, xmax: float) -> None:
        """Append bins of the same width until xmax is covered, merging bins if that exceeds max_bins."""
        needed = math.ceil(xmax / self.bin_width)
        if needed <= self.counts.numel():
            return
        if needed > self.max_bins:
            factor = math.ceil(needed / self.max_bins)
            padded = torch.nn.functional.pad(self.counts, (0, (-self.counts.numel()) % factor))
            self.counts = padded.reshape(-1, factor).sum(dim=1)
            self.bin_width *= factor
            needed = math.ceil(xmax / self.bin_width)
        if needed > self.counts.numel():
            self.counts = torch.nn.functional.pad(self.counts, (0, needed - self.counts.numel()))

    def merge_(self, other: "HistogramCalibrator") -> None:
        """Fold another histogram into this one (tied quantizers, distributed ranks).

        Exact when both share a bin width (the other's bins are re-binned by their centres otherwise).
        """
        if other.min_value is not None:
            self.min_value = other.min_value if self.min_value is None else min(self.min_value, other.min_value)
        if other.counts is None:
            self._pending_zeros += other._pending_zeros
            self.num_collected += other.num_collected
            return
        if self.counts is None:
            self.counts, self.bin_width = other.counts.clone(), other.bin_width
            self.counts[0] += self._pending_zeros
            self._pending_zeros = 0
        else:
            self._grow_to(other.counts.numel() * other.bin_width)
            centres = (torch.arange(other.counts.numel(), device=other.counts.device, dtype=torch.float64) + 0.5)
            idx = torch.div(centres * other.bin_width, self.bin_width, rounding_mode="floor").long()
            idx = idx.clamp_(max=self.counts.numel() - 1).to(self.counts.device)
            self.counts.index_add_(0, idx, other.counts.to(self.counts.device))
            self.counts[0] += other._pending_zeros
        self.max_value = max(self.max_value, other.max_value)
        self.num_collected += other.num_collected

    def state(self) -> Dict[str, Any]:
        """The collected statistics as plain data (counts on CPU), for `load_state` or for sending to other ranks."""
        return {"counts": None if self.counts is None else self.counts.cpu(), "bin_width": self.bin_width,
                "max_value": self.max_value, "min_value": self.min_value, "pending_zeros": self._pending_zeros,
                "n": self.num_collected}

    def load_state(self, state: Mapping[str, Any], device: Optional[torch.device] = None) -> None:
        """Replace the statistics by a `state()`, counts on `device` if given."""
        counts = state["counts"]
        self.counts = None if counts is None else counts.to(device).clone()
        self.bin_width, self.max_value = state["bin_width"], state["max_value"]
        self.min_value = state.get("min_value")
        self._pending_zeros, self.num_collected = int(state["pending_zeros"]), int(state["n"])

    def reset(self) -> None:
        """Forget everything collected."""
        self.counts, self.bin_width, self.max_value, self.min_value = None, None, 0.0, None
        self._pending_zeros = 0
        self.num_collected = 0

    # ---- amax -------------------------------------------------------------------------------------------------
    def compute_amax(self, method: str = "percentile", *, percentile: float = 99.99, start_bin: int = 128,
                     stride: int = 1, unsigned: Optional[bool] = None) -> Optional[torch.Tensor]:
        """amax from the histogram by `method` in {max, entropy, mse, percentile}; None if nothing was collected.

        `unsigned` overrides the calibrator's own: True searches for the range end of a one-sided grid with all
        2**bits - 1 steps on [0, amax] (how a shifted grid spends its codes)."""
        if method not in AMAX_METHODS:
            raise UsageError(f"HistogramCalibrator: unknown method {method!r}; choose one of {AMAX_METHODS}")
        if self.num_collected == 0:
            return None
        if self.counts is None:  # only zeros seen
            return torch.zeros(())
        if method == "max":
            value = self.max_value
        elif method == "percentile":
            value = histogram_percentile(self.counts, self.bin_width, percentile)
        else:
            search = entropy_search if method == "entropy" else mse_search
            one_sided = self.unsigned if unsigned is None else unsigned
            nbins = search(self.counts, self.num_bits, one_sided, start_bin=start_bin, stride=stride)
            value = nbins * self.bin_width
        return torch.tensor(min(float(value), self.max_value) if method == "percentile" else float(value))

    def __repr__(self) -> str:
        n = 0 if self.counts is None else self.counts.numel()
        return f"HistogramCalibrator(bins={n}, max={self.max_value:.4g}, collected={self.num_collected})"


def _candidates(num_bins: int, start_bin: int, stride: int, device: torch.device) -> torch.Tensor:
    """Candidate bin counts i (threshold = right edge of bin i-1): start_bin..num_bins by stride."""
    if stride < 1:
        raise UsageError(f"stride must be >= 1, got {stride}")
    start = max(1, min(start_bin, num_bins))
    return torch.arange(start, num_bins + 1, stride, device=device)


def histogram_percentile(counts: torch.Tensor, bin_width: float, percentile: float) -> float:
    """Right edge of the first bin at which the cumulative share of |x| reaches `percentile` percent."""
    if not 0 < percentile <= 100:
        raise UsageError(f"percentile must be in (0, 100], got {percentile}")
    cdf = torch.cumsum(counts, 0)
    rank = max(1, math.ceil(int(cdf[-1]) * percentile / 100.0 - 1e-9))  # the rank-th smallest |x|
    idx = int(torch.searchsorted(cdf, torch.tensor([rank], device=cdf.device)).clamp(max=counts.numel() - 1))
    return (idx + 1) * bin_width


def _prefix(values: torch.Tensor) -> torch.Tensor:
    """[0, v0, v0+v1, ...]: range sums in O(1) as prefix[hi] - prefix[lo]."""
    return torch.cat([values.new_zeros(1), torch.cumsum(values, 0)])


def entropy_search(counts: torch.Tensor, num_bits: int = 8, unsigned: bool = False, *, start_bin: int = 128,
                   stride: int = 1) -> int:
    """TensorRT's KL-divergence calibration: the number of bins i whose clipped distribution P (outliers folded
    into bin i-1) is best approximated by its quantized version Q (bins [0, i) merged into 2**(bits-1) levels,
    level j holding the bins k with floor(k * levels / i) == j, each level's mass spread evenly over its non-empty
    bins). Ties go to the largest i.

    Evaluated in closed form from prefix sums, O(levels) per candidate instead of O(bins):
    KL = sum(p log p)/T - log T + log S - sum(p log q)/T, with T all counts, S the counts below i, and
    sum(p log q) = sum_j M_j log(M_j / U_j) + tail * log q_{i-1} (M_j: level mass, U_j: its non-empty bins).
    """
    n = counts.double()
    total = n.sum()
    levels = 1 << (num_bits - 1 + int(unsigned))
    cand = _candidates(n.numel(), start_bin, stride, n.device)
    mass_prefix = _prefix(n)
    used_prefix = _prefix((n > 0).double())
    nlogn_prefix = _prefix(torch.where(n > 0, n * torch.log(n.clamp_min(1)), torch.zeros_like(n)))
    i = cand[:, None]
    j = torch.arange(levels + 1, device=n.device)[None, :]
    bounds = (j * i + levels - 1) // levels  # ceil(j * i / levels): first bin of level j
    mass = torch.diff(mass_prefix[bounds], dim=1)
    used = torch.diff(used_prefix[bounds], dim=1).clamp_(min=1)
    level_term = torch.xlogy(mass, mass / used).sum(1)  # xlogy: 0 where the level is empty
    i = cand
    below = mass_prefix[i]
    tail = total - below
    last = n[i - 1]
    last_level = ((i - 1) * levels) // i
    q_last = mass.gather(1, last_level[:, None])[:, 0] / used.gather(1, last_level[:, None])[:, 0]
    p_last = last + tail
    sum_plogp = nlogn_prefix[i - 1] + torch.where(p_last > 0, p_last * torch.log(p_last.clamp_min(1)), 0 * p_last)
    sum_plogq = level_term + torch.where(tail > 0, tail * torch.log(q_last.clamp_min(1e-300)), 0 * tail)
    kl = sum_plogp / total - torch.log(total) + torch.log(below.clamp_min(1e-300)) - sum_plogq / total
    kl = torch.where(((tail > 0) & (last == 0)) | (below == 0), torch.full_like(kl, float("inf")), kl)
    last_min = kl.numel() - 1 - int(torch.argmin(kl.flip(0)))
    return int(cand[last_min])


def mse_search(counts: torch.Tensor, num_bits: int = 8, unsigned: bool = False, *, start_bin: int = 128,
               stride: int = 1) -> int:
    """The number of bins i whose right edge, used as amax, minimises the quantization MSE of the histogram
    (each bin represented by its centre).

    Closed form from prefix sums of n, n*c and n*c^2 (c: bin centre), O(levels) per candidate: bins whose centres
    round to level m contribute sum n (c - m s)^2; bins past amax are clipped to it.
    """
    n = counts.double()
    nbins = n.numel()
    _, bound = quant_bounds(num_bits, unsigned)
    centres = torch.arange(nbins, device=n.device, dtype=torch.float64) + 0.5
    p0, p1, p2 = _prefix(n), _prefix(n * centres), _prefix(n * centres * centres)
    cand = _candidates(nbins, start_bin, stride, n.device)
    i = cand[:, None]
    m = torch.arange(1, bound + 1, device=n.device)[None, :]
    # first bin whose centre rounds to level m (1..B): ceil(((2m - 1) i - B) / 2B), exact integer arithmetic
    starts = torch.minimum((-(-((2 * m - 1) * i - bound) // (2 * bound))).clamp_(min=0), i)
    # sum_m over levels of sum n (c - m s)^2, by parts: p2[i] - 2 s (B p1[i] - sum_m p1[L_m])
    #                                                    + s^2 (B^2 p0[i] - sum_m (2m - 1) p0[L_m])
    amax = cand.double()
    step = amax / bound
    inside = (p2[cand] - 2 * step * (bound * p1[cand] - p1[starts].sum(1))
              + step * step * (bound * bound * p0[cand] - p0[starts] @ (2 * m[0] - 1).double()))
    clipped = (p2[-1] - p2[cand]) - 2 * amax * (p1[-1] - p1[cand]) + amax * amax * (p0[-1] - p0[cand])
    err = inside + clipped
    return int(cand[int(torch.argmin(err))])
