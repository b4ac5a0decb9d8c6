"""The PTQ stages over one shared value: prepare -> calibrate -> evaluate -> export -> report.

`prepare` loads the float model, caches the evaluation images, takes the float reference of fidelity (the float
model's own detections: the score that needs no labels), builds the QuantConfig, quantizes and applies the
placement; every later stage works on the `Prepared` it returns and records its numbers, seconds and warnings in it,
so `report` writes exactly what ran. The sanity checks (random weights, classes not the dataset's, a float model
that detects nothing, dead or wrongly scaled calibration inputs, calibrating on the evaluation images) run here.
`qdqtorch.pipeline.run_ptq` composes them; the sensitivity session and the benchmarks call the same stages.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import UsageError
from .. import __version__
from ..data import CalibrationLoader, Preprocess
from ..models import LoadedModel
from ..quantize import QuantConfig, QuantReport, quantize_model
from ..quantize import calibrate as calibrate_model
from ..rules import apply_placement, placement_from_name
from ..user_code import import_callable, is_callable_spec
from .report import versions, write_reports
from .settings import DEFAULT_IMGSZ, PTQSettings

# fewer float detections than this: fidelity can only tell large changes (BENCHMARKS.md §8l: on 35 boxes one
# model's figure spans 0.962-0.987 when its biases move by one ulp; on 640, 0.935-0.939)
FEW_REFERENCE_BOXES = 100

# summary key -> (timings key, log label) of each evaluation a PTQ run makes
EVALUATIONS = {"float": ("float_eval", "float"), "int8": ("int8_eval", "int8 (fake quant)"),
               "int8_onnxruntime": ("ort_eval", "int8 (onnxruntime)")}


@dataclass
class Prepared:
    """A quantized (not yet calibrated) model with everything the later stages need, and what they recorded."""

    settings: PTQSettings
    model: nn.Module
    loaded: Optional[LoadedModel]          # None for a 'module:function' model
    preprocess: Preprocess
    eval_set: Optional[Any] = None         # qdqtorch.eval.EvalSet, when the run scores COCO mAP
    sample: Optional[torch.Tensor] = None  # one evaluation image (1, 3, H, W): traces placement and export
    config: Optional[QuantConfig] = None
    quant_report: Optional[QuantReport] = None
    placement_report: Optional[Any] = None  # qdqtorch.rules.RulesReport when a placement was applied
    reference: Optional[Any] = None        # qdqtorch.eval.FidelityReference: the float detections, taken once
    mismatch: Optional[str] = None         # why the model's classes are not the dataset's (then: fidelity only)
    summary: Dict[str, Any] = field(default_factory=dict)   # summary.json so far (keys of SUMMARY_FIELDS)
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def layout(self) -> Optional[str]:
        """The detector's output layout (yolov5 / ultralytics), None for a 'module:function' model."""
        return self.loaded.layout if self.loaded is not None else None

    @property
    def labels_meaningful(self) -> bool:
        """True when mAP against the evaluation labels means something: labels exist and name the model's
        classes. Otherwise the run is scored by fidelity alone."""
        return self.eval_set is not None and self.eval_set.labelled and self.mismatch is None

    def warn(self, message: str) -> None:
        """Issue a `warning:` and keep it for summary.json / report.md."""
        warnings.warn(message, stacklevel=3)
        self.summary.setdefault("warnings", []).append(message)

    @property
    def default_ignore(self) -> List[str]:
        """The model family's layers kept float (e.g. Ultralytics' DFL)."""
        return list(self.loaded.default_ignore) if self.loaded is not None else []


def load_float(settings: PTQSettings) -> Tuple[nn.Module, Optional[LoadedModel]]:
    """The float model of `settings.model` (a checkpoint / model yaml, or a 'module:function' nn.Module factory)."""
    if is_callable_spec(settings.model):
        model = import_callable(settings.model, "--model")()
        if not isinstance(model, nn.Module):
            raise TypeError(f"--model {settings.model}: returned {type(model).__name__}, expected a float nn.Module")
        return model.float().to(settings.device).eval(), None
    from ..models import load_model
    loaded = load_model(settings.model, repo=settings.repo, device=settings.device, fuse_bn=settings.fold_bn,
                        fuse_reparam=settings.fuse_reparam)
    return loaded.model, loaded


