"""Calibrators against brute-force references: running max, histogram growth, entropy, mse, percentile."""
import math

import numpy as np
import pytest
import torch

from qdqtorch.calib import HistogramCalibrator, MaxCalibrator, entropy_search, mse_search, weight_amax


def test_max_calibrator_per_tensor_and_per_channel():
    torch.manual_seed(0)
    batches = [torch.randn(2, 3, 4, 4) * (i + 1) for i in range(3)]
    everything = torch.cat(batches)
    per_tensor, per_channel = MaxCalibrator(), MaxCalibrator(axis=1)
    for b in batches:
        per_tensor.collect(b)
        per_channel.collect(b)
    assert per_tensor.compute_amax().item() == everything.abs().max().item()
    assert torch.equal(per_channel.compute_amax(), everything.abs().amax(dim=(0, 2, 3)))
    assert MaxCalibrator().compute_amax() is None


def test_histogram_grows_without_losing_counts():
    torch.manual_seed(0)
    batches = [torch.randn(5000) * s for s in (1.0, 3.0, 0.5, 7.0)]
    calib = HistogramCalibrator(num_bins=256)
    for b in batches:
        calib.collect(b)
    allx = torch.cat(batches).abs().double()
    assert int(calib.counts.sum()) == allx.numel()
    # the same as binning everything at once with the final bin width (up to float32 rounding at bin edges)
    idx = torch.clamp((allx / calib.bin_width).floor().long(), max=calib.counts.numel() - 1)
    reference = torch.bincount(idx, minlength=calib.counts.numel())
    assert (calib.counts - reference).abs().sum() <= 4
    assert calib.counts.numel() * calib.bin_width >= allx.max().item()
    assert calib.max_value == pytest.approx(allx.max().item())


def test_histogram_merges_bins_when_range_explodes():
    calib = HistogramCalibrator(num_bins=64, max_bins=128)
    calib.collect(torch.linspace(0, 1, 1000))
    calib.collect(torch.tensor([50.0, 0.5]))
    assert calib.counts.numel() <= 128
    assert int(calib.counts.sum()) == 1002
    assert calib.counts.numel() * calib.bin_width >= 50.0


