"""run_ptq: one whole PTQ job (load -> quantize -> calibrate -> evaluate -> export -> report) as a function."""
from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from .. import __version__
from ..errors import UsageError
from ..host_memory import reuse_freed_memory
from ..quantize import QuantConfig, calibrate, quantize_model, save_calibration
from .report import write_reports
from .checks import check_settings, stale_outputs
from .settings import DEFAULT_IMGSZ, PTQSettings


@dataclass
class PTQResult:
    """What a PTQ run measured and wrote."""

    summary: Dict[str, Any]
    out: Path
    model: Any = field(repr=False, default=None)

    @property
    def ok(self) -> bool:
        """False when the Q/DQ check was requested and found errors."""
        check = self.summary.get("qdq_check")
        return not (check and check.get("errors"))


def _versions() -> Dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__, "qdqtorch": __version__}
    for name in ("torchvision", "onnx", "onnxruntime", "ultralytics", "pycocotools"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            pass
    return versions


def _quant_config(settings: PTQSettings, default_ignore) -> QuantConfig:
    data = dict(settings.quant)
    ignore = data.pop("ignore", [])
    ignore = [ignore] if isinstance(ignore, str) else list(ignore)
    config = QuantConfig.from_dict(data, where="quant section")
    config.ignore = list(dict.fromkeys([*default_ignore, *ignore, *settings.ignore]))
    return QuantConfig.from_dict(config.to_dict(), where="quant section")


def _imgsz(settings: PTQSettings, loaded) -> Tuple[int, str]:
    """The image size and where it came from: the settings, the checkpoint, or the default."""
    if settings.imgsz is not None:
        return settings.imgsz, "from the settings"
    if loaded.imgsz:
        return loaded.imgsz, "recorded in the checkpoint"
    return DEFAULT_IMGSZ, "default: the checkpoint records none; pass --imgsz"


def _eval_set(settings: PTQSettings, preprocess, names, progress: bool):
    from ..eval import EvalSet
    data = Path(settings.data)
    if not data.exists():
        raise FileNotFoundError(f"dataset {settings.data!r} not found: pass --data with a local Ultralytics dataset "
                                "yaml (e.g. ../shared/data/coco128/coco128.yaml) or an image folder with YOLO labels; "
                                "nothing is downloaded")
    if data.suffix in (".yaml", ".yml"):
        return EvalSet.from_yaml(data, settings.eval_split, preprocess, num_images=settings.num_eval,
                                 workers=settings.workers, progress=progress)
    return EvalSet.from_yolo(data, preprocess, names=names, num_images=settings.num_eval, workers=settings.workers,
                             progress=progress)


@reuse_freed_memory()
def run_ptq(settings: PTQSettings, *, progress: bool = True, log=print) -> PTQResult:
    """Run one PTQ job and write summary.json, report.md, calibration.json and model.qdq.onnx to settings.out."""
    from ..data import Preprocess, calibration_loader
    from ..eval import evaluate
    from ..models import PredictionOnly, load_model

    for flag, value in (("--model", settings.model), ("--data", settings.data)):
        if not value:
            raise UsageError(f"{flag} is required (with neither --model nor --data, scripts/ptq.py runs the "
                             "embedded demo)")
    check_settings(settings)  # bad values, missing files/packages, unwritable --out: now, not after minutes
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in stale_outputs(settings):
        stale.unlink()
        log(f"removed {stale} of an earlier run (--no-export: it would not match this run's summary)")
    timings: Dict[str, float] = {}
    summary: Dict[str, Any] = {"settings": settings.to_dict(), "versions": _versions()}
    if settings.note:
        summary["note"] = settings.note

    t0 = time.perf_counter()
    loaded = load_model(settings.model, repo=settings.repo, device=settings.device, fuse_bn=settings.fold_bn)
    model, layout = loaded.model, loaded.layout
    timings["load"] = time.perf_counter() - t0
    summary["model"] = {"source": loaded.source, "layout": layout, "classes": loaded.num_classes,
                        "stride": loaded.stride}
    imgsz, origin = _imgsz(settings, loaded)
    settings = dataclasses.replace(settings, imgsz=imgsz)
    summary["settings"]["imgsz"] = imgsz
    summary["defaults"] = {"imgsz": origin}
    log(f"imgsz {imgsz} ({origin})")
    preprocess = Preprocess.from_dict({**settings.preprocess, "imgsz": imgsz, "stride": loaded.stride})

    t0 = time.perf_counter()
    eval_set = _eval_set(settings, preprocess, loaded.names, progress)
    timings["eval_set"] = time.perf_counter() - t0
    eval_kwargs = dict(layout=layout, conf_thres=settings.conf_thres, iou_thres=settings.iou_thres,
                       max_det=settings.max_det, batch_size=settings.batch, scorer=settings.scorer, progress=progress)
    summary["data"] = {"eval": settings.data, "eval_split": settings.eval_split, "eval_images": len(eval_set),
                       "eval_boxes": eval_set.num_annotations}

    if not settings.skip_float_eval:
        t0 = time.perf_counter()
        result = evaluate(model, eval_set, **eval_kwargs)
        timings["float_eval"] = time.perf_counter() - t0
        summary["float"] = result.to_dict()
        log(f"float: {result}")

    config = _quant_config(settings, loaded.default_ignore)
    sample = next(eval_set.batches(1, settings.device))[1]
    report = quantize_model(model, config, rules=settings.rules, example_input=sample)
    summary["quantization"] = {"config": config.to_dict(), **report.to_dict()}

    calib_source = settings.calib_data or settings.data
    loader = calibration_loader(calib_source, preprocess, batch_size=settings.batch, num_images=settings.num_calib,
                                workers=settings.workers, split=settings.calib_split)
    t0 = time.perf_counter()
    calibrate(model, loader, method=settings.calib_method, weight_method=settings.weight_method,
              device=settings.device, progress=progress, percentile=settings.percentile)
    timings["calibrate"] = time.perf_counter() - t0
    summary["data"].update(calib=calib_source, calib_split=settings.calib_split, calib_images=loader.images_used)
    save_calibration(model, out / "calibration.json")
    write_reports({**summary, "timings": timings}, out)  # what is done so far survives a later failure

    t0 = time.perf_counter()
    result = evaluate(model, eval_set, **eval_kwargs)
    timings["int8_eval"] = time.perf_counter() - t0
    summary["int8"] = result.to_dict()
    log(f"int8 (fake quant): {result}")

    if settings.export:
        from ..export import check_qdq, export_onnx
        onnx_path = out / "model.qdq.onnx"
        t0 = time.perf_counter()
        export_onnx(PredictionOnly(model, layout), sample, onnx_path, opset=settings.opset,
                    metadata={"stride": loaded.stride, "names": dict(enumerate(loaded.names)), "task": "detect",
                              "imgsz": [settings.imgsz, settings.imgsz], "batch": 1,
                              "description": f"qdqtorch {__version__} Q/DQ INT8 export of {settings.model}"})
        timings["export"] = time.perf_counter() - t0
        summary["onnx"] = str(onnx_path)
        # layers kept float on purpose are warnings, not errors; ONNX node names join module levels with / or .
        allow_float = [f"*{name.replace('.', '[./]')}/*" for name, _, _ in report.ignored]
        summary["qdq_check"] = check_qdq(onnx_path, allow_float=allow_float).to_dict()
        if settings.ort_eval:
            from ..export.runtime import OnnxRuntimeModule
            t0 = time.perf_counter()
            ort_result = evaluate(OnnxRuntimeModule(onnx_path), eval_set, **eval_kwargs)
            timings["ort_eval"] = time.perf_counter() - t0
            summary["int8_onnxruntime"] = ort_result.to_dict()
            log(f"int8 (onnxruntime): {ort_result}")
    summary["timings"] = timings
    write_reports(summary, out)
    return PTQResult(summary, out, model)


def run_ptq_from(config: Optional[str] = None, **overrides: Any) -> PTQResult:
    """run_ptq with settings from an optional YAML/JSON file, keyword arguments overriding it."""
    settings = PTQSettings.from_file(config, **overrides) if config else PTQSettings.from_dict(overrides)
    return run_ptq(settings)