def resolve_imgsz(settings: PTQSettings, loaded: Optional[LoadedModel]) -> Tuple[int, str]:
    """The image size of a run and where it came from: the settings, the checkpoint, or the default."""
    if settings.imgsz is not None:
        return settings.imgsz, "from the settings"
    if loaded is not None and loaded.imgsz:
        return loaded.imgsz, "recorded in the checkpoint"
    return DEFAULT_IMGSZ, "default: the checkpoint records none; pass --imgsz"


def quant_config_for(settings: PTQSettings, default_ignore: Sequence[str], extra: Sequence[str] = ()) -> QuantConfig:
    """The QuantConfig of a run: the `quant` section, its ignore list plus the model's default float layers,
    `settings.ignore` and `extra`."""
    data = dict(settings.quant)
    ignore = data.pop("ignore", [])
    ignore = [ignore] if isinstance(ignore, str) else list(ignore)
    config = QuantConfig.from_dict(data, where="quant section")
    config.ignore = list(dict.fromkeys([*default_ignore, *ignore, *settings.ignore, *extra]))
    return QuantConfig.from_dict(config.to_dict(), where="quant section")


def quantize(model: nn.Module, settings: PTQSettings, default_ignore: Sequence[str], sample: Optional[torch.Tensor],
             extra_ignore: Sequence[str] = ()) -> Tuple[QuantConfig, QuantReport, Optional[Any]]:
    """Replace the layers (QuantConfig of the settings) and apply the settings' placement: the one place a PTQ run,
    the sweep and its budget verification quantize. Returns (config, quant report, placement report or None)."""
    config = quant_config_for(settings, default_ignore, extra_ignore)
    report = quantize_model(model, config)
    return config, report, apply_placement(model, placement_from_name(settings.rules), sample)


def eval_set_for(settings: PTQSettings, preprocess: Preprocess, names: Optional[List[str]], progress: bool = True):
    """The evaluation images of a run (settings.data: a dataset yaml's eval split, an image folder or list file,
    with YOLO labels or without: then the set is unlabelled and scored by fidelity), decoded once."""
    from ..eval import EvalSet
    data = Path(settings.data)
    if not data.exists():
        raise FileNotFoundError(f"dataset {settings.data!r} not found: pass --data with a local Ultralytics dataset "
                                "yaml (e.g. ../shared/data/coco128/coco128.yaml), an image folder or a list file "
                                "(labels optional); nothing is downloaded")
    return EvalSet.from_source(data, preprocess, names=names, split=settings.eval_split,
                               num_images=settings.num_eval, workers=settings.workers, progress=progress)


def check_labels(prep: Prepared, log=print) -> None:
    """Decide how the run is scored: mAP against the labels when they exist and name the model's classes, else
    fidelity alone (one `warning:` naming both sets of class names when they differ)."""
    from ..eval import class_mismatch
    es, data = prep.eval_set, prep.summary.setdefault("data", {})
    if es is None:
        return
    if not es.labelled:
        data["score"] = "fidelity (the evaluation images have no labels)"
        log(f"{prep.settings.data}: no labels found, so the score is fidelity (agreement with the float model's own "
            f"detections)")
        return
    if prep.loaded is not None:
        prep.mismatch = class_mismatch(prep.loaded.names, es.names, data=prep.settings.data)
    if prep.mismatch is not None:
        prep.warn(prep.mismatch)
        data["score"] = "fidelity (the model's classes are not the dataset's)"
    else:
        data["score"] = "COCO mAP against the labels, and fidelity"