def reference_kl_search(counts: np.ndarray, nq: int, start: int, stride: int) -> int:
    """Direct loop over thresholds: P = clipped histogram with outliers in its last bin, Q = P's bins merged into
    nq levels (level j covers bins k with floor(k*nq/i) == j) and spread evenly over non-empty bins."""
    n = len(counts)
    best, best_i = math.inf, None
    for i in range(start, n + 1, stride):
        p = counts[:i].astype(np.float64).copy()
        p[i - 1] += counts[i:].sum()
        q = np.zeros(i)
        for j in range(nq):
            lo, hi = -(-j * i // nq), -(-(j + 1) * i // nq)
            seg = counts[lo:hi]
            nonzero = seg > 0
            if nonzero.any():
                q[lo:hi][nonzero] = seg.sum() / nonzero.sum()
        p /= p.sum()
        q /= q.sum()
        with np.errstate(divide="ignore"):
            kl = sum(pk * math.log(pk / qk) if qk > 0 else math.inf for pk, qk in zip(p, q) if pk > 0)
        if kl <= best:
            best, best_i = kl, i
    return best_i


def test_entropy_matches_direct_kl_search():
    rng = np.random.default_rng(0)
    values = np.abs(rng.laplace(scale=1.0, size=200_000))
    counts, _ = np.histogram(values, bins=400, range=(0, values.max()))
    counts[300:310] = 0  # empty bins inside the range
    got = entropy_search(torch.from_numpy(counts), num_bits=7, start_bin=64, stride=1)
    assert got == reference_kl_search(counts, nq=64, start=64, stride=1)
    got = entropy_search(torch.from_numpy(counts), num_bits=8, start_bin=128, stride=3)
    assert got == reference_kl_search(counts, nq=128, start=128, stride=3)


def histogram_mse(counts: np.ndarray, nbins_kept: int, max_code: int = 127) -> float:
    centres = np.arange(len(counts)) + 0.5
    scale = nbins_kept / max_code
    q = np.clip(np.round(centres / scale), 0, max_code) * scale
    return float(((q - centres) ** 2 * counts).sum())


def test_mse_amax_no_worse_than_neighbours():
    rng = np.random.default_rng(1)
    values = np.abs(rng.standard_t(df=3, size=100_000))
    counts, _ = np.histogram(values, bins=1024, range=(0, values.max()))
    best = mse_search(torch.from_numpy(counts), start_bin=128)
    err = histogram_mse(counts, best)
    for neighbour in (best - 1, best + 1, best - 10, best + 10, 128, 1024):
        if 128 <= neighbour <= 1024:
            assert err <= histogram_mse(counts, neighbour) + 1e-9
    exhaustive = min(range(128, 1025), key=lambda i: histogram_mse(counts, i))
    assert err == pytest.approx(histogram_mse(counts, exhaustive), rel=1e-9)


@pytest.mark.parametrize("pct", [99.0, 99.9, 99.99])
def test_percentile_matches_torch_quantile_within_one_bin(pct):
    torch.manual_seed(2)
    x = torch.randn(200_000) * 2
    calib = HistogramCalibrator()
    calib.collect(x[:100_000])
    calib.collect(x[100_000:])
    amax = calib.compute_amax("percentile", percentile=pct).item()
    expected = torch.quantile(x.abs().double(), pct / 100).item()
    assert abs(amax - expected) <= calib.bin_width * 1.0001


def test_histogram_max_and_entropy_on_calibrator():
    torch.manual_seed(3)
    x = torch.randn(100_000)
    calib = HistogramCalibrator()
    calib.collect(x)
    assert calib.compute_amax("max").item() == pytest.approx(x.abs().max().item())
    ent = calib.compute_amax("entropy").item()
    assert 0 < ent <= x.abs().max().item() + calib.bin_width
    with pytest.raises(ValueError, match="unknown method"):
        calib.compute_amax("kl")


def test_histogram_merge_of_two_calibrators_equals_one():
    torch.manual_seed(4)
    a, b = torch.randn(1000), torch.randn(1000) * 0.5
    one = HistogramCalibrator(num_bins=128)
    one.collect(a)
    one.collect(b)
    left, right = HistogramCalibrator(num_bins=128), HistogramCalibrator(num_bins=128)
    left.collect(a)
    right.collect(b)
    right.bin_width = left.bin_width  # same grid: exact
    right.counts = torch.bincount((b.abs() / left.bin_width).floor().long(), minlength=128)
    left.merge_(right)
    assert torch.equal(left.counts, one.counts)


def test_weight_amax_methods():
    torch.manual_seed(5)
    w = torch.randn(16, 8, 3, 3)
    w[3, 0, 0, 0] = 20.0  # an outlier channel
    maxed = weight_amax(w, 0, method="max")
    assert torch.equal(maxed, w.abs().amax(dim=(1, 2, 3)))

    def err(amax):
        s = (amax / 127)[:, None, None, None]
        return ((torch.clamp(torch.round(w / s), -127, 127) * s - w) ** 2).sum(dim=(1, 2, 3))

    mse = weight_amax(w, 0, method="mse")
    assert (err(mse) <= err(maxed) + 1e-9).all()
    admm = weight_amax(w, 0, method="admm")
    assert err(admm).sum() <= err(maxed).sum()
    pct = weight_amax(w, 0, method="percentile", percentile=99.0)
    assert torch.allclose(pct, torch.quantile(w.abs().reshape(16, -1), 0.99, dim=1))
    per_tensor = weight_amax(w, None)
    assert per_tensor.dim() == 0 and per_tensor.item() == 20.0
