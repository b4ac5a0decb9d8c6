"""Fidelity next to COCO mAP on the reference protocol: how much of the float model's own detections INT8 keeps.

For each model and placement (no rules, tensorrt, tensorrt-int8-residual): mse calibration on --num-calib train
images, then on the val images, in one inference pass each, COCO mAP against the labels and fidelity (the float
model's detections at conf > 0.25 as ground truth, see qdqtorch.eval.fidelity), for the fake-quant model and for the
exported Q/DQ ONNX in ONNX Runtime. A model whose classes are not the dataset's (--extra-model, e.g. a 2-class
fine-tune) gets fidelity only. Prints a Markdown table and writes results.json into --out.

    python benchmarks/bench_fidelity.py --out runs/bench_fidelity \
        --extra-model ../shared/models/ppe_yolov5n.pt:tensorrt
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import add_protocol_args, machine  # noqa: E402
from qdqtorch.data import Preprocess, calibration_loader  # noqa: E402
from qdqtorch.eval import EvalSet, class_mismatch, evaluate  # noqa: E402
from qdqtorch.eval.fidelity import candidate_tap, reference_from, reference_tap, score_tap  # noqa: E402
from qdqtorch.export import export_onnx  # noqa: E402
from qdqtorch.export.runtime import OnnxRuntimeModule  # noqa: E402
from qdqtorch.models import PredictionOnly, load_model  # noqa: E402
from qdqtorch.quantize import calibrate, quantize_model  # noqa: E402
from qdqtorch.rules import apply_placement, placement_from_name  # noqa: E402

PLACEMENTS = ("none", "tensorrt", "tensorrt-int8-residual")


def _score(model, eval_set, layout, reference, labelled):
    """(COCO EvalResult or None, FidelityResult) of `model` from one inference pass."""
    tap = candidate_tap(reference)
    t0 = time.perf_counter()
    if labelled:
        coco = evaluate(model, eval_set, layout=layout, scorer="fast", select=tap, progress=False)
    else:
        from qdqtorch.eval import predict
        predict(model, eval_set, layout=layout, select=tap, multi_label=False, progress=False)
        coco = None
    return coco, score_tap(tap, reference, timings={"inference": time.perf_counter() - t0})


def run_model(spec: str, placements, args, out: Path) -> list:
    loaded = load_model(spec, repo=args.repo)
    pp = Preprocess(imgsz=args.imgsz, stride=loaded.stride)
    eval_set = EvalSet.from_yaml(args.data, "val", pp, num_images=args.num_eval, progress=False)
    mismatch = class_mismatch(loaded.names, eval_set.names, data=Path(args.data).name)
    labelled = mismatch is None
    tap = reference_tap(loaded.layout)
    float_coco = (evaluate(loaded.model, eval_set, layout=loaded.layout, scorer="fast", select=tap, progress=False)
                  if labelled else None)
    if not labelled:
        from qdqtorch.eval import predict
        predict(loaded.model, eval_set, layout=loaded.layout, conf_thres=0.25, select=tap, multi_label=False,
                progress=False)
    reference = reference_from(tap, eval_set)
    rows = [{"model": Path(spec).name, "config": "float", "coco": None if float_coco is None else
             {"map50_95": float_coco.map50_95, "map50": float_coco.map50}, "reference_boxes": reference.num_boxes,
             "class_mismatch": mismatch}]
    print(f"{Path(spec).name}: float {rows[0]['coco']}, {reference.num_boxes} reference boxes", flush=True)
    for placement in placements:
        model = load_model(spec, repo=args.repo).model
        sample = next(eval_set.batches(1))[1]
        quantize_model(model)
        apply_placement(model, placement_from_name(placement), sample)
        loader = calibration_loader(args.data, pp, batch_size=16, num_images=args.num_calib, split="train")
        t0 = time.perf_counter()
        calibrate(model, loader, method="mse", progress=False)
        seconds = time.perf_counter() - t0
        row = {"model": Path(spec).name, "config": placement, "calibrate_s": round(seconds, 1)}
        coco, fid = _score(model, eval_set, loaded.layout, reference, labelled)
        row["coco"] = None if coco is None else {"map50_95": coco.map50_95, "map50": coco.map50}
        row["fidelity"] = {"map50_95": fid.map50_95, "map50": fid.map50, "outputs": [o.to_dict() for o in fid.outputs]}
        onnx_path = export_onnx(PredictionOnly(model, loaded.layout), sample,
                                out / f"{Path(spec).stem}-{placement}.onnx")
        coco, fid = _score(OnnxRuntimeModule(onnx_path), eval_set, loaded.layout, reference, labelled)
        row["coco_onnxruntime"] = None if coco is None else {"map50_95": coco.map50_95, "map50": coco.map50}
        row["fidelity_onnxruntime"] = {"map50_95": fid.map50_95, "map50": fid.map50,
                                       "outputs": [o.to_dict() for o in fid.outputs]}
        print(json.dumps({k: v for k, v in row.items() if "outputs" not in str(k)}, default=str)[:400], flush=True)
        rows.append(row)
    return rows


def _f(d, key="map50_95"):
    return "-" if not d else f"{d[key]:.4f}"


def table(rows) -> str:
    lines = ["| model | placement (mse) | COCO mAP50-95 fake quant | COCO mAP50-95 ONNX Runtime | "
             "fidelity mAP50-95 fake quant | fidelity mAP50-95 ONNX Runtime | fidelity mAP50 fake quant / ORT |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["config"] == "float":
            lines.append(f"| {r['model']} | float | {_f(r['coco'])} | - | 1.0000 | - | 1.0000 / - |")
            continue
        lines.append(f"| {r['model']} | {r['config']} | {_f(r['coco'])} | {_f(r['coco_onnxruntime'])} | "
                     f"{_f(r['fidelity'])} | {_f(r['fidelity_onnxruntime'])} | {_f(r['fidelity'], 'map50')} / "
                     f"{_f(r['fidelity_onnxruntime'], 'map50')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_protocol_args(p)
    p.add_argument("--placements", nargs="+", default=list(PLACEMENTS), choices=PLACEMENTS)
    p.add_argument("--extra-model", action="append", default=[], metavar="PATH:PLACEMENT",
                   help="another checkpoint (same --repo) and its placement, e.g. ppe_yolov5n.pt:tensorrt")
    p.add_argument("--out", default="runs/bench_fidelity")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(machine(), flush=True)
    rows = run_model(args.model, args.placements, args, out)
    for extra in args.extra_model:
        spec, _, placement = extra.rpartition(":")
        rows += run_model(spec, [placement], args, out)
    (out / "results.json").write_text(json.dumps({"machine": machine(), "rows": rows,
                                                  "seconds": round(time.perf_counter() - started)}, indent=1) + "\n")
    print(table(rows))
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