def take_reference(prep: Prepared, *, outputs: int = 8, evaluate_float: bool = False, progress: bool = True,
                   log=print) -> None:
    """The float model's detections on the evaluation images as fidelity's ground truth (and its outputs on the
    first `outputs` images, for the per-output SNR/cosine), taken once before quantizing; with `evaluate_float` and
    meaningful labels, the float COCO mAP comes from the same pass. A float model that detects nothing at all is an
    error unless settings.allow_empty: every figure would be meaningless."""
    from ..eval import evaluate as evaluate_model
    from ..eval import predict
    from ..eval.fidelity import reference_from, reference_tap
    from ..quantize import disable_quantization
    s, es, loaded = prep.settings, prep.eval_set, prep.loaded
    if es is None or loaded is None:
        return
    tap = reference_tap(loaded.layout, outputs)
    t0 = time.perf_counter()
    with disable_quantization(prep.model):     # a no-op before quantize(); float again if called after it
        if evaluate_float and prep.labels_meaningful:
            result = evaluate_model(prep.model, es, select=tap, **eval_kwargs(prep, progress))
            prep.timings["float_eval"] = time.perf_counter() - t0
            prep.summary["float"] = result.to_dict()
            log(f"{EVALUATIONS['float'][1]}: {result}")
        else:
            predict(prep.model, es, layout=loaded.layout, conf_thres=tap.conf_thres, batch_size=s.batch, select=tap,
                    multi_label=False, progress=progress)
            prep.timings["float_reference"] = time.perf_counter() - t0
    prep.reference = reference_from(tap, es, names=loaded.names, allow_empty=s.allow_empty,
                                    seconds=time.perf_counter() - t0)
    prep.summary.setdefault("data", {})["fidelity_reference"] = prep.reference.describe()
    if 0 < prep.reference.num_boxes < FEW_REFERENCE_BOXES:
        boxes = prep.reference.num_boxes
        prep.warn(f"the float model detects only {boxes} box{'es' if boxes > 1 else ''} on the {len(es)} evaluation "
                  f"images of {s.data}: fidelity rests on so few reference boxes that it can only tell large "
                  f"changes (on 35 boxes one model's figure moves by up to 0.025 when its biases change in the last "
                  f"bit, BENCHMARKS.md §8l); evaluate on more images, or on images of the model's own domain; "
                  f"--jitter-draws 5 measures this run's grain")
    if prep.reference.num_boxes == 0:
        prep.warn(f"the float model detects nothing on the {len(es)} evaluation images of {s.data} "
                  f"(--allow-empty): fidelity cannot be scored and mAP is meaningless; check the model, the images "
                  f"and the preprocessing")


def prepare(settings: PTQSettings, *, with_eval_set: bool = True, evaluate_float: bool = False,
            reference_outputs: int = 8, progress: bool = True, log=print) -> Prepared:
    """Load the float model, cache the evaluation images (`with_eval_set`) and decide how they score (labels or
    fidelity), take the float reference of fidelity (keeping `reference_outputs` images' raw outputs), score the
    float model (`evaluate_float`), then quantize and apply the placement (traced on the first evaluation image)."""
    t0 = time.perf_counter()
    model, loaded = load_float(settings)
    imgsz, origin = resolve_imgsz(settings, loaded)
    if settings.imgsz != imgsz:
        settings = dataclasses.replace(settings, imgsz=imgsz)
        log(f"imgsz {imgsz} ({origin})")
    stride = loaded.stride if loaded is not None else 32
    prep = Prepared(settings, model, loaded,
                    Preprocess.from_dict({**settings.preprocess, "imgsz": imgsz, "stride": stride}))
    prep.timings["load"] = time.perf_counter() - t0
    prep.summary["settings"] = settings.to_dict()  # "versions" follows it, added by report()
    prep.summary["defaults"] = {"imgsz": origin}
    if settings.note:
        prep.summary["note"] = settings.note
    if loaded is not None:
        prep.summary["model"] = {"source": loaded.source, "layout": loaded.layout, "classes": loaded.num_classes,
                                 "names": list(loaded.names), "stride": loaded.stride, "trained": loaded.trained}
        untrained = loaded.untrained_warning()
        if untrained:
            prep.warn(untrained)
    if with_eval_set:
        if loaded is None:
            raise UsageError(f"--model {settings.model}: COCO evaluation needs a YOLO detector checkpoint")
        t0 = time.perf_counter()
        prep.eval_set = eval_set_for(settings, prep.preprocess, loaded.names, progress)
        prep.timings["eval_set"] = time.perf_counter() - t0
        prep.summary["data"] = {"eval": settings.data, "eval_split": settings.eval_split,
                                "eval_images": len(prep.eval_set), "labelled": prep.eval_set.labelled,
                                "eval_boxes": prep.eval_set.num_annotations if prep.eval_set.labelled else None}
        check_labels(prep, log)
        take_reference(prep, outputs=reference_outputs, evaluate_float=evaluate_float, progress=progress, log=log)
        prep.sample = next(prep.eval_set.batches(1, settings.device))[1]
    prep.config, prep.quant_report, prep.placement_report = quantize(model, settings, prep.default_ignore,
                                                                     prep.sample)
    prep.summary["quantization"] = {"config": prep.config.to_dict(), **prep.quant_report.to_dict(),
                                    **({"rules": prep.placement_report.to_dict()}
                                       if prep.placement_report is not None else {})}
    return prep


def samples_in(batch: Any) -> int:
    """Samples in a batch (a tensor, or a tuple/list whose first item is one); 1 when it cannot tell."""
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1


