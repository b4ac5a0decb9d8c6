"""qdqtorch versus the other INT8 post-training-quantization tools on the reference protocol: one table, one run.

Protocol: YOLOv5n (../shared/models/yolov5n.pt), --num-calib train2017 images calibrate, --num-eval val2017 images
score (COCO mAP50-95 / mAP50, letterbox --imgsz, conf 0.001, NMS IoU 0.65, max 300 detections, fast scorer, equal to
pycocotools). The evaluation images are decoded once and the calibration images are decoded once into tensors that
every tool is fed (so no row pays for image decoding). Rows (select with --only, shell-style patterns):

  float                         PyTorch FP32
  qdqtorch-{max,entropy,mse,percentile}          quantize_model + calibrate(method=...), fake quant
  qdqtorch-rules-{max,entropy,mse,percentile}    the same after apply_tensorrt_rules (TensorRT Q/DQ placement)
  qdqtorch-ort                  the --budget-base model exported with export_onnx, run in ONNX Runtime
  qdqtorch-budget               --budget-base calibration, then the sensitivity sweep's accuracy budget keeps the
                                costliest layers float (chosen on --budget-images *train* images, never on val)
  ort-{minmax,entropy,percentile}  onnxruntime.quantization.quantize_static on the float ONNX of the same model:
                                QDQ, per-channel, symmetric int8 activations and weights, ORT's default operator set
                                except the float post-processing tail (nodes no Conv depends on), as qdqtorch does
  modelopt-int8                 nvidia-modelopt mtq.quantize(model, INT8_DEFAULT_CFG, forward_loop), fake quant
  modelopt-int8-ort             that model exported to ONNX (torch.onnx.export) and run in ONNX Runtime
  pytorch-quantization-*        reference rows, NOT run here (it no longer installs): independently measured numbers

Calibration time is the wall time of the tool's calibration call on the pre-decoded batches: qdqtorch calibrate()
(for the histogram methods: the shared statistics pass plus that method's compute_amax, i.e. what calibrate() alone
costs), ORT quantize_static (calibration inference, ranges, writing the model), modelopt mtq.quantize.

    python benchmarks/peers.py --install-peers                       # full protocol (slow on a 2-core CPU)
    python benchmarks/peers.py --smoke                               # 16 images at 320, every row
    python benchmarks/peers.py --only 'ort-*' modelopt-int8 --num-eval 32
"""
from __future__ import annotations

import argparse
import configparser
import copy
import fnmatch
import json
import platform
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qdqtorch  # noqa: E402
from _common import machine  # noqa: E402
from qdqtorch.data import Preprocess, calibration_loader  # noqa: E402
from qdqtorch.eval import EvalSet, evaluate  # noqa: E402
from qdqtorch.models import PredictionOnly, load_model  # noqa: E402
from qdqtorch.quantize import (collect_stats, compute_amax, named_quantizers, quantize_model,  # noqa: E402
                               use_histogram_calibrators)

SHARED = ROOT.parent / "shared"
METHODS = ("max", "entropy", "mse", "percentile")
ORT_METHODS = ("minmax", "entropy", "percentile")

# pytorch-quantization 2.1.x on this protocol, measured independently (it cannot be installed here: the PyPI
# package is a placeholder and its source build needs the CUDA toolkit). mAP50-95 only; compute_amax times on a
# 2-core CPU where they were recorded.
REFERENCE = [
    ("pytorch-quantization-max", "max", 0.328, None),
    ("pytorch-quantization-percentile", "histogram, percentile 99.99", 0.322, None),
    ("pytorch-quantization-entropy", "histogram, entropy", 0.261, 232.0),
    ("pytorch-quantization-mse", "histogram, mse", 0.3378, 29.0),
]


@dataclass
class Row:
    """One line of the table."""

    key: str
    tool: str
    config: str
    map50_95: Optional[float] = None
    map50: Optional[float] = None
    calib_s: Optional[float] = None
    notes: List[str] = field(default_factory=list)
    reference: bool = False
    error: Optional[str] = None

    def to_dict(self) -> dict:
        """JSON form."""
        return dict(self.__dict__)


