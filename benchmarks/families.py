#!/usr/bin/env python
"""One row per model family: does it load, how many layers are INT8 / float, TensorRT rules groups, Q/DQ checker
errors, ONNX Runtime vs PyTorch fake-quant fidelity, and whether Ultralytics runs the export (`YOLO(onnx).val`).

    python benchmarks/families.py --out runs/families

Each detector goes through the whole PTQ job (`run_ptq`, --rules tensorrt, mse, static-shape export, ONNX Runtime
evaluation) on a few coco128 images (the demo on its own data). Families built from their Ultralytics yaml have random
weights: their rows test the mechanics only, their mAP means nothing. Writes OUT/families.json and prints a
Markdown table.
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

COCO = SHARED / "data/coco128/coco128.yaml"
DEMO = ROOT / "assets/demo"
YOLOV5_REPO = ROOT / "tests/fixtures/yolov5_repo"


def _families(imgsz: int, images: int) -> list[dict]:
    small = {"data": str(COCO), "imgsz": imgsz, "num_calib": images, "num_eval": images}
    return [
        {"family": "YOLOv5n (official v6.1 pickle)", "model": str(SHARED / "models/yolov5n.pt"),
         "repo": str(YOLOV5_REPO), **small},
        {"family": "YOLOv5n (third-party fine-tune, 2 classes, no labels: mAP meaningless)",
         "model": str(SHARED / "models/ppe_yolov5n.pt"), "repo": str(YOLOV5_REPO), **small},
        {"family": "demo (v8-style, trained)", "model": str(DEMO / "shapes_detector.safetensors"),
         "data": str(DEMO / "shapes.yaml"), "imgsz": 256, "num_calib": 32},
        {"family": "YOLOv8n (yaml, random weights: mechanics only)", "model": "yolov8n.yaml", **small},
        {"family": "YOLO11n (yaml, random weights: mechanics only)", "model": "yolo11n.yaml", **small},
    ]


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


def _score_agreement(model, layout: str, onnx: Path, imgsz: int) -> float:
    """Largest |class score| difference between ONNX Runtime and PyTorch fake quant on two random images."""
    import torch
    from qdqtorch.export.runtime import OnnxRuntimeModule
    from qdqtorch.models import YOLOV5, PredictionOnly
    x = torch.rand(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = PredictionOnly(model, layout)(x)
    theirs = OnnxRuntimeModule(onnx)(x)

    def scores(p):
        return p[..., 5:] * p[..., 4:5] if layout == YOLOV5 else p[:, 4:]
    return float((scores(ours) - scores(theirs)).abs().max())


def _detector_row(index: int, spec: dict, out: Path) -> dict:
    from qdqtorch.pipeline import PTQSettings, run_ptq
    family = spec.pop("family")
    work = out / f"{index}_{family.split(' ')[0].lower()}"
    row: dict = {"family": family}
    t0 = time.perf_counter()
    try:
        result = run_ptq(PTQSettings.from_dict({**spec, "out": str(work / "ptq"), "rules": "tensorrt",
                                                "ort_eval": True, "batch": 8}), progress=False, log=lambda *_: None)
    except Exception as exc:
        return {**row, "loads": f"no: {type(exc).__name__}: {str(exc)[:200]}"}
    s = result.summary
    rules = s["quantization"].get("rules", {})
    row.update(loads=s["model"]["source"].split(":")[0], layout=s["model"]["layout"],
               int8_layers=len(s["quantization"]["replaced"]), float_layers=len(s["quantization"]["ignored"]),
               rules_groups=len(rules.get("groups", [])), check_errors=len(s["qdq_check"]["errors"]),
               check_error_rules=sorted({e["rule"] for e in s["qdq_check"]["errors"]}),
               int8_map=s["int8"]["map50_95"], ort_map=s["int8_onnxruntime"]["map50_95"],
               max_score_diff=_score_agreement(result.model, s["model"]["layout"], Path(s["onnx"]), spec["imgsz"]),
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
    return {"family": "transformer encoder (examples/transformer_encoder.py, random init)", "loads": "nn.Module",
            "int8_layers": len(s["quantized_layers"]), "float_layers": 0, "rules_groups": "-",
            "check_errors": len(check.errors), "check_error_rules": sorted({f.rule for f in check.errors}),
            "fidelity": f"cosine ORT vs fake quant {s['cosine_onnxruntime_vs_fake_quant']:.6f}",
            "ultralytics_val": {"ok": False, "error": "not a detector"}}


def table(rows: list[dict]) -> str:
    lines = ["| family | loads | INT8 / float layers | rules groups | check errors | ORT vs fake quant | "
             "Ultralytics val |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "int8_layers" not in r:
            lines.append(f"| {r['family']} | {r['loads']} | - | - | - | - | - |")
            continue
        fidelity = r.get("fidelity") or (f"mAP50-95 {r['int8_map']:.4f} vs ORT {r['ort_map']:.4f}; max "
                                         f"|Δ class score| {r['max_score_diff']:.4f}")
        errors = f"{r['check_errors']}" + (f" ({', '.join(r['check_error_rules'])})" if r["check_errors"] else "")
        val = r["ultralytics_val"]
        val_text = f"yes (mAP50-95 {val['map50_95']:.4f})" if val["ok"] else f"no: {val['error']}"
        lines.append(f"| {r['family']} | {r['loads']} | {r['int8_layers']} / {r['float_layers']} | "
                     f"{r['rules_groups']} | {errors} | {fidelity} | {val_text} |")
    lines.append("| YOLOv7-tiny | not run: needs the yolov7 training repository (`--repo`), not available here | "
                 "- | - | - | - | - |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/families"))
    p.add_argument("--imgsz", type=int, default=320, help="image size of the coco128 rows (default 320)")
    p.add_argument("--images", type=int, default=16, help="calibration and evaluation images per coco128 row")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [_detector_row(i, spec, args.out) for i, spec in enumerate(_families(args.imgsz, args.images))]
    rows.append(_transformer_row(args.out))
    (args.out / "families.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    print(f"machine: {machine()}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