def calibration_data(settings: PTQSettings, preprocess: Preprocess) -> Union[List[Any], CalibrationLoader]:
    """The calibration batches: `settings.calib_data` (default: `settings.data`'s calib split) through the
    preprocessing, or a 'module:function' yielding input batches (cut after num_calib samples)."""
    if is_callable_spec(settings.calib_data):
        batches: List[Any] = []
        seen = 0
        for batch in import_callable(str(settings.calib_data), "--calib-data")():
            batches.append(batch)
            seen += samples_in(batch)
            if seen >= settings.num_calib:
                break
        if not batches:
            raise UsageError(f"--calib-data {settings.calib_data}: yielded no batch")
        return batches
    from ..data import calibration_loader
    return calibration_loader(settings.calib_data or settings.data, preprocess, batch_size=settings.batch,
                              num_images=settings.num_calib, workers=settings.workers, split=settings.calib_split)


def calibration_kwargs(settings: PTQSettings) -> Dict[str, Any]:
    """The calibration options of the settings, as `qdqtorch.calibrate` (and the distributed one) take them."""
    return dict(method=settings.calib_method, weight_method=settings.weight_method, device=settings.device,
                percentile=settings.percentile, grid=settings.grid)


class _FirstBatchChecked:
    """Iterates `data` unchanged, calling `check` on the first batch of the first pass (no extra loading)."""

    def __init__(self, data: Iterable, check) -> None:
        self.data, self.check, self.checked = data, check, False

    def __iter__(self):
        for batch in self.data:
            if not self.checked:
                self.checked = True
                self.check(batch)
            yield batch


class _SizedFirstBatchChecked(_FirstBatchChecked):
    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]


def _check_calibration_sources(prep: Prepared, data: Any) -> None:
    """Warn when calibration images are evaluation images (the calibration flatters the INT8 score)."""
    from ..data.checks import check_distinct
    files = getattr(getattr(data, "dataset", None), "files", None)
    if prep.eval_set is None or not files:
        return
    message = check_distinct(files[:getattr(data, "num_images", len(files))], prep.eval_set.paths, warn=False)
    if message:
        prep.warn(message)


def calibrate(prep: Prepared, data: Optional[Iterable] = None, *, progress: bool = True) -> None:
    """Calibrate the prepared model on `data` (default: `calibration_data` of the settings), with the sanity
    checks: calibration images that are evaluation images, inputs outside the preprocessing's range (first batch),
    and activation ranges (amax) of 0 or vanishingly small afterwards, each a `warning:` naming what to check."""
    from ..data.checks import check_input_range
    from ..quantize.checks import check_amax
    s = prep.settings
    data = calibration_data(s, prep.preprocess) if data is None else data
    _check_calibration_sources(prep, data)

    def check_range(batch: Any) -> None:
        source = f"the calibration data ({s.calib_data or s.data})"
        message = check_input_range([batch], prep.preprocess, source, warn=False)
        if message:
            prep.warn(message)

    # the expected range is known for a detector checkpoint or declared preprocessing, not for a bare nn.Module
    fed: Iterable = data
    if prep.loaded is not None or s.preprocess:
        fed = (_SizedFirstBatchChecked if hasattr(data, "__len__") else _FirstBatchChecked)(data, check_range)
    t0 = time.perf_counter()
    calibrate_model(prep.model, fed, progress=progress, **calibration_kwargs(s))
    prep.timings["calibrate"] = time.perf_counter() - t0
    for message in check_amax(prep.model, warn=False):
        prep.warn(message)
    images = getattr(data, "images_used", None)
    if images is None and isinstance(data, (list, tuple)):
        images = sum(samples_in(b) for b in data)
    prep.summary.setdefault("data", {}).update(calib=s.calib_data or s.data, calib_split=s.calib_split,
                                               calib_images=images)


