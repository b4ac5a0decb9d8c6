"""summary.json and report.md of a PTQ run, plus the short table printed at the end."""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any, Dict, List

import torch

from .. import __version__
from ..atomic import atomic_write_text


def versions() -> Dict[str, str]:
    """Python, torch, qdqtorch and the optional packages installed (summary.json's "versions")."""
    found = {"python": platform.python_version(), "torch": torch.__version__, "qdqtorch": __version__}
    for name in ("torchvision", "onnx", "onnxruntime", "ultralytics", "pycocotools"):
        try:
            found[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            pass
    return found


def _fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


ROWS = (("float", "float (FP32)"), ("int8", "INT8 fake quant (PyTorch)"),
        ("int8_onnxruntime", "INT8 Q/DQ ONNX (ONNX Runtime)"))


def result_rows(summary: Dict[str, Any]) -> List[tuple]:
    """(name, mAP50-95, mAP50, delta vs float, fidelity mAP50-95, fidelity mAP50) for every evaluation in the
    summary; None where not measured (no labels, or the float row's fidelity, 1 by definition)."""
    float_map = summary.get("float", {}).get("map50_95")
    fid = summary.get("fidelity", {})
    rows = []
    for key, label in ROWS:
        if key not in summary and key not in fid and not (key == "float" and fid):
            continue
        r, f = summary.get(key, {}), fid.get(key, {})
        m = r.get("map50_95")
        delta = None if float_map is None or m is None or key == "float" else m - float_map
        rows.append((label, m, r.get("map50"), delta, f.get("map50_95"), f.get("map50")))
    return rows


def table(summary: Dict[str, Any]) -> str:
    """The short results table (Markdown): COCO mAP against the labels when they mean something, fidelity (the
    agreement with the float model's own detections) always, then one line per quantized model with its
    whole-network error (SNR/cosine of every output tensor) and the notes that change how to read it."""
    from ..eval.fidelity import outputs_line
    from ..eval.jitter import spread_text
    rows = result_rows(summary)
    with_map = any(r[1] is not None for r in rows)
    with_fid = "fidelity" in summary
    head = ["model"] + (["mAP50-95", "mAP50", "Δ mAP50-95 vs float"] if with_map else []) + \
        (["fidelity mAP50-95", "fidelity mAP50"] if with_fid else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m, m50, delta, f, f50 in rows:
        cells = [label]
        if with_map:
            cells += [_fmt(m), _fmt(m50), "-" if delta is None else f"{delta:+.4f}"]
        if with_fid:
            cells += ["1 (reference)"] * 2 if label == ROWS[0][1] else [_fmt(f), _fmt(f50)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for runtime, label in ROWS[1:]:
        figures = summary.get("jitter", {}).get(runtime, {}).get("figures", {})
        for key, name in (("fidelity", "fidelity mAP50-95"), ("map50_95", "mAP50-95")):
            if key in figures:
                j = figures[key]
                notes.append(f"{name} of {label} with every bias moved by one float32 ulp ({j['n'] - 1} draws and "
                             f"the model itself): {spread_text(j)}; gaps of this model's figure below about 2 sd "
                             "are ties")
    for key, label in ROWS[1:]:
        outputs = summary.get("fidelity", {}).get(key, {}).get("outputs")
        if outputs:
            notes.append(f"whole-network error of {label} vs float: {outputs_line(outputs)}")
    if summary.get("model", {}).get("trained") is False:
        notes.append("WARNING: the model has random weights (built from a yaml): every figure above is noise")
    score = summary.get("data", {}).get("score", "")
    if score.startswith("fidelity"):
        notes.append(f"scored by {score}: no mAP against labels is reported")
    return "\n".join(lines + [f"- {n}" for n in notes])


# what each top-level key of summary.json holds (also written into it, under "fields", and at the end of report.md)
SUMMARY_FIELDS = {
    "note": "what this run is, when the settings say (e.g. the embedded demo and how small its data is)",
    "settings": "every PTQ setting of the run (scripts/ptq.py options / PTQSettings fields); rerun with --config",
    "versions": "Python, torch, qdqtorch and the optional packages used",
    "defaults": "where settings left unset took their value from (imgsz: the settings, the checkpoint or 640)",
    "model": "where the model came from, its output layout (yolov5 or ultralytics), class count and names, max "
             "stride, and trained (false: built from a yaml with random weights, every figure is noise)",
    "data": "evaluation and calibration sources, image counts, whether the evaluation images have labels "
            "(labelled) and their ground-truth boxes, how the run is scored (score: COCO mAP against the labels, or "
            "fidelity alone when there are no labels or the model's classes are not the dataset's), and the "
            "float reference of fidelity (fidelity_reference: its settings and the float detections it holds)",
    "warnings": "every warning the run gave (random weights, classes not the dataset's, dead or tiny activation "
                "ranges, calibration inputs out of range, calibrating on the evaluation images, ...)",
    "float": "COCO metrics of the float model: map50_95 (mAP@[.50:.95]), map50, per-class AP (per_class, "
             "per_class_ap50), image and detection counts, inference/NMS/scoring seconds, the evaluation settings",
    "quantization": "the QuantConfig used, layers replaced / kept float (with the pattern that matched), and the "
                    "TensorRT rules report (tied groups, residual adds, disabled quantizers) when rules were applied",
    "int8": "COCO metrics of the fake-quantized model in PyTorch (same fields as float)",
    "onnx": "path of the exported Q/DQ ONNX (model.qdq.onnx)",
    "onnx_graph": "its input shape mode (static: batch 1 at imgsz, what Ultralytics and a static TensorRT engine "
                  "run; dynamic-batch) and the ONNX opset it was exported at",
    "qdq_check": "the Q/DQ checker on that ONNX: errors (TensorRT would not build it as INT8 as intended), warnings "
                 "(slower or less accurate placements), node counts",
    "int8_onnxruntime": "COCO metrics of the exported ONNX run in ONNX Runtime (with --ort-eval)",
    "fidelity": "label-free score of each quantized model against the float model's own detections (float boxes "
                "at conf >= 0.25, NMS IoU 0.45, as ground truth; the candidate's at conf >= 0.001), COCO protocol: "
                "int8 (fake quant) and int8_onnxruntime (with --ort-eval), each with map50_95, map50 (1.0 = the "
                "float model's detections exactly), the reference box count, and outputs: SNR (dB) and cosine of "
                "every output tensor against float on the first images (the whole-network error)",
    "jitter": "with --jitter-draws N, per runtime (int8: fake quant; int8_onnxruntime: each copy exported and run "
              "in ONNX Runtime, with --ort-eval): the INT8 figures (fidelity, and map50_95 when scored against "
              "labels) of the model itself and of N copies whose every bias moved by one float32 ulp (seeds 1..N), "
              "with their mean, stdev, min and max: the grain below which two figures of this model say nothing",
    "recovery": "label-free recovery after calibration (--recover): method, images, seconds, skipped layers; "
                "ranges: activation amax refinement (output error before/after, steps, seconds); distill: epochs, "
                "steps, distillation loss before/after, epoch_losses, kept (false: the calibrated model was put "
                "back)",
    "timings": "seconds per stage: load, eval_set, float_eval (the float pass: COCO mAP and the fidelity reference) "
               "or float_reference (no labels), calibrate, recover, int8_eval, export, ort_eval (each "
               "evaluation: COCO mAP and fidelity from one pass), int8_eval_jitter and ort_eval_jitter (all the "
               "draws of --jitter-draws)",
    "fields": "this explanation of the keys",
}


def write_reports(summary: Dict[str, Any], out: Path) -> None:
    """Write summary.json (atomically, with a "fields" key explaining the others) and report.md."""
    summary = {**summary, "fields": {k: v for k, v in SUMMARY_FIELDS.items() if k in summary or k == "fields"}}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    s = summary["settings"]
    quant = summary.get("quantization", {})
    lines = [f"# PTQ report: {s['model']}", ""] + ([f"> {summary['note']}", ""] if summary.get("note") else []) + [
             table(summary), "",
             "mAP50-95 is COCO's mean average precision over IoU 0.50:0.95 (mAP50: at IoU 0.50); Δ is the change "
             "against the float model on the same images. Fidelity scores the same way against the float model's "
             "own detections instead of labels: 1 means INT8 finds exactly what float finds.", ""]
    lines += [f"- WARNING: {w}" for w in summary.get("warnings", [])]
    lines += [f"- data: {summary['data'].get('eval')} ({summary['data'].get('eval_images')} eval images, "
              f"{summary['data'].get('calib_images')} calibration images from {summary['data'].get('calib')}); "
              f"score: {summary['data'].get('score', '-')}",
              f"- calibration: activations `{s['calib_method']}`"
              + (f" (percentile {s['percentile']})" if s["calib_method"] == "percentile" else "")
              + f", weights `{s['weight_method']}`, imgsz {s['imgsz']}, batch {s['batch']}, device {s['device']}",
              f"- layers quantized: {len(quant.get('replaced', []))}, kept float: {len(quant.get('ignored', []))}"]
    for name, cls, pattern in quant.get("ignored", []):
        lines.append(f"  - `{name}` ({cls}) matched `{pattern}`")
    for pattern, near in quant.get("unmatched_ignore", {}).items():
        lines.append(f"  - WARNING: ignore pattern `{pattern}` matched nothing (nearest: {', '.join(near)})")
    if "rules" in quant:
        lines.append(f"- TensorRT rules: {len(quant['rules'].get('groups', []))} tied groups")
    if "onnx" in summary:
        check = summary.get("qdq_check", {})
        lines.append(f"- ONNX: `{Path(summary['onnx']).name}`; Q/DQ check: {len(check.get('errors', []))} errors, "
                     f"{len(check.get('warnings', []))} warnings")
        for finding in check.get("errors", [])[:20]:
            lines.append(f"  - {finding}")
    lines.append("- timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in summary.get("timings", {}).items()))
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in summary.get("versions", {}).items()))
    lines += ["", "## summary.json", ""] + [f"- `{k}`: {v}" for k, v in summary["fields"].items()]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
