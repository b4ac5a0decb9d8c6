"""Why entropy calibration trails the other methods on YOLOv5n: per-quantizer clipping, and which layers cost it.

Collects histograms once (--num-calib train images), then for every input quantizer compares the entropy amax with
the max and mse amax and the share of |x| mass that entropy clips. It then scores mixes on the val split:
entropy everywhere, entropy with the K quantizers it clips hardest (relative to mse) switched to mse, and mse with
only those K switched to entropy. If the mixes move most of the gap, the loss sits in a few layers' tails.

    python benchmarks/entropy_analysis.py --num-calib 128 --imgsz 640 --top 5 --out runs/entropy_analysis.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qdqtorch  # noqa: E402
from _common import add_protocol_args  # noqa: E402
from qdqtorch.calib import HistogramCalibrator  # noqa: E402
from qdqtorch.data import Preprocess, calibration_loader  # noqa: E402
from qdqtorch.eval import EvalSet, evaluate  # noqa: E402
from qdqtorch.models import load_model  # noqa: E402
from qdqtorch.quantize import use_histogram_calibrators  # noqa: E402


def clipped_share(calib: HistogramCalibrator, amax: float) -> float:
    """Share of the collected |x| mass above `amax` (from the histogram's bin centres)."""
    counts = calib.counts.double()
    centres = (torch.arange(counts.numel(), dtype=torch.float64) + 0.5) * calib.bin_width
    return float(counts[centres > amax].sum() / counts.sum())


def set_amax(model: torch.nn.Module, amax: Dict[str, float]) -> None:
    """Load the given per-tensor amax into the named quantizers."""
    quantizers = dict(qdqtorch.named_quantizers(model))
    for name, value in amax.items():
        quantizers[name].amax = torch.tensor(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(p)
    p.add_argument("--top", type=int, default=5, help="quantizers switched between entropy and mse")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    pp = Preprocess(imgsz=args.imgsz)
    eval_set = EvalSet.from_yaml(args.data, "val", pp, num_images=args.num_eval)
    loaded = load_model(args.model, repo=args.repo)
    model = loaded.model
    qdqtorch.quantize_model(model)
    use_histogram_calibrators(model)
    qdqtorch.collect_stats(model, calibration_loader(args.data, pp, batch_size=16, num_images=args.num_calib,
                                                     split="train"))
    rows, amax = [], {m: {} for m in ("max", "entropy", "mse")}
    for name, q in qdqtorch.named_quantizers(model):
        calib = q.calibrator
        if not isinstance(calib, HistogramCalibrator) or calib.num_collected == 0 or calib.max_value == 0:
            continue  # unreached or all-zero (dead) inputs have no clipping to compare
        for m in amax:
            amax[m][name] = float(calib.compute_amax(m))
        rows.append({"quantizer": name, "max": amax["max"][name], "entropy": amax["entropy"][name],
                     "mse": amax["mse"][name], "entropy_over_mse": amax["entropy"][name] / amax["mse"][name],
                     "entropy_clipped_share": clipped_share(calib, amax["entropy"][name]),
                     "mse_clipped_share": clipped_share(calib, amax["mse"][name])})
    rows.sort(key=lambda r: r["entropy_over_mse"])
    worst = [r["quantizer"] for r in rows[:args.top]]
    qdqtorch.compute_amax(model, "max", progress=False)  # weights and any non-histogram quantizer

    def score(label: str, chosen: Dict[str, float]) -> dict:
        set_amax(model, chosen)
        r = evaluate(model, eval_set, layout=loaded.layout, scorer="fast")
        print(f"{label}: mAP50-95 {r.map50_95:.4f} mAP50 {r.map50:.4f}", flush=True)
        return {"mix": label, "map50_95": r.map50_95, "map50": r.map50}

    mixes = [score("entropy everywhere", amax["entropy"]),
             score(f"entropy, top {args.top} by entropy/mse switched to mse",
                   {**amax["entropy"], **{n: amax["mse"][n] for n in worst}}),
             score(f"mse, top {args.top} switched to entropy",
                   {**amax["mse"], **{n: amax["entropy"][n] for n in worst}}),
             score("mse everywhere", amax["mse"])]
    print("\n| quantizer | max | entropy | mse | entropy/mse | |x| clipped by entropy | by mse |")
    print("|---|---|---|---|---|---|---|")
    for r in rows[:max(args.top, 10)]:
        print(f"| {r['quantizer']} | {r['max']:.3f} | {r['entropy']:.3f} | {r['mse']:.3f} | "
              f"{r['entropy_over_mse']:.2f} | {r['entropy_clipped_share']:.2e} | {r['mse_clipped_share']:.2e} |")
    n_tighter = sum(r["entropy_over_mse"] < 1 for r in rows)
    print(f"\nentropy amax below mse amax on {n_tighter}/{len(rows)} quantizers; median entropy/mse "
          f"{sorted(r['entropy_over_mse'] for r in rows)[len(rows) // 2]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"quantizers": rows, "mixes": mixes, "switched": worst}, indent=1))


if __name__ == "__main__":
    main()