def recover(prep: Prepared, *, progress: bool = True, log=print) -> Optional[Any]:
    """Label-free recovery after calibration on the settings' recovery images: re-round the weights against the
    float model (adaround/gptq/nearest, with bias_correction), with "ranges" fit the activation amax to the network's
    outputs, or with "distill" fine-tune the whole model from its float copy (`qdqtorch.qat.fine_tune`). Returns the
    last report, or None when the settings ask for none."""
    s = prep.settings
    if not s.recover:
        return None
    from ..data import calibration_loader
    from ..recovery import recover_weights, refine_ranges
    num_images = s.recovery_images
    if is_callable_spec(s.calib_data):
        data: Any = calibration_data(s, prep.preprocess)
    else:
        data = calibration_loader(s.calib_data or s.data, prep.preprocess, batch_size=s.batch,
                                  num_images=num_images, workers=s.workers, split=s.calib_split)
    t0 = time.perf_counter()
    result: Any = None
    summary: Dict[str, Any] = {"method": s.recover}
    weights, _, ranges = s.recover.partition("+")
    if weights == "ranges":
        weights, ranges = "", "ranges"
    if weights == "distill":
        from ..qat import fine_tune
        result = fine_tune(prep.model, data, epochs=s.recover_epochs, num_images=num_images, batch_size=s.batch,
                           learn_amax=s.recover_learn_amax, device=s.device, progress=progress)
        summary.update(result.to_dict())
        log(str(result))
    elif weights:
        result = recover_weights(prep.model, data, method=weights, bias_correction=s.bias_correction,
                                 num_images=num_images, device=s.device, progress=progress)
        summary.update({k: v for k, v in result.to_dict().items() if k not in ("layers", "method")})
        log(str(result))
    if ranges:
        result = refine_ranges(prep.model, data, num_images=num_images, device=s.device, progress=progress)
        summary["ranges"] = {k: v for k, v in result.to_dict().items() if k != "amax"}
        summary.setdefault("images", result.images)
        log(str(result))
    prep.timings["recover"] = time.perf_counter() - t0
    prep.summary["recovery"] = summary
    return result


def eval_kwargs(prep: Prepared, progress: bool = True) -> Dict[str, Any]:
    """The COCO evaluation options of the settings, as `qdqtorch.eval.evaluate` takes them."""
    s = prep.settings
    return dict(layout=prep.layout, conf_thres=s.conf_thres, iou_thres=s.iou_thres, max_det=s.max_det,
                batch_size=s.batch, scorer=s.scorer, progress=progress)


def _score(prep: Prepared, key: str, model: nn.Module, progress: bool) -> Tuple[Any, Any]:
    """One inference pass of `model` over the cached evaluation images: (EvalResult or None, FidelityResult or
    None). COCO mAP when the labels mean something; fidelity for a quantized model (`key` not float) when the float
    reference has boxes."""
    from ..eval import evaluate as evaluate_model
    from ..eval import predict
    from ..eval.fidelity import candidate_tap, score_tap
    ref = prep.reference
    tap = candidate_tap(ref) if key != "float" and ref is not None and ref.num_boxes else None
    result = fid = None
    t0 = time.perf_counter()
    if prep.labels_meaningful:
        result = evaluate_model(model, prep.eval_set, select=tap, **eval_kwargs(prep, progress))
    elif tap is not None:
        predict(model, prep.eval_set, layout=ref.layout, conf_thres=tap.conf_thres, batch_size=prep.settings.batch,
                select=tap, multi_label=False, progress=progress)
    if tap is not None:
        fid = score_tap(tap, ref, scorer=prep.settings.scorer, timings={"inference": time.perf_counter() - t0})
    return result, fid


def evaluate(prep: Prepared, key: str = "int8", model: Optional[nn.Module] = None, *, progress: bool = True,
             log=print):
    """Score `model` (default: the prepared model) on the cached evaluation images and record it as `key` (float,
    int8 or int8_onnxruntime) in the summary: COCO mAP when the labels mean something (`labels_meaningful`), and
    for a quantized model always its fidelity against the float reference (summary["fidelity"][key], with the
    SNR/cosine of every output tensor), both from one inference pass. Returns the EvalResult, or None when the run
    is scored by fidelity alone."""
    if prep.eval_set is None:
        raise UsageError("evaluate: prepare() was called with_eval_set=False")
    timing, label = EVALUATIONS[key]
    t0 = time.perf_counter()
    result, fid = _score(prep, key, prep.model if model is None else model, progress)
    if result is not None or fid is not None:
        prep.timings[timing] = time.perf_counter() - t0
    if result is not None:
        prep.summary[key] = result.to_dict()
        log(f"{label}: {result}")
    if fid is not None:
        prep.summary.setdefault("fidelity", {})[key] = fid.to_dict()
        log(f"{label}: {fid}")
    return result


