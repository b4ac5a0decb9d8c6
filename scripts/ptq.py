#!/usr/bin/env python
"""Post-training INT8 quantization of a YOLO detector, end to end.

Replaces every Conv/Linear with a fake-quantized twin, calibrates the activation ranges on --calib-data images,
scores the float and the INT8 model on --data's val split (COCO mAP against its labels, and fidelity: the share of
the float model's own detections INT8 keeps, which needs no labels), exports a Q/DQ ONNX that TensorRT builds as
INT8, checks it, and writes a report. CPU is enough.

examples:
  python scripts/ptq.py --out runs/demo
      the embedded demo (no other flag): a small detector and 32 + 32 synthetic images shipped in assets/demo/
  python scripts/ptq.py --model ../shared/models/yolov5n.pt --repo tests/fixtures/yolov5_repo \\
      --data ../shared/data/coco128/coco128.yaml --out runs/yolov5n --ort-eval
      your checkpoint and dataset: --repo is the training repository a YOLOv5/YOLOv7 .pt was pickled from

writes to --out: summary.json (every number and setting; its "fields" key explains the others), report.md (the same
for people), calibration.json (the amax values, reloadable), model.qdq.onnx (the INT8 export).

Loading a checkpoint (.pt) unpickles it, which can run arbitrary code: only load files you trust. Nothing is
downloaded: pass local paths.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from qdqtorch.calib import AMAX_METHODS, WEIGHT_METHODS  # noqa: E402
from qdqtorch.nn import GRIDS  # noqa: E402
from qdqtorch.pipeline import PTQSettings, run_ptq, table  # noqa: E402
from qdqtorch.pipeline.cli import pop_debug, run_cli  # noqa: E402
from qdqtorch.ptq.settings import ONNX_SHAPES, RECOVER_CHOICES  # noqa: E402
from qdqtorch.rules import PLACEMENTS  # noqa: E402

S = argparse.SUPPRESS  # options left out keep the --config file's value (or the default)
DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"
DEMO = {"model": str(DEMO_DIR / "shapes_detector.safetensors"), "data": str(DEMO_DIR / "shapes.yaml"),
        "num_calib": 32, "ort_eval": True,
        "note": "embedded demo: synthetic shapes (3 classes; 32 calibration + 32 val images at 256 px, made by "
                "assets/demo/build.py) and a small detector trained on them; its mAP is a smoke test of the "
                "pipeline, not a COCO result. Pass --model and --data for your own."}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML/JSON settings (any option below, plus a `quant:` QuantConfig section); "
                                    "command-line options override it")
    p.add_argument("--model", default=S, help="checkpoint (.pt pickle: YOLOv5/YOLOv7 repo or Ultralytics), a "
                                             "qdqtorch .safetensors detector, or an Ultralytics model yaml "
                                             "(default, with no --data either: the embedded demo)")
    p.add_argument("--repo", default=S, help="training repository the pickle was saved from (put on the import path)")
    p.add_argument("--data", default=S, help="Ultralytics dataset yaml, image folder or list file; labels are "
                                            "optional: without them (or when the model's classes are not the "
                                            "dataset's) the score is fidelity, the agreement with the float model's "
                                            "own detections (default, with no --model either: the embedded demo)")
    p.add_argument("--out", default=S, help="output folder (default runs/ptq; with --no-export a model.qdq.onnx of "
                                            "an earlier run there is removed)")
    p.add_argument("--calib-data", default=S, help="calibration images: folder, list file, dataset yaml (train "
                                                  "split), .npy/.raw files (default: --data's train split)")
    p.add_argument("--num-calib", type=int, default=S, help="calibration images (default 128)")
    p.add_argument("--num-eval", type=int, default=S, help="evaluation images (default all)")
    p.add_argument("--batch", type=int, default=S, help="batch size (default 16)")
    p.add_argument("--imgsz", type=int, default=S, help="letterbox size (default: the size the checkpoint records, "
                                                        "else 640)")
    p.add_argument("--calib-method", choices=AMAX_METHODS, default=S,
                   help="activation amax method (default mse: the best measured, BENCHMARKS.md §2)")
    p.add_argument("--percentile", type=float, default=S, help="for --calib-method percentile (default 99.99)")
    p.add_argument("--grid", choices=GRIDS, default=S,
                   help="activation grid: symmetric (default, TensorRT's zero point 0) or shifted: tensors that are "
                        "almost one-sided (SiLU outputs, the image) get a zero point so all 255 codes cover their "
                        "range; the ONNX export folds the shift into the next convs' biases, so TensorRT still sees "
                        "zero point 0. Measured (BENCHMARKS.md §8e): the largest fidelity gain of any option; "
                        "opt-in because TensorRT's speed on the folded graph is not measured yet")
    p.add_argument("--weight-method", choices=WEIGHT_METHODS, default=S,
                   help="weight amax method (default max)")
    p.add_argument("--recover", choices=RECOVER_CHOICES, default=S,
                   help="after calibration, label-free recovery against the float model: re-round weights so each "
                        "layer's output matches float (adaround: learned rounding; gptq; nearest: only with "
                        "--bias-correction), ranges: fit activation amax to the network's outputs; w+ranges: both; "
                        "distill: fine-tune the fake-quant model from its float copy for --recover-epochs passes "
                        "(a short label-free QAT, minutes on a CPU). Measured (BENCHMARKS.md §8-§8f): only distill, "
                        "with --grid shifted, raises YOLOv5n's fidelity beyond its noise (+0.02-0.03): measure on "
                        "your model")
    p.add_argument("--recover-images", type=int, default=S,
                   help="calibration images the recovery fits on (default 16; distill: --num-calib)")
    p.add_argument("--recover-epochs", type=int, default=S, help="--recover distill: passes over the images "
                                                                 "(default 8)")
    p.add_argument("--recover-learn-amax", action="store_true", default=S,
                   help="--recover distill: also learn every quantizer's amax (YOLOv5n int8-residual: COCO mAP "
                        "settles at 0.337 vs 0.335 without, a tie, at fidelity 0.928 vs 0.936; single runs 0.333-0.348 "
                        "in ONNX Runtime; BENCHMARKS.md §8h-§8i)")
    p.add_argument("--bias-correction", action="store_true", default=S,
                   help="with --recover: shift biases to cancel each layer's mean output error")
    p.add_argument("--ignore", nargs="+", default=S, metavar="REGEX",
                   help="layers kept float (re.match on dotted module names)")
    p.add_argument("--rules", choices=PLACEMENTS, default=S,
                   help="TensorRT Q/DQ placement rules: tensorrt (the default, what one ships: residual shortcuts "
                        "float), tensorrt-int8-residual (shortcuts int8 so TensorRT fuses Conv+Add; -0.010 mAP50-95 "
                        "on YOLOv5n), or none (plain replacement)")
    p.add_argument("--fold-bn", action="store_true", default=S, help="fold BatchNorm into convs before quantizing")
    p.add_argument("--no-fuse-reparam", dest="fuse_reparam", action="store_false", default=S,
                   help="keep RepConv blocks in their training form (for QAT); default: fused into the one conv "
                        "TensorRT deploys")
    p.add_argument("--device", default=S, help="cpu, cuda, cuda:1 ... (default cpu)")
    p.add_argument("--opset", type=int, default=S,
                   help="ONNX opset (default: the lowest >= 13 with every operator the model uses)")
    p.add_argument("--onnx-shape", choices=ONNX_SHAPES, default=S,
                   help="static (default): batch 1 at imgsz, which Ultralytics' YOLO('model.qdq.onnx') predict/val "
                        "and a static TensorRT engine run; dynamic-batch: symbolic batch (a TensorRT profile)")
    p.add_argument("--no-export", dest="export", action="store_false", default=S, help="skip the ONNX export")
    p.add_argument("--check", action="store_true", default=S,
                   help="exit non-zero when the Q/DQ checker finds errors in the export")
    p.add_argument("--ort-eval", action="store_true", default=S, help="also score the ONNX in ONNX Runtime")
    p.add_argument("--jitter-draws", type=int, default=S, metavar="N",
                   help="rescore the INT8 model in N copies whose biases moved by one float32 ulp (the difference "
                        "between runtimes' kernels), in fake quant and with --ort-eval in ONNX Runtime, and report "
                        "the spread of its fidelity and mAP: how finely this run's figures resolve this model "
                        "(YOLOv5n on 128 images: sd 0.004; on 35 boxes up to 0.025; BENCHMARKS.md §8l). Costs N more "
                        "evaluations per runtime (default 0: off)")
    p.add_argument("--skip-float-eval", action="store_true", default=S, help="skip the float baseline")
    p.add_argument("--allow-empty", action="store_true", default=S,
                   help="go on when the float model detects nothing on the evaluation images (an error otherwise: "
                        "every figure would be meaningless)")
    p.add_argument("--scorer", choices=["pycocotools", "fast"], default=S,
                   help="COCO scorer (default fast: the same numbers as pycocotools, faster)")
    p.add_argument("--workers", type=int, default=S, help="image loading workers (default 0)")
    p.add_argument("--debug", action="store_true", default=S, help="print the full traceback of an error")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv, debug = pop_debug(argv)
    args = vars(parse_args(argv))
    return run_cli(lambda: _run(args), debug=debug)


def _run(args: dict) -> int:
    config = args.pop("config", None)
    if config is None and "model" not in args and "data" not in args:
        print(f"no --model/--data given: running the embedded demo ({DEMO_DIR})", file=sys.stderr)
        demo = {**DEMO, "ort_eval": args.get("export", True)}  # it scores its export in ONNX Runtime, if any
        args = {**demo, **args}
    settings = PTQSettings.from_file(config, **args) if config else PTQSettings.from_dict(args)
    result = run_ptq(settings)
    print(table(result.summary))
    print(f"wrote {result.out}/summary.json, report.md, calibration.json"
          + (", model.qdq.onnx" if "onnx" in result.summary else ""))
    if not result.ok:
        print(f"error: Q/DQ check found {len(result.summary['qdq_check']['errors'])} errors (see report.md)",
              file=sys.stderr)
        return 1 if settings.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
