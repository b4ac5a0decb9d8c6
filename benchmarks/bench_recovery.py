#!/usr/bin/env python
"""Post-calibration recovery (qdqtorch.recovery) x placement rules x checkpoint: COCO mAP50-95 (labelled models),
fidelity of fake quant and of the exported Q/DQ ONNX in ONNX Runtime, and recovery time.

    python benchmarks/bench_recovery.py --out runs/bench_recovery

Reference protocol: calibrate on 128 coco128 train images (mse), evaluate 128 val images at 640; recovery on its
default setting; `--grids symmetric shifted` adds the shifted activation grid (calibrate(grid="shifted")). PPE
YOLOv5n (2 custom classes, no labels here) gets fidelity only.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import ROOT, SHARED, machine  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=[str(SHARED / "models/yolov5n.pt"),
                                                    str(SHARED / "models/ppe_yolov5n.pt")])
    p.add_argument("--labelled", nargs="*", default=["yolov5n.pt"], help="model file names scored against labels")
    p.add_argument("--repo", default=str(ROOT / "tests/fixtures/yolov5_repo"))
    p.add_argument("--data", default=str(SHARED / "data/coco128/coco128.yaml"))
    p.add_argument("--rules", nargs="+", default=["tensorrt", "tensorrt-int8-residual"])
    p.add_argument("--methods", nargs="+", default=["none", "adaround"],
                   help="none, or a recovery method (adaround, gptq, nearest = bias correction only; ranges = "
                        "activation amax fitted to the outputs; w+ranges = both, e.g. adaround+ranges; block = block "
                        "reconstruction, weight rounding and activation ranges per block with QDrop; "
                        "block:drop=0,learn_ranges=0 passes options; distill = short label-free QAT from the float "
                        "model on --num-calib images (qdqtorch.qat.fine_tune), "
                        "distill:epochs=3,lr=2e-5,schedule=cosine,learn_amax=1 passes options)")
    p.add_argument("--block-iters", type=int, default=300, help="steps per block of --methods block")
    p.add_argument("--calib-methods", nargs="+", default=["mse"],
                   help="activation calibration methods: max, entropy, mse, percentile or percentile:<value> "
                        "(e.g. percentile:99.999); each calibrates its own copy of the quantized model")
    p.add_argument("--grids", nargs="+", default=["symmetric"], choices=["symmetric", "shifted"],
                   help="activation grids (calibrate(grid=...)): shifted gives one-sided tensors a zero point that "
                        "the export folds away for TensorRT")
    p.add_argument("--num-calib", type=int, default=128)
    p.add_argument("--num-eval", type=int, default=None)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--recover-images", type=int, default=16, help="images of the layer/block-wise methods (distill "
                                                                   "fits on --num-calib)")
    p.add_argument("--out", default="runs/bench_recovery")
    return p.parse_args(argv)


def _method_options(method: str) -> dict:
    """The options of `name:key=value,...` (distill:, block:) as the recovery function takes them: epochs, seed and
    batch_size int, learn_amax and learn_ranges bool, schedule and optimizer text, the rest float."""
    def convert(key: str, value: str):
        if key in ("epochs", "seed", "batch_size"):
            return int(value)
        if key in ("learn_amax", "learn_ranges"):
            return value not in ("0", "false", "False")
        if key in ("schedule", "optimizer"):
            return value
        return float(value)
    pairs = (o.partition("=") for o in method.partition(":")[2].split(",") if o)
    return {key: convert(key, value) for key, _, value in pairs}


def run(args: argparse.Namespace) -> list:
    from qdqtorch import QuantConfig, calibrate, quantize_model
    from qdqtorch.data import Preprocess, calibration_loader
    from qdqtorch.eval import EvalSet, evaluate
    from qdqtorch.eval.fidelity import fidelity, float_reference
    from qdqtorch.export import export_onnx
    from qdqtorch.export.runtime import OnnxRuntimeModule
    from qdqtorch.host_memory import reuse_freed_memory
    from qdqtorch.models import PredictionOnly, load_model
    from qdqtorch.qat import fine_tune
    from qdqtorch.recovery import recover_weights, refine_ranges
    from qdqtorch.recovery.blocks import reconstruct_blocks
    from qdqtorch.rules import apply_placement, placement_from_name

    rows = []
    tmp = Path(tempfile.mkdtemp())
    with reuse_freed_memory():
        for model_path in args.models:
            labelled = Path(model_path).name in args.labelled
            loaded = load_model(model_path, repo=args.repo)
            pp = Preprocess(imgsz=args.imgsz, stride=loaded.stride)
            eval_set = EvalSet.from_yaml(args.data, "val", pp, num_images=args.num_eval, progress=False)
            reference = float_reference(loaded.model, eval_set, layout=loaded.layout)
            row0 = {"model": Path(model_path).name, "method": "float"}
            if labelled:
                row0["map50_95"] = evaluate(loaded.model, eval_set, layout=loaded.layout).map50_95
            rows.append(row0)
            print(row0, flush=True)
            sample = next(eval_set.batches(1))[1]
            for rules, calib, grid in itertools.product(args.rules, args.calib_methods, args.grids):
                model = copy.deepcopy(loaded.model)
                quantize_model(model, QuantConfig(ignore=list(loaded.default_ignore)))
                apply_placement(model, placement_from_name(rules), sample)
                calib_method, _, value = calib.partition(":")
                calib_kwargs = {"percentile": float(value)} if value else {}
                calibrate(model, calibration_loader(args.data, pp, batch_size=16, num_images=args.num_calib),
                          method=calib_method, progress=False, grid=grid, **calib_kwargs)
                label = calib if grid == "symmetric" else f"{calib}, {grid} grid"
                for method in args.methods:
                    candidate = copy.deepcopy(model)
                    row = {"model": Path(model_path).name, "rules": rules, "calib": label, "method": method,
                           "seconds": 0.0}
                    if method != "none":
                        t0 = time.perf_counter()
                        weights, _, ranges = method.partition("+")
                        distill = weights.startswith("distill")   # distill fits on the calibration images
                        data = calibration_loader(args.data, pp, batch_size=16,
                                                  num_images=args.num_calib if distill else args.recover_images)
                        if distill:   # distill, or distill:epochs=3,lr=2e-5
                            print(fine_tune(candidate, data, num_images=args.num_calib, progress=False,
                                            **_method_options(weights)))
                        elif weights.startswith("block"):   # block, or block:key=value,... (reconstruct_blocks)
                            print(reconstruct_blocks(candidate, data, num_images=args.recover_images,
                                                     iters=args.block_iters, progress=False,
                                                     **_method_options(weights)))
                        elif weights not in ("ranges", ""):
                            recover_weights(candidate, data, method=weights, num_images=args.recover_images,
                                            progress=False)
                        if "ranges" in (weights, ranges):
                            print(refine_ranges(candidate, data, num_images=args.recover_images, progress=False))
                        row["seconds"] = time.perf_counter() - t0
                    row["fidelity"] = fidelity(candidate, reference).map50_95
                    onnx_path = export_onnx(PredictionOnly(candidate, loaded.layout), sample, tmp / "m.onnx")
                    ort = OnnxRuntimeModule(onnx_path)
                    row["fidelity_ort"] = fidelity(ort, reference).map50_95
                    if labelled:
                        row["map50_95"] = evaluate(candidate, eval_set, layout=loaded.layout).map50_95
                        row["map50_95_ort"] = evaluate(ort, eval_set, layout=loaded.layout).map50_95
                    rows.append(row)
                    print(row, flush=True)
    return rows


def table(rows: list) -> str:
    lines = ["| model | rules | calibration | recovery | COCO mAP50-95 fake quant / ORT | fidelity fake quant | "
             "fidelity ORT | recovery time |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        coco = (f"{r['map50_95']:.4f}" + (f" / {r['map50_95_ort']:.4f}" if "map50_95_ort" in r else "")
                if "map50_95" in r else "-")
        fid = f"{r['fidelity']:.3f}" if "fidelity" in r else "1 (reference)"
        ort = f"{r['fidelity_ort']:.3f}" if "fidelity_ort" in r else "-"
        secs = f"{r['seconds']:.0f} s" if r.get("seconds") else "-"
        lines.append(f"| {r['model']} | {r.get('rules', '-')} | {r.get('calib', '-')} | {r['method']} | {coco} | "
                     f"{fid} | {ort} | {secs} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(machine())
    rows = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": machine(), "settings": vars(args), "rows": rows},
                                                 indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
