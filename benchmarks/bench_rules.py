"""Accuracy cost of the TensorRT placement rules, and of FP16 float regions, on the shared protocol.

For the untied model and the model with the TensorRT placement (residual shortcuts float, `rules="tensorrt"`, and int8,
`rules="tensorrt-int8-residual"`), each built by the PTQ run's `prepare` stage: activation statistics are collected
once per model (histogram calibrators, --num-calib train images), then every amax method (max, entropy, mse,
percentile) is computed from them and the fake-quant model is scored on the val split (COCO mAP, pycocotools).
With --fp16, the rules model (--fp16-method amax) is exported to ONNX and scored in ONNX Runtime with float32 and
with float16 float regions (opset 13 casts around Q/DQ, and opset 19 float16 Q/DQ). Writes results.json into --out.

    python benchmarks/bench_rules.py --model ../shared/models/yolov5n.pt --repo tests/fixtures/yolov5_repo \
        --data ../shared/data/coco128/coco128.yaml --imgsz 640 --num-calib 128 --fp16 --out runs/bench_rules
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import machine  # noqa: E402
from qdqtorch.eval import evaluate  # noqa: E402
from qdqtorch.models import PredictionOnly  # noqa: E402
from qdqtorch.ptq import PTQSettings, calibration_data, eval_kwargs, prepare  # noqa: E402
from qdqtorch.quantize import AMAX_METHODS, collect_stats, compute_amax, use_histogram_calibrators  # noqa: E402


class _OrtModule(nn.Module):
    """Run an ONNX file in ONNX Runtime (CPU), feeding inputs in the graph's input type, returning float32."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime as ort
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.optimization = "default"
        except Exception:  # ORT's int8 fusions reject float16 Q/DQ (opset >= 19): run with basic optimizations
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.optimization = "basic"
        inp = self.session.get_inputs()[0]
        self.name, self.half = inp.name, inp.type == "tensor(float16)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = x.detach().cpu().numpy().astype(np.float16 if self.half else np.float32)
        return torch.from_numpy(self.session.run(None, {self.name: feed})[0].astype(np.float32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--repo", default=None)
    p.add_argument("--data", required=True, help="dataset yaml: train split calibrates, val split scores")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--num-calib", type=int, default=128)
    p.add_argument("--num-eval", type=int, default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--fp16", action="store_true", help="also score FP32- vs FP16-float-region ONNX exports")
    p.add_argument("--fp16-method", default="percentile", choices=AMAX_METHODS)
    p.add_argument("--out", default="runs/bench_rules")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    settings = PTQSettings(model=args.model, repo=args.repo, data=args.data, imgsz=args.imgsz,
                           num_calib=args.num_calib, num_eval=args.num_eval, batch=args.batch,
                           percentile=args.percentile, export=False)
    results = {"settings": vars(args), "torch": torch.__version__, "machine": machine()}
    rules_models = {}
    for key, rules in (("no_rules", None), ("rules", "tensorrt"), ("rules_int8_residual", "tensorrt-int8-residual")):
        # the PTQ run's prepare stage: load, cache the val images, quantize, place (traced on the first val image)
        prep = prepare(dataclasses.replace(settings, rules=rules), evaluate_float=key == "no_rules", progress=False,
                       log=lambda line: None)
        if key == "no_rules":
            results["images"] = {"eval": len(prep.eval_set)}
            results["float"] = prep.summary["float"]
            print(f"float: {results['float']['map50_95']:.4f} ({prep.timings['float_eval']:.0f}s)", flush=True)
        report = prep.placement_report
        if report is not None:
            results.setdefault("rules_report", {})[key] = {
                "tied_groups": len(report.tied_groups), "groups": len(report.groups),
                "residual_adds": len(report.residual_adds), "skipped": report.skipped}
        model, eval_set, kw = prep.model, prep.eval_set, eval_kwargs(prep, progress=False)
        use_histogram_calibrators(model)
        loader = calibration_data(prep.settings, prep.preprocess)
        t0 = time.perf_counter()
        collect_stats(model, loader, progress=False)
        results.setdefault("collect_s", {})[key] = time.perf_counter() - t0
        for method in AMAX_METHODS:
            compute_amax(model, method, percentile=args.percentile, progress=False)
            t0 = time.perf_counter()
            r = evaluate(model, eval_set, **kw).to_dict()
            results.setdefault(key, {})[method] = r
            print(f"{key} {method}: mAP50-95 {r['map50_95']:.4f} mAP50 {r['map50']:.4f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
            if key == "rules" and method == args.fp16_method:
                rules_models[method] = copy.deepcopy(model)
        json.dump(results, open(out / "results.json", "w"), indent=1, default=str)

    if args.fp16:
        from qdqtorch.export import check_qdq, export_onnx
        from qdqtorch.rules.fp16_regions import float_regions_to_fp16
        model = PredictionOnly(rules_models[args.fp16_method], prep.layout)
        sample = torch.zeros(1, 3, args.imgsz, args.imgsz)
        for opset in (13, 19):
            fp32 = export_onnx(model, sample, out / f"rules_opset{opset}.onnx", opset=opset)
            fp16 = out / f"rules_opset{opset}_fp16.onnx"
            float_regions_to_fp16(fp32, fp16)
            check = check_qdq(fp16, fp16=True, allow_float=[r"*dfl*"])
            shape_only = [f for f in check.errors if f.rule == "fp32-tensor"]
            entry = {"fp16_check_errors": sorted({f.rule for f in check.errors}), "fp16_check_ok": check.ok,
                     "fp32_tensors": len(shape_only), "warnings": sorted({f.rule for f in check.warnings})}
            for name, path in (("fp32_regions", fp32), ("fp16_regions", fp16)):
                try:
                    t0 = time.perf_counter()
                    runner = _OrtModule(path)
                    entry[name] = evaluate(runner, eval_set, **kw).to_dict()
                    entry[name]["ort_optimization"] = runner.optimization
                    print(f"onnxruntime opset {opset} {name} ({runner.optimization}): {entry[name]['map50_95']:.4f} "
                          f"({time.perf_counter() - t0:.0f}s)", flush=True)
                except Exception as exc:  # ORT may reject a graph; record why
                    entry[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                    print(f"onnxruntime opset {opset} {name}: {entry[name]['error']}", flush=True)
            results.setdefault("fp16", {})[f"opset{opset}"] = entry
            json.dump(results, open(out / "results.json", "w"), indent=1, default=str)
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
