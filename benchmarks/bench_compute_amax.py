"""compute_amax speed: qdqtorch's vectorised histogram searches vs a straightforward per-bin reference, one run.

Collects real YOLOv5n activation histograms (every input quantizer) on coco128 train images, then times entropy and
mse amax for all quantizers with qdqtorch, and the reference loops (one Python step per candidate threshold and per
bin, the way the classic tools do it) on the first --ref-quantizers of them. Reports per-quantizer ratios and checks
that both pick the same amax within one bin.

    python benchmarks/bench_compute_amax.py --num-images 128 --imgsz 640
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qdqtorch  # noqa: E402
from qdqtorch.calib import HistogramCalibrator  # noqa: E402
from qdqtorch.data import Preprocess, calibration_loader  # noqa: E402
from qdqtorch.models import load_model  # noqa: E402


def reference_entropy(counts: np.ndarray, num_bits: int = 8, start_bin: int = 128) -> int:
    """Per-candidate, per-bin Python loops (the classic implementation style)."""
    nq = 1 << (num_bits - 1)
    best, best_i = math.inf, None
    for i in range(start_bin, len(counts) + 1):
        level_mass = [0.0] * nq
        level_used = [0] * nq
        for k in range(i):
            j = k * nq // i
            if counts[k] > 0:
                level_mass[j] += counts[k]
                level_used[j] += 1
        p = counts[:i].astype(np.float64)
        p[i - 1] += counts[i:].sum()
        q = np.zeros(i)
        for k in range(i):
            if counts[k] > 0:
                j = k * nq // i
                q[k] = level_mass[j] / level_used[j]
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        kl = math.inf if np.any(q[mask] == 0) else float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl <= best:
            best, best_i = kl, i
    return best_i


def reference_mse_per_bin(counts: np.ndarray, num_bits: int = 8, start_bin: int = 128) -> int:
    """Per-candidate, per-bin Python loops."""
    max_code = (1 << (num_bits - 1)) - 1
    best, best_i = math.inf, None
    for i in range(start_bin, len(counts) + 1):
        scale = i / max_code
        err = 0.0
        for k in range(len(counts)):
            if counts[k]:
                c = k + 0.5
                q = min(round(c / scale), max_code) * scale
                err += counts[k] * (q - c) ** 2
        if err < best:
            best, best_i = err, i
    return best_i


def reference_mse(counts: np.ndarray, num_bits: int = 8, start_bin: int = 128) -> int:
    """One vectorised fake-quant of the bin centres per candidate threshold (the classic tools' mse)."""
    max_code = (1 << (num_bits - 1)) - 1
    centres = np.arange(len(counts)) + 0.5
    best, best_i = math.inf, None
    for i in range(start_bin, len(counts) + 1):
        scale = i / max_code
        err = float(((np.clip(np.round(centres / scale), 0, max_code) * scale - centres) ** 2 * counts).sum())
        if err < best:
            best, best_i = err, i
    return best_i


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT.parent / "shared/models/yolov5n.pt"))
    p.add_argument("--repo", default=str(ROOT / "tests/fixtures/yolov5_repo"))
    p.add_argument("--calib-images", default=str(ROOT.parent / "shared/data/coco128/images/train2017"))
    p.add_argument("--num-images", type=int, default=128)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ref-quantizers", type=int, default=6, help="quantizers timed with the slow reference")
    args = p.parse_args()

    model = load_model(args.model, repo=args.repo).model
    qdqtorch.quantize_model(model)
    qdqtorch.quantize.use_histogram_calibrators(model)
    loader = calibration_loader(args.calib_images, Preprocess(imgsz=args.imgsz), batch_size=args.batch,
                                num_images=args.num_images)
    t0 = time.perf_counter()
    qdqtorch.collect_stats(model, loader)
    collect_s = time.perf_counter() - t0
    quantizers = [(n, q) for n, q in qdqtorch.named_quantizers(model)
                  if isinstance(q.calibrator, HistogramCalibrator)]
    bins = [q.calibrator.counts.numel() for _, q in quantizers]
    print(f"{len(quantizers)} histogram quantizers, bins {min(bins)}..{max(bins)}, collect_stats {collect_s:.1f}s")

    rows = []
    for method, reference in (("entropy", reference_entropy), ("mse", reference_mse_per_bin),
                              ("mse", reference_mse)):
        t0 = time.perf_counter()
        ours = [q.calibrator.compute_amax(method).item() for _, q in quantizers]
        ours_s = time.perf_counter() - t0
        sub = quantizers[:args.ref_quantizers]
        t0 = time.perf_counter()
        ref = [reference(q.calibrator.counts.cpu().numpy()) * q.calibrator.bin_width for _, q in sub]
        ref_s = time.perf_counter() - t0
        within = sum(abs(a - b) <= q.calibrator.bin_width * 1.0001 for a, b, (_, q) in zip(ours, ref, sub))
        ratio = (ref_s / len(sub)) / (ours_s / len(quantizers))
        rows.append((f"{method} vs {reference.__name__}", ours_s, ours_s / len(quantizers), ref_s / len(sub), ratio,
                     within, len(sub)))
    print("\n| method | qdqtorch, all quantizers (s) | qdqtorch per quantizer (s) | reference per quantizer (s) "
          "| speed-up | same amax (±1 bin) |")
    print("|---|---|---|---|---|---|")
    for method, total, per, ref_per, ratio, within, n in rows:
        print(f"| {method} | {total:.2f} | {per:.4f} | {ref_per:.3f} | {ratio:.0f}x | {within}/{n} |")
    print(f"\nmachine: {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.num_images} images at {args.imgsz}")


if __name__ == "__main__":
    main()