def measure_jitter(prep: Prepared, key: str = "int8", *, progress: bool = True, log=print) -> Optional[Any]:
    """Rescore the evaluated INT8 model in settings.jitter_draws copies whose biases moved by one float32 ulp
    (`qdqtorch.eval.jitter`): in fake quant (`key` "int8"), or exported and run in ONNX Runtime ("int8_onnxruntime",
    after `evaluate` of the export). The spread of its fidelity (and COCO mAP) is how finely this run's figures
    resolve this model. Recorded as summary["jitter"][key]; returns the JitterResult, or None when no draws are asked
    for."""
    import tempfile
    from ..eval.jitter import jitter
    draws = prep.settings.jitter_draws
    if not draws:
        return None
    measured = {"fidelity": prep.summary.get("fidelity", {}).get(key, {}).get("map50_95"),
                "map50_95": prep.summary.get(key, {}).get("map50_95")}
    unperturbed = {k: v for k, v in measured.items() if v is not None}
    if not unperturbed:
        if prep.reference is not None and not prep.reference.num_boxes and not prep.labels_meaningful:
            prep.warn("jitter_draws: nothing to rescore: no labels to score mAP against and no float detections to "
                      "score fidelity against (--allow-empty)")
            return None
        raise UsageError(f"jitter_draws: evaluate(prep, {key!r}) first; the jitter rescores its figures")

    def score(candidate: nn.Module) -> Dict[str, float]:
        if key == "int8_onnxruntime":
            from ..export.runtime import OnnxRuntimeModule
            with tempfile.TemporaryDirectory() as tmp:
                candidate = OnnxRuntimeModule(write_onnx(prep, Path(tmp) / "draw.onnx", candidate))
                result, fid = _score(prep, key, candidate, progress=False)
        else:
            result, fid = _score(prep, key, candidate, progress=False)
        figures = {"fidelity": None if fid is None else fid.map50_95,
                   "map50_95": None if result is None else result.map50_95}
        return {k: v for k, v in figures.items() if k in unperturbed}

    t0 = time.perf_counter()
    found = jitter(prep.model, score, draws, unperturbed=unperturbed, progress=progress)
    prep.timings[f"{EVALUATIONS[key][0]}_jitter"] = time.perf_counter() - t0
    prep.summary.setdefault("jitter", {})[key] = found.to_dict()
    log(f"{EVALUATIONS[key][1]}: {found}")
    return found


def write_onnx(prep: Prepared, path: Path, model: Optional[nn.Module] = None) -> Path:
    """Export `model` (default: the prepared model) as the settings ask (opset, shape, Ultralytics metadata) to
    `path`; returns it."""
    from ..export import export_onnx
    from ..models import PredictionOnly, ultralytics_metadata
    loaded, s = prep.loaded, prep.settings
    if loaded is None or prep.sample is None:
        raise UsageError(f"--model {s.model}: the ONNX export needs a YOLO detector checkpoint and evaluation images")
    export_onnx(PredictionOnly(prep.model if model is None else model, loaded.layout), prep.sample[:1], path,
                opset=s.opset, dynamic_batch=s.onnx_shape == "dynamic-batch",
                metadata=ultralytics_metadata(loaded, prep.preprocess.hw,
                                              f"qdqtorch {__version__} Q/DQ INT8 export of {s.model}"))
    return path


def export(prep: Prepared, out: Path) -> Path:
    """Export the calibrated model as out/model.qdq.onnx and run the Q/DQ checker on it; returns the ONNX path."""
    from ..export import check_qdq, onnx_opset
    s = prep.settings
    t0 = time.perf_counter()
    onnx_path = write_onnx(prep, Path(out) / "model.qdq.onnx")
    prep.timings["export"] = time.perf_counter() - t0
    prep.summary["onnx"] = str(onnx_path)
    prep.summary["onnx_graph"] = {"shape": s.onnx_shape, "opset": onnx_opset(onnx_path)}
    # layers kept float on purpose are warnings, not errors; ONNX node names join module levels with / or .
    ignored = prep.quant_report.ignored if prep.quant_report is not None else []
    allow_float = [f"*{name.replace('.', '[./]')}/*" for name, _, _ in ignored]
    prep.summary["qdq_check"] = check_qdq(onnx_path, allow_float=allow_float).to_dict()
    return onnx_path


def report(prep: Prepared, out: Path) -> Dict[str, Any]:
    """Write out/summary.json and out/report.md from what the stages recorded; returns the summary."""
    summary = {"settings": prep.summary["settings"], "versions": versions(), **prep.summary,
               "timings": prep.timings}
    write_reports(summary, Path(out))
    return summary
