"""What the benchmarks share: the reference protocol's command-line defaults and a one-line machine description."""
from __future__ import annotations

import argparse
import copy
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """The reference protocol's inputs (YOLOv5n, coco128 yaml, 128 + 128 images at 640) as overridable options."""
    p.add_argument("--model", default=str(SHARED / "models/yolov5n.pt"))
    p.add_argument("--repo", default=str(ROOT / "tests/fixtures/yolov5_repo"))
    p.add_argument("--data", default=str(SHARED / "data/coco128/coco128.yaml"))
    p.add_argument("--num-calib", type=int, default=128)
    p.add_argument("--num-eval", type=int, default=None, help="default: the whole val split (128)")
    p.add_argument("--imgsz", type=int, default=640)


def machine(device: str = "cpu") -> str:
    """CPU model, cores, torch threads, the GPU if any (and whether this run uses it), load average at start."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}" + ("" if device.startswith("cuda") else " (unused: CPU run)")
    if hasattr(os, "getloadavg"):
        text += f", load average at start {os.getloadavg()[0]:.1f}"
    return text


def add_int8_args(p: argparse.ArgumentParser) -> None:
    """The INT8 setting the issue-21 benchmarks share (placement rules, activation grid) and which checkpoints are
    also scored against labels."""
    p.add_argument("--labelled", nargs="*", default=["yolov5n.pt"], help="model file names scored against labels "
                   "too (others, such as the PPE checkpoint, by fidelity alone)")
    p.add_argument("--rules", default="tensorrt")
    p.add_argument("--grid", choices=["symmetric", "shifted"], default="shifted")
    p.add_argument("--calib-method", choices=["mse", "max"], default="mse", help="activation calibration")


def fidelity_scorer(reference, eval_set, layout: str, labelled: bool):
    """A function model -> {"fidelity"} or, when `labelled`, {"fidelity", "map50_95"} from one inference pass."""
    from qdqtorch.eval import evaluate
    from qdqtorch.eval.fidelity import candidate_tap, fidelity, score_tap

    def score(candidate) -> dict:
        if not labelled:
            return {"fidelity": fidelity(candidate, reference, outputs=False).map50_95}
        tap = candidate_tap(reference, outputs=False)
        coco = evaluate(candidate, eval_set, layout=layout, select=tap, progress=False)
        return {"fidelity": score_tap(tap, reference).map50_95, "map50_95": coco.map50_95}
    return score


@dataclass
class Int8Setup:
    """A checkpoint, its float reference on the val images and a calibrated INT8 copy (`add_int8_args` settings)."""

    loaded: Any            # qdqtorch.models.LoadedModel: the float model stays untouched
    preprocess: Any
    eval_set: Any
    reference: Any         # FidelityReference: the float model's detections on eval_set
    sample: Any            # one val image batch (placement tracing, ONNX export)
    calib: Any             # the calibration images (the first --num-calib of the yaml's train split), batches of 16
    model: Any             # the INT8 copy, calibrated (--calib-method, --grid)
    score: Callable[[Any], dict]   # fidelity_scorer for these images and --labelled


def int8_setup(args: argparse.Namespace) -> Int8Setup:
    """Load `--model`, score its float detections on the val images, and quantize, place (`--rules`) and calibrate
    (`--calib-method`, `--grid`) a copy: the reference protocol's starting point for the issue-21 benchmarks."""
    from qdqtorch import QuantConfig, calibrate, quantize_model
    from qdqtorch.data import Preprocess, calibration_loader
    from qdqtorch.eval import EvalSet
    from qdqtorch.eval.fidelity import float_reference
    from qdqtorch.models import load_model
    from qdqtorch.rules import apply_placement, placement_from_name

    loaded = load_model(args.model, repo=args.repo)
    pp = Preprocess(imgsz=args.imgsz, stride=loaded.stride)
    eval_set = EvalSet.from_yaml(args.data, "val", pp, num_images=args.num_eval, progress=False)
    reference = float_reference(loaded.model, eval_set, layout=loaded.layout, output_images=0)
    sample = next(eval_set.batches(1))[1]
    calib = calibration_loader(args.data, pp, batch_size=16, num_images=args.num_calib)
    model = copy.deepcopy(loaded.model)
    quantize_model(model, QuantConfig(ignore=list(loaded.default_ignore)))
    apply_placement(model, placement_from_name(args.rules), sample)
    calibrate(model, calib, method=args.calib_method, grid=args.grid, progress=False)
    labelled = Path(args.model).name in args.labelled
    return Int8Setup(loaded, pp, eval_set, reference, sample, calib, model,
                     fidelity_scorer(reference, eval_set, loaded.layout, labelled))
