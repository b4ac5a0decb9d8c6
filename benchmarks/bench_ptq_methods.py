"""Accuracy of every calibration method on the reference protocol, with and without BatchNorm folding.

YOLOv5n, 128 calibration images (coco128 train2017), 128 val2017 images, 640 letterbox, conf 0.001, NMS IoU 0.65.
Statistics are collected once per model variant with histogram calibrators (their exact running max gives the
"max" method too); each method then only recomputes amax. Every row is scored in PyTorch fake quant and as the
exported Q/DQ ONNX in ONNX Runtime.

    python benchmarks/bench_ptq_methods.py --out benchmarks/results_ptq_methods.json
"""
from __future__ import annotations

import argparse
import copy
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
from qdqtorch.data import Preprocess, calibration_loader  # noqa: E402
from qdqtorch.eval import EvalSet, evaluate  # noqa: E402
from qdqtorch.export import export_onnx  # noqa: E402
from qdqtorch.export.runtime import OnnxRuntimeModule  # noqa: E402
from qdqtorch.models import PredictionOnly, load_model  # noqa: E402
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

    pp = Preprocess(imgsz=args.imgsz)
    eval_set = EvalSet.from_yaml(args.data, "val", pp, num_images=args.num_eval)
    loader = calibration_loader(args.data, pp, batch_size=args.batch, num_images=args.num_calib, split="train")
    rows = []
    for fold in args.fold:
        loaded = load_model(args.model, repo=args.repo, fuse_bn=fold == "yes")
        layout = loaded.layout
        if fold == "no":
            r = evaluate(loaded.model, eval_set, layout=layout, scorer="fast")
            rows.append({"row": "float", "fold_bn": False, "map50_95": r.map50_95, "map50": r.map50})
            print(rows[-1], flush=True)
        model = copy.deepcopy(loaded.model)
        qdqtorch.quantize_model(model)
        use_histogram_calibrators(model)
        t0 = time.perf_counter()
        qdqtorch.collect_stats(model, loader)
        collect_s = time.perf_counter() - t0
        for method in args.methods:
            t0 = time.perf_counter()
            qdqtorch.compute_amax(model, method, progress=False)
            amax_s = time.perf_counter() - t0
            r = evaluate(model, eval_set, layout=layout, scorer="fast")
            row = {"row": method, "fold_bn": fold == "yes", "map50_95": r.map50_95, "map50": r.map50,
                   "collect_s": collect_s, "compute_amax_s": amax_s}
            if not args.no_ort:
                with tempfile.TemporaryDirectory() as tmp:
                    path = export_onnx(PredictionOnly(model, layout), next(eval_set.batches(1))[1],
                                       Path(tmp) / "m.onnx")
                    o = evaluate(OnnxRuntimeModule(path), eval_set, layout=layout, scorer="fast")
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