class Protocol:
    """Everything the rows share, built once: the float model, the eval set, the decoded calibration batches."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loaded = load_model(args.model, repo=args.repo)
        self.layout = self.loaded.layout
        self.preprocess = Preprocess(imgsz=args.imgsz, stride=self.loaded.stride)
        t0 = time.perf_counter()
        self.eval_set = EvalSet.from_yaml(args.data, "val", self.preprocess, num_images=args.num_eval,
                                          progress=False)
        loader = calibration_loader(args.calib, self.preprocess, batch_size=args.batch, num_images=args.num_calib)
        self.batches: List[torch.Tensor] = [b for b in loader]
        if not all(isinstance(b, torch.Tensor) for b in self.batches):
            raise TypeError("calibration batches are expected to be tensors")
        self.num_calib = sum(int(b.shape[0]) for b in self.batches)
        self.sample = self.batches[0][:1].clone()
        self.setup_s = time.perf_counter() - t0
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.calibrated: Dict[str, tuple] = {}   # row key -> (calibrated qdqtorch model, calibration s)

    def float_model(self) -> nn.Module:
        """A fresh copy of the float model."""
        return copy.deepcopy(self.loaded.model).eval()

    def score(self, model: nn.Module, row: Row) -> Row:
        """COCO mAP of `model` on the shared eval set, into `row`."""
        r = evaluate(model, self.eval_set, layout=self.layout, conf_thres=0.001, iou_thres=0.65, max_det=300,
                     batch_size=self.args.batch, scorer="fast", progress=False)
        row.map50_95, row.map50 = r.map50_95, r.map50
        return row


# ---------------------------------------------------------------- float and qdqtorch

def run_float(p: Protocol, keys: List[str]) -> List[Row]:
    """The float baseline."""
    return [p.score(p.float_model(), Row("float", "PyTorch", "FP32"))]


def _quantized(p: Protocol, rules: bool) -> nn.Module:
    model = p.float_model()
    quantize_model(model, {"ignore": p.loaded.default_ignore})
    if rules:
        from qdqtorch.rules import apply_tensorrt_rules
        apply_tensorrt_rules(model, p.sample)
    return model


def run_qdqtorch(p: Protocol, keys: List[str], rules: bool) -> List[Row]:
    """Each selected calibration method; the histogram methods share one statistics pass."""
    prefix = "qdqtorch-rules-" if rules else "qdqtorch-"
    config = "TensorRT rules, " if rules else ""
    rows = []
    wanted = [m for m in METHODS if prefix + m in keys]
    if "max" in wanted:
        model = _quantized(p, rules)
        t0 = time.perf_counter()
        qdqtorch.calibrate(model, p.batches, method="max", progress=False)
        row = Row(prefix + "max", "qdqtorch " + qdqtorch.__version__, config + "max", calib_s=time.perf_counter() - t0)
        rows.append(p.score(model, row))
        p.calibrated[row.key] = (model, row.calib_s)
        _print_row(row)
    hist = [m for m in wanted if m != "max"]
    if hist:
        model = _quantized(p, rules)
        use_histogram_calibrators(model)
        t0 = time.perf_counter()
        collect_stats(model, p.batches, progress=False)
        collect_s = time.perf_counter() - t0
        for method in hist:
            t0 = time.perf_counter()
            compute_amax(model, method, percentile=p.args.percentile, progress=False)
            amax_s = time.perf_counter() - t0
            label = f"percentile {p.args.percentile:g}" if method == "percentile" else method
            row = Row(prefix + method, "qdqtorch " + qdqtorch.__version__, config + label,
                      calib_s=collect_s + amax_s,
                      notes=[f"histogram pass {collect_s:.1f} s + compute_amax {amax_s:.1f} s"])
            rows.append(p.score(model, row))
            p.calibrated[row.key] = (copy.deepcopy(model), row.calib_s)
            _print_row(row)
    return rows


def _base(p: Protocol, spec: str) -> tuple:
    """A calibrated qdqtorch model for '[rules-]METHOD' (reused from its row when that row ran) and its
    calibration time."""
    rules, method = spec.startswith("rules-"), spec.rsplit("-", 1)[-1]
    if method not in METHODS or spec not in (method, f"rules-{method}"):
        raise ValueError(f"base {spec!r}: expected [rules-]{{{','.join(METHODS)}}}")
    key = "qdqtorch-" + spec
    if key in p.calibrated:
        model, calib_s = p.calibrated[key]
        return copy.deepcopy(model), calib_s
    model = _quantized(p, rules)
    t0 = time.perf_counter()
    qdqtorch.calibrate(model, p.batches, method=method, progress=False, percentile=p.args.percentile)
    return model, time.perf_counter() - t0


def run_budget(p: Protocol, keys: List[str]) -> List[Row]:
    """Sensitivity sweep + accuracy budget on train images, then score the partly float model on val."""
    from qdqtorch.sensitivity import SweepSettings, find_units, run_sensitivity
    from qdqtorch.sensitivity.coco_metric import CocoMetric

    a = p.args
    model, calib_s = _base(p, a.budget_base)
    train = EvalSet.from_yaml(a.data, "train", p.preprocess, num_images=a.budget_images, progress=False)
    metric = CocoMetric(train, p.layout, "map50_95", scorer="fast", batch_size=a.batch, data=f"{a.data} train")
    proxy, seen = [], 0
    for b in p.batches:
        proxy.append(b[:a.budget_proxy - seen])
        seen += proxy[-1].shape[0]
        if seen >= a.budget_proxy:
            break
    settings = SweepSettings(budget=a.budget, prefilter=a.budget_prefilter, budget_max_units=a.budget_max_units,
                             chart=False)
    t0 = time.perf_counter()
    result = run_sensitivity(model, metric, p.out / "budget_sweep", settings, proxy_data=proxy, fresh=True,
                             progress=False)
    sweep_s = time.perf_counter() - t0
    budget = result["budget"]
    selected = budget["selected"]
    units = {u.name: u for u in find_units(model)}
    quantizers = dict(named_quantizers(model))
    for name in selected:
        for q in units[name].quantizers:
            quantizers[q].disable()
    verified = budget["verification"]["metric"]
    tried = len(budget["steps"]) - 1  # the first step is the all-quantized baseline
    if budget["verification"]["within_budget"]:
        reached = "within budget"
    elif tried == 0:  # the search only tries layers whose impact is above the sweep's noise
        reached = "budget NOT reached: " + result["recommendation"].get("note", "no layer was tried")
    else:
        reached = f"budget NOT reached after trying {tried} layer(s)"
    row = Row("qdqtorch-budget", "qdqtorch " + qdqtorch.__version__,
              f"{a.budget_base} + budget {a.budget} ({len(selected)} layer(s) float)", calib_s=calib_s + sweep_s,
              notes=[f"float layers: {', '.join(selected) or 'none'}",
                     f"calibration {calib_s:.1f} s + sensitivity sweep {sweep_s:.1f} s (proxy on {seen} images, "
                     f"{a.budget_prefilter} worst layers swept; selected on {len(train)} train images: "
                     f"{verified:.4f} vs float {result['baselines']['float']['metric']:.4f}, {reached})"])
    p.score(model, row)
    _print_row(row)
    return [row]


def run_export(p: Protocol, keys: List[str]) -> List[Row]:
    """The --budget-base qdqtorch model exported to Q/DQ ONNX (export_onnx) and scored in ONNX Runtime."""
    from qdqtorch.export import export_onnx
    from qdqtorch.export.runtime import OnnxRuntimeModule

    model, calib_s = _base(p, p.args.budget_base)
    t0 = time.perf_counter()
    path = export_onnx(PredictionOnly(model, p.layout), p.sample, p.out / "qdqtorch" / "int8.onnx")
    row = Row("qdqtorch-ort", "qdqtorch " + qdqtorch.__version__,
              f"{p.args.budget_base}, export_onnx -> ONNX Runtime", calib_s=calib_s,
              notes=[f"export_onnx {time.perf_counter() - t0:.1f} s"])
    p.score(OnnxRuntimeModule(path), row)
    _print_row(row)
    return [row]


# ---------------------------------------------------------------- ONNX Runtime

class _Reader:
    """onnxruntime CalibrationDataReader over the shared batches (with the range protocol for strided
    calibration, which bounds ORT's memory: it keeps every intermediate tensor of a chunk)."""

    def __init__(self, name: str, batches: List[torch.Tensor]) -> None:
        self.name = name
        self.data = [b.numpy() for b in batches]
        self.set_range(0, len(self.data))

    def __len__(self) -> int:
        return len(self.data)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.it = iter(self.data[start_index:end_index])

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {self.name: x}

    def rewind(self) -> None:
        self.set_range(0, len(self.data))


def float_tail(path: Path) -> List[str]:
    """Names of the nodes that no Conv depends on (the box decoding after the head convolutions)."""
    import onnx
    graph = onnx.load(str(path)).graph
    consumers: Dict[str, List] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    reaches: Dict[str, bool] = {}

    def feeds_conv(node) -> bool:  # iterative DFS would be overkill: the graph is a few hundred nodes deep at most
        if node.name in reaches:
            return reaches[node.name]
        reaches[node.name] = False
        hit = any(c.op_type == "Conv" or feeds_conv(c) for out in node.output for c in consumers.get(out, []))
        reaches[node.name] = hit
        return hit

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    return [n.name for n in graph.node if n.op_type != "Conv" and not feeds_conv(n)]


def activation_scales(path: Path) -> Dict[str, float]:
    """Per-tensor QuantizeLinear scales of an ONNX file, by quantized tensor name."""
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(str(path)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {n.input[0]: float(init[n.input[1]]) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in init and init[n.input[1]].size == 1}


def run_ort(p: Protocol, keys: List[str]) -> List[Row]:
    """onnxruntime quantize_static, one row per selected calibration method."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from qdqtorch.export import export_onnx
    from qdqtorch.export.runtime import OnnxRuntimeModule

    work = p.out / "ort"
    work.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(PredictionOnly(p.float_model(), p.layout), p.sample, work / "float.onnx")
    t0 = time.perf_counter()
    prep = work / "float.prep.onnx"
    quant_pre_process(str(fp32), str(prep))
    prep_s = time.perf_counter() - t0
    exclude = float_tail(prep)
    name = ort.InferenceSession(str(prep), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    rows = []
    for method in ORT_METHODS:
        if f"ort-{method}" not in keys:
            continue
        out = work / f"int8_{method}.onnx"
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibStridedMinMax": 1}
        label = method
        if method == "percentile":
            extra["CalibPercentile"] = p.args.percentile
            label = f"percentile {p.args.percentile:g}"
        t0 = time.perf_counter()
        quantize_static(str(prep), str(out), _Reader(name, p.batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], nodes_to_exclude=exclude, extra_options=extra)
        row = Row(f"ort-{method}", f"onnxruntime {ort.__version__}", f"quantize_static QDQ, {label}",
                  calib_s=time.perf_counter() - t0,
                  notes=[f"{len(exclude)} post-processing nodes kept float; quant_pre_process {prep_s:.1f} s "
                         "(once, not counted); runs in ONNX Runtime (real int8 kernels where ORT has them)"])
        rows.append(p.score(OnnxRuntimeModule(out), row))
        _print_row(row)
    done = {r.key: r for r in rows}
    if "ort-minmax" in done and "ort-entropy" in done and \
            activation_scales(work / "int8_minmax.onnx") == activation_scales(work / "int8_entropy.onnx"):
        done["ort-entropy"].notes.insert(0, "its activation scales are identical to MinMax's: ORT's entropy "
                                            "calibrator has 128 histogram bins for 128 quantized bins, so the KL "
                                            "search has one candidate (the full range); quantize_static passes no "
                                            "num_bins option")
    return rows


# ---------------------------------------------------------------- nvidia-modelopt

def run_modelopt(p: Protocol, keys: List[str]) -> List[Row]:
    """mtq.quantize with INT8_DEFAULT_CFG; fake quant, and exported to ONNX Runtime."""
    try:
        import modelopt
        import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise RuntimeError(f"nvidia-modelopt is not importable ({exc}): run with --install-peers or "
                           "pip install '.[peers]'") from None
    from qdqtorch.export.runtime import OnnxRuntimeModule

    model = p.float_model()

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for b in p.batches:
                m(b)

    t0 = time.perf_counter()
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)
    calib_s = time.perf_counter() - t0
    tool = f"nvidia-modelopt {modelopt.__version__}"
    rows = []
    if "modelopt-int8" in keys:
        row = Row("modelopt-int8", tool, "INT8_DEFAULT_CFG (max), fake quant", calib_s=calib_s)
        rows.append(p.score(model, row))
        _print_row(row)
    if "modelopt-int8-ort" in keys:
        path = p.out / "modelopt" / "int8.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        wrapped = PredictionOnly(model, p.layout).eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            torch.onnx.export(wrapped, p.sample, str(path), opset_version=13, dynamo=False,
                              input_names=["images"], output_names=["output0"],
                              dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}})
        export_s = time.perf_counter() - t0
        row = Row("modelopt-int8-ort", tool, "INT8_DEFAULT_CFG (max), ONNX -> ONNX Runtime", calib_s=calib_s,
                  notes=[f"torch.onnx.export (TorchScript, opset 13) {export_s:.1f} s; BN stays a separate "
                         "node after the weight Q/DQ, ORT's optimizer folds it"])
        rows.append(p.score(OnnxRuntimeModule(path), row))
        _print_row(row)
    return rows


# ---------------------------------------------------------------- table, environment, main

GROUPS: List = [
    (["float"], run_float),
    ([f"qdqtorch-{m}" for m in METHODS], lambda p, k: run_qdqtorch(p, k, rules=False)),
    ([f"qdqtorch-rules-{m}" for m in METHODS], lambda p, k: run_qdqtorch(p, k, rules=True)),
    (["qdqtorch-budget"], run_budget),
    (["qdqtorch-ort"], run_export),
    ([f"ort-{m}" for m in ORT_METHODS], run_ort),
    (["modelopt-int8", "modelopt-int8-ort"], run_modelopt),
]
ALL_KEYS = [k for keys, _ in GROUPS for k in keys]


def _print_row(row: Row) -> None:
    m = "-" if row.map50_95 is None else f"{row.map50_95:.4f}"
    print(f"[{time.strftime('%H:%M:%S')}] {row.key}: mAP50-95 {m}"
          + ("" if row.map50 is None else f" mAP50 {row.map50:.4f}")
          + ("" if row.calib_s is None else f" calib {row.calib_s:.1f} s")
          + (f" ERROR {row.error}" if row.error else ""), flush=True)


def table(rows: List[Row]) -> str:
    """The Markdown table."""
    lines = ["| row | tool | configuration | mAP50-95 | mAP50 | calibration (s) | notes |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        def fmt(v: Optional[float], d: int) -> str:
            return "-" if v is None else f"{v:.{d}f}"
        note = "; ".join(r.notes + ([f"ERROR: {r.error}"] if r.error else []))
        key = f"*{r.key}*" if r.reference else r.key
        lines.append(f"| {key} | {r.tool} | {r.config} | {fmt(r.map50_95, 4)} | {fmt(r.map50, 4)} | "
                     f"{fmt(r.calib_s, 1)} | {note} |")
    return "\n".join(lines)


def versions() -> Dict[str, str]:
    """Versions of everything in the table."""
    out = {"python": platform.python_version(), "qdqtorch": qdqtorch.__version__}
    for name, module in (("torch", "torch"), ("torchvision", "torchvision"), ("numpy", "numpy"), ("onnx", "onnx"),
                         ("onnxruntime", "onnxruntime"), ("nvidia-modelopt", "modelopt")):
        try:
            out[name] = __import__(module).__version__
        except Exception as exc:  # noqa: BLE001 - a missing or broken peer is recorded, not fatal
            out[name] = f"unavailable ({type(exc).__name__})"
    return out


def peer_requirements() -> List[str]:
    """The `peers` extra of setup.cfg (one source of truth for what the benchmark installs)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    try:
        text = cfg["options.extras_require"]["peers"]
    except KeyError:
        raise SystemExit("setup.cfg has no [options.extras_require] peers extra") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def install_peers() -> None:
    """pip install the peers extra, after a dry run shows it does not replace torch/torchvision."""
    reqs = peer_requirements()
    pip = [sys.executable, "-m", "pip", "install"]
    dry = subprocess.run(pip + ["--dry-run", *reqs], capture_output=True, text=True)
    if dry.returncode:
        raise SystemExit(f"pip install --dry-run {' '.join(reqs)} failed:\n{dry.stdout[-2000:]}{dry.stderr[-2000:]}")
    would = " ".join(line for line in dry.stdout.splitlines() if line.startswith("Would install"))
    clash = re.findall(r"\b(torch|torchvision)-\d\S*", would)
    if clash:
        raise SystemExit(f"installing {reqs} would replace {clash}; install them by hand with --no-deps plus their "
                         "other dependencies, then rerun without --install-peers")
    if would:
        print(f"installing peers: {would}", flush=True)
        subprocess.run(pip + reqs, check=True)


def select(patterns: Optional[List[str]]) -> List[str]:
    """Row keys matching --only patterns (all rows by default); an unmatched pattern is an error."""
    if not patterns:
        return list(ALL_KEYS)
    keys = []
    for pat in patterns:
        hits = [k for k in ALL_KEYS if fnmatch.fnmatchcase(k, pat)]
        if not hits:
            raise SystemExit(f"--only {pat!r} matches no row; rows are: {', '.join(ALL_KEYS)}")
        keys += hits
    return [k for k in ALL_KEYS if k in keys]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(SHARED / "models" / "yolov5n.pt"))
    ap.add_argument("--repo", default=str(ROOT / "tests" / "fixtures" / "yolov5_repo"),
                    help="training repository the checkpoint pickles (unpickling runs its code: trusted files only)")
    ap.add_argument("--data", default=str(SHARED / "data" / "coco128" / "coco128.yaml"), help="val split scores")
    ap.add_argument("--calib", default=str(SHARED / "data" / "coco128" / "images" / "train2017"))
    ap.add_argument("--num-calib", type=int, default=128)
    ap.add_argument("--num-eval", type=int, default=None, help="default: the whole val split (128)")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--percentile", type=float, default=99.99, help="qdqtorch and ORT percentile")
    ap.add_argument("--only", nargs="+", metavar="ROW", help=f"rows to run (patterns): {', '.join(ALL_KEYS)}")
    ap.add_argument("--smoke", action="store_true", help="16 calibration / 16 eval images at 320 (checks it runs)")
    ap.add_argument("--budget", default="1%", help="accuracy budget of the qdqtorch-budget row (abs or %%)")
    ap.add_argument("--budget-base", default="rules-mse", help="[rules-]METHOD the budget row starts from")
    ap.add_argument("--budget-images", type=int, default=64, help="train images the budget selection scores on")
    ap.add_argument("--budget-prefilter", type=int, default=8, help="sweep only the N worst layers by proxy")
    ap.add_argument("--budget-proxy", type=int, default=8, help="calibration images of the proxy pass")
    ap.add_argument("--budget-max-units", type=int, default=10)
    ap.add_argument("--install-peers", action="store_true", help="pip install setup.cfg's peers extra first")
    ap.add_argument("--out", default="runs/peers")
    args = ap.parse_args()
    if args.smoke:
        args.num_calib, args.num_eval, args.imgsz = 16, 16, 320
        args.budget_images, args.budget_prefilter = 16, 4
    keys = select(args.only)
    if args.install_peers:
        install_peers()

    started = time.perf_counter()
    where = machine()
    p = Protocol(args)
    print(f"{where}\neval {len(p.eval_set)} images, calibration {p.num_calib} images at {args.imgsz}; rows: "
          f"{', '.join(keys)} (setup {p.setup_s:.1f} s)", flush=True)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": where,
              "versions": versions(), "protocol": {"imgsz": args.imgsz, "eval_images": len(p.eval_set),
                                                   "calib_images": p.num_calib, "conf": 0.001, "iou": 0.65,
                                                   "max_det": 300, "scorer": "fast", "batch": args.batch},
              "rows": []}
    rows: List[Row] = []
    for group, fn in GROUPS:
        wanted = [k for k in group if k in keys]
        if not wanted:
            continue
        t0 = time.perf_counter()
        try:
            rows += fn(p, wanted)
        except Exception as exc:  # noqa: BLE001 - one failing tool must not lose the others' rows
            traceback.print_exc()
            for k in wanted:
                if not any(r.key == k for r in rows):
                    rows.append(Row(k, "", "", error=f"{type(exc).__name__}: {exc}"[:300]))
                    _print_row(rows[-1])
        print(f"  ({', '.join(wanted)}: {time.perf_counter() - t0:.0f} s)", flush=True)
        report["rows"] = [r.to_dict() for r in rows]
        (p.out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    for key, config, value, amax_s in REFERENCE:
        rows.append(Row(key, "pytorch-quantization (reference)", config, map50_95=value, reference=True,
                        notes=["not run here: measured independently on this protocol"]
                        + ([f"compute_amax {amax_s:.0f} s on a 2-core CPU"] if amax_s else [])))
    report["rows"] = [r.to_dict() for r in rows]
    report["total_s"] = round(time.perf_counter() - started, 1)
    md = table(rows)
    (p.out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    (p.out / "table.md").write_text(md + "\n")
    print("\n" + md)
    print(f"\nversions: {report['versions']}\ntotal {report['total_s']:.0f} s; wrote {p.out / 'results.json'}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
