#!/usr/bin/env python
"""One row per model family: does it load, how many layers are INT8 / float, TensorRT rules groups, Q/DQ checker
errors, ONNX Runtime vs PyTorch fake-quant fidelity, and whether Ultralytics runs the export (`YOLO(onnx).val`).

    python benchmarks/families.py --out runs/families

Each detector goes through the whole PTQ job (`run_ptq`, --rules tensorrt, mse, static-shape export, ONNX Runtime
evaluation) on a few coco128 images (the demo on its own data). Families built from their Ultralytics yaml have random
weights: their rows test the mechanics only, their mAP means nothing. The YOLOv7-tiny row is built from the yaml of
the stand-in repository tests/fixtures/yolov7_repo (random weights too), saved as a whole-model checkpoint and loaded
back with --repo, as a user's YOLOv7 `best.pt` would be. Writes OUT/families.json and prints a Markdown table;
`--only TEXT` runs just the rows whose family contains TEXT:

    python benchmarks/families.py --out runs/families_v7 --only yolov7
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, SHARED, machine  # noqa: E402
from qdqtorch.atomic import atomic_write_text  # noqa: E402
from qdqtorch.ptq.stages import FEW_REFERENCE_BOXES  # noqa: E402

COCO = SHARED / "data/coco128/coco128.yaml"
DEMO = ROOT / "assets/demo"
YOLOV5_REPO = ROOT / "tests/fixtures/yolov5_repo"
YOLOV7_REPO = ROOT / "tests/fixtures/yolov7_repo"
TRANSFORMER = "transformer encoder (examples/transformer_encoder.py, random init)"


def _families(imgsz: int, images: int) -> list[dict]:
    small = {"data": str(COCO), "imgsz": imgsz, "num_calib": images, "num_eval": images}
    return [
        {"family": "YOLOv5n (official v6.1 pickle)", "model": str(SHARED / "models/yolov5n.pt"),
         "repo": str(YOLOV5_REPO), **small},
        {"family": "YOLOv5n (third-party fine-tune, 2 classes, no labels: mAP meaningless)",
         "model": str(SHARED / "models/ppe_yolov5n.pt"), "repo": str(YOLOV5_REPO), **small},
        {"family": "demo (v8-style, trained)", "model": str(DEMO / "shapes_detector.safetensors"),
         "data": str(DEMO / "shapes.yaml"), "imgsz": 256, "num_calib": 32},
        {"family": "YOLOv8n (yaml, random weights: mechanics only)", "model": "yolov8n.yaml", "allow_empty": True,
         **small},
        {"family": "YOLO11n (yaml, random weights: mechanics only)", "model": "yolo11n.yaml", "allow_empty": True,
         **small},
        {"family": "YOLOv7-tiny (stand-in repo, yaml-built, random weights: mechanics only)",
         "build": _yolov7_tiny_checkpoint, "repo": str(YOLOV7_REPO), "allow_empty": True, **small},
    ]


def _yolov7_tiny_checkpoint(work: Path) -> str:
    """Build YOLOv7-tiny from the stand-in repository's yaml (random weights) and torch.save it as YOLOv7's train.py
    does ({'model': fp16 model, ...}) with COCO's class names, as a COCO-trained checkpoint has them; the row then
    loads that file with --repo, like a user's checkpoint. Its head biases sit at YOLOv7's priors, so the float
    model detects nothing at conf 0.25 (hence allow_empty: mAP 0, nothing to score fidelity on)."""
    import importlib

    import torch
    import yaml
    from qdqtorch.models.repo_pickle import repository_on_path
    work.mkdir(parents=True, exist_ok=True)
    path = work / "yolov7-tiny-standin.pt"
    torch.manual_seed(0)
    with repository_on_path(YOLOV7_REPO):
        model = importlib.import_module("models.yolo").Model(YOLOV7_REPO / "cfg/yolov7-tiny.yaml").eval()
        names = yaml.safe_load(COCO.read_text())["names"]
        model.names = [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)
        torch.save({"model": model.half(), "optimizer": None, "training_results": None, "epoch": -1}, path)
    return str(path)


def _ultralytics_val(onnx: Path, data: str, work: Path) -> dict:
    """YOLO(onnx).val(data=...) with default arguments, on a copy of the dataset (Ultralytics writes caches)."""
    from ultralytics import YOLO
    src = Path(data).parent
    copy = work / "data"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.py", "*.cache"))
    try:
        metrics = YOLO(str(onnx), task="detect").val(data=str(copy / Path(data).name), plots=False, verbose=False,
                                                     project=str(work / "val"))
        return {"ok": True, "map50_95": round(float(metrics.box.map), 4)}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def _agreement(model, layout: str, onnx: Path, imgsz: int) -> dict:
    """Largest |class score| and |box coordinate| (pixels) differences between ONNX Runtime and PyTorch fake quant
    on two random images (the boxes still say something when a random model's scores are all near 0), and, as their
    yardstick, the largest between the fake-quant model and its copies with every bias moved by one float32 ulp
    (seeds 1-3): the grain of one INT8 model in any runtime (BENCHMARKS.md §8l)."""
    import torch
    from qdqtorch.eval import jitter
    from qdqtorch.export.runtime import OnnxRuntimeModule
    from qdqtorch.models import YOLOV5, PredictionOnly
    x = torch.rand(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))

    def predict(m):
        with torch.no_grad():
            return PredictionOnly(m, layout)(x)

    def scores(p):
        return p[..., 5:] * p[..., 4:5] if layout == YOLOV5 else p[:, 4:]

    def boxes(p):
        return p[..., :4] if layout == YOLOV5 else p[:, :4]

    def differences(a, b) -> tuple[float, float]:
        return float((scores(a) - scores(b)).abs().max()), float((boxes(a) - boxes(b)).abs().max())
    ours = predict(model)
    score_diff, box_diff = differences(ours, OnnxRuntimeModule(onnx)(x))

    def against_ours(twin) -> dict:
        score, box = differences(ours, predict(twin))
        return {"score": score, "box": box}
    # the model itself scores 0 against itself, so the maxima are the copies'
    drawn = jitter(model, against_ours, 3, unperturbed={"score": 0.0, "box": 0.0}).figures
    return {"max_score_diff": score_diff, "max_box_diff_px": box_diff,
            "ulp_max_score_diff": max(drawn["score"]), "ulp_max_box_diff_px": max(drawn["box"])}


def _figure(summary: dict, key: str):
    """The run's score of `key`: COCO mAP50-95 where its labels mean something, else fidelity (a fine-tuned model
    on COCO images); None where neither could be scored (a random-weights model that detects nothing)."""
    if key in summary:
        return summary[key]["map50_95"]
    return summary.get("fidelity", {}).get(key, {}).get("map50_95")


def _detector_row(index: int, spec: dict, out: Path) -> dict:
    from qdqtorch.pipeline import PTQSettings, run_ptq
    family = spec.pop("family")
    work = out / f"{index}_{family.split(' ')[0].lower()}"
    row: dict = {"family": family}
    t0 = time.perf_counter()
    try:
        if "build" in spec:
            spec["model"] = spec.pop("build")(work)
        result = run_ptq(PTQSettings.from_dict({**spec, "out": str(work / "ptq"), "rules": "tensorrt",
                                                "ort_eval": True, "batch": 8}), progress=False, log=lambda *_: None)
    except Exception as exc:
        return {**row, "loads": f"no: {type(exc).__name__}: {str(exc)[:200]}"}
    s = result.summary
    agreement = _agreement(result.model, s["model"]["layout"], Path(s["onnx"]), spec["imgsz"])
    rules = s["quantization"].get("rules", {})
    row.update(loads=s["model"]["source"].split(":")[0], layout=s["model"]["layout"],
               int8_layers=len(s["quantization"]["replaced"]), float_layers=len(s["quantization"]["ignored"]),
               float_layer_names=[entry[0] for entry in s["quantization"]["ignored"]],
               rules_groups=len(rules.get("groups", [])),
               shortcuts={k: sum(r.get("shortcut") == k for r in rules.get("residual_adds", []))
                          for k in ("int8", "float")},
               kept_float=[op for op, _ in rules.get("float_ops", [])], check_errors=len(s["qdq_check"]["errors"]),
               check_error_rules=sorted({e["rule"] for e in s["qdq_check"]["errors"]}),
               scored_by="COCO mAP50-95" if "int8" in s else "fidelity mAP50-95",
               reference_boxes=s.get("data", {}).get("fidelity_reference", {}).get("num_boxes"),
               int8_map=_figure(s, "int8"), ort_map=_figure(s, "int8_onnxruntime"),
               **agreement,
               seconds=round(time.perf_counter() - t0, 1))
    if s["model"]["layout"] == "ultralytics":
        row["ultralytics_val"] = _ultralytics_val(Path(s["onnx"]), spec["data"], work)
    else:
        row["ultralytics_val"] = {"ok": False, "error": "anchor-based (B, N, 5 + nc) output: Ultralytics decodes only "
                                                        "(B, 4 + nc, N)"}
    return row


def _transformer_row(out: Path) -> dict:
    import importlib.util
    from qdqtorch.export import check_qdq
    spec = importlib.util.spec_from_file_location("transformer_encoder", ROOT / "examples/transformer_encoder.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    s = example.run(out / "transformer")
    check = check_qdq(s["onnx"])
    return {"family": TRANSFORMER, "loads": "nn.Module",
            "int8_layers": len(s["quantized_layers"]), "float_layers": 0, "rules_groups": s["rules_groups"],
            "kept_float": s["kept_float"],
            "check_errors": len(check.errors), "check_error_rules": sorted({f.rule for f in check.errors}),
            "fidelity": f"cosine ORT vs fake quant {s['cosine_onnxruntime_vs_fake_quant']:.6f}",
            "ultralytics_val": {"ok": False, "error": "not a detector"}}


def table(rows: list[dict]) -> str:
    lines = ["| family | loads | INT8 / float layers | TensorRT rules | check errors | ORT vs fake quant | "
             "Ultralytics val |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "int8_layers" not in r:
            lines.append(f"| {r['family']} | {r['loads']} | - | - | - | - | - |")
            continue
        fidelity = r.get("fidelity")
        if fidelity is None:
            scored = (f"{r['scored_by']} {r['int8_map']:.4f} vs ORT {r['ort_map']:.4f}; "
                      if r["int8_map"] is not None and r["ort_map"] is not None else "")
            boxes = r.get("reference_boxes")
            if boxes == 0:
                scored = "the float model detects nothing: no score; "
            elif scored and r["scored_by"].startswith("fidelity") and boxes is not None and boxes < FEW_REFERENCE_BOXES:
                scored = f"fidelity on {boxes} float box{'es' if boxes != 1 else ''} only: not a measurement; "
            fidelity = (f"{scored}max Δ class score {r['max_score_diff']:.4f}, max Δ box "  # no '|' in a cell
                        f"{r['max_box_diff_px']:.2f} px (one-ulp copies in PyTorch: {r['ulp_max_score_diff']:.4f}, "
                        f"{r['ulp_max_box_diff_px']:.2f} px)")
        errors = f"{r['check_errors']}" + (f" ({', '.join(r['check_error_rules'])})" if r["check_errors"] else "")
        val = r["ultralytics_val"]
        val_text = f"yes (mAP50-95 {val['map50_95']:.4f})" if val["ok"] else f"no: {val['error']}"
        rules = f"{r['rules_groups']} groups"
        if "shortcuts" in r:
            rules += f"; shortcuts {r['shortcuts']['int8']} int8 / {r['shortcuts']['float']} float"
        if r.get("kept_float"):
            kinds = ", ".join(sorted({op.split("@")[0] for op in r["kept_float"]}))
            rules += f"; {len(r['kept_float'])} attention op(s) kept float ({kinds})"
        names = r.get("float_layer_names") or []
        floats = f"{r['float_layers']}" + (f" ({', '.join(n.split('.', 2)[-1] for n in names)})"
                                           if 0 < len(names) <= 3 else "")
        lines.append(f"| {r['family']} | {r['loads']} | {r['int8_layers']} / {floats} | "
                     f"{rules} | {errors} | {fidelity} | {val_text} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/families"))
    p.add_argument("--imgsz", type=int, default=320, help="image size of the coco128 rows (default 320)")
    p.add_argument("--images", type=int, default=16, help="calibration and evaluation images per coco128 row")
    p.add_argument("--only", metavar="TEXT", help="run only the rows whose family contains TEXT (case-insensitive)")
    args = p.parse_args(argv)

    def wanted(family: str) -> bool:
        return args.only is None or args.only.lower() in family.lower()
    specs = [(i, spec) for i, spec in enumerate(_families(args.imgsz, args.images)) if wanted(spec["family"])]
    if not specs and not wanted(TRANSFORMER):
        p.error(f"--only {args.only!r} matches no family")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [_detector_row(i, spec, args.out) for i, spec in specs]
    if wanted(TRANSFORMER):
        rows.append(_transformer_row(args.out))
    atomic_write_text(args.out / "families.json", json.dumps({"machine": machine(), "rows": rows}, indent=2))
    print(f"machine: {machine()}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
