"""Accuracy of every calibration method on the reference protocol, with and without BatchNorm folding.

YOLOv5n, 128 calibration images (coco128 train2017), 128 val2017 images, 640 letterbox, conf 0.001, NMS IoU 0.65.
Statistics are collected once per model variant with histogram calibrators (their exact running max gives the
"max" method too); each method then only recomputes amax. Every row is scored in PyTorch fake quant and as the
exported Q/DQ ONNX in ONNX Runtime.

    python benchmarks/bench_ptq_methods.py --out benchmarks/results_ptq_methods.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qdqtorch  # noqa: E402
from _common import add_protocol_args  # noqa: E402
from qdqtorch.eval import evaluate  # noqa: E402
from qdqtorch.export import export_onnx  # noqa: E402
from qdqtorch.export.runtime import OnnxRuntimeModule  # noqa: E402
from qdqtorch.models import PredictionOnly  # noqa: E402
from qdqtorch.ptq import PTQSettings, calibration_data, eval_kwargs, prepare  # noqa: E402
from qdqtorch.quantize import use_histogram_calibrators  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(p)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=["max", "entropy", "mse", "percentile"])
    p.add_argument("--fold", nargs="+", default=["no", "yes"], choices=["no", "yes"])
    p.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime rows")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()

    settings = PTQSettings(model=args.model, repo=args.repo, data=args.data, imgsz=args.imgsz, batch=args.batch,
                           num_calib=args.num_calib, num_eval=args.num_eval, scorer="fast", export=False,
                           rules=None)  # the untied model, as the §2 table measured it
    rows = []
    for fold in args.fold:
        # the PTQ run's prepare stage: load (BN folded or not), cache the val images, quantize
        prep = prepare(dataclasses.replace(settings, fold_bn=fold == "yes"), evaluate_float=fold == "no",
                       log=lambda line: None)
        model, eval_set, layout, kw = prep.model, prep.eval_set, prep.layout, eval_kwargs(prep)
        if fold == "no":
            r = prep.summary["float"]
            rows.append({"row": "float", "fold_bn": False, "map50_95": r["map50_95"], "map50": r["map50"]})
            print(rows[-1], flush=True)
        use_histogram_calibrators(model)
        t0 = time.perf_counter()
        qdqtorch.collect_stats(model, calibration_data(prep.settings, prep.preprocess))
        collect_s = time.perf_counter() - t0
        for method in args.methods:
            t0 = time.perf_counter()
            qdqtorch.compute_amax(model, method, progress=False)
            amax_s = time.perf_counter() - t0
            r = evaluate(model, eval_set, **kw)
            row = {"row": method, "fold_bn": fold == "yes", "map50_95": r.map50_95, "map50": r.map50,
                   "collect_s": collect_s, "compute_amax_s": amax_s}
            if not args.no_ort:
                with tempfile.TemporaryDirectory() as tmp:
                    path = export_onnx(PredictionOnly(model, layout), prep.sample, Path(tmp) / "m.onnx")
                    o = evaluate(OnnxRuntimeModule(path), eval_set, **kw)
                row.update(ort_map50_95=o.map50_95, ort_map50=o.map50)
            rows.append(row)
            print(row, flush=True)
    print("\n| calibration | BN folded | mAP50-95 fake quant | mAP50 fake quant | mAP50-95 ONNX Runtime | "
          "mAP50 ONNX Runtime | compute_amax (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ort = (f"{r['ort_map50_95']:.4f} | {r['ort_map50']:.4f}" if "ort_map50_95" in r else "- | -")
        print(f"| {r['row']} | {'yes' if r['fold_bn'] else 'no'} | {r['map50_95']:.4f} | {r['map50']:.4f} | {ort} | "
              f"{r.get('compute_amax_s', 0):.2f} |")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; {len(eval_set)} eval images, "
          f"{args.num_calib} calibration images, imgsz {args.imgsz}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
