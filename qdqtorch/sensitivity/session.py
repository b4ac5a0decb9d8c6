"""Everything a command-line sweep needs, built once from PTQ settings: the calibrated quantized model, the metric
on cached evaluation images, proxy batches, and a factory for verifying a recommended ignore list.

The model, data and calibration options are those of `scripts/ptq.py` (PTQSettings), so the recommended config
file is a PTQ config that reproduces the sweep's model. `model`, `calib_data` and the metric may also be
'package.module:function' for non-YOLO models: a float nn.Module factory, an iterable of input batches, and a
`model -> float` metric. Loading a .pt checkpoint unpickles it (runs code from it): only load files you trust.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

from torch import nn

from ..errors import UsageError
from ..ptq import (PTQSettings, Prepared, calibrate, calibration_data, calibration_kwargs, load_float, prepare,
                   quantize, samples_in)
from ..ptq.checks import check_settings
from ..quantize import load_calibration, save_calibration
from ..user_code import import_callable, is_callable_spec
from . import distributed as D
from .coco_metric import COCO_KEYS, CocoMetric
from .fidelity_metric import FIDELITY_METRICS, FidelityMetric, sweep_metric_name
from .fingerprint import json_fingerprint
from .lock import sweep_lock
from .metric import Metric
from .runner import SweepSettings, journal_name, run_sensitivity
from .units import Unit

CALIBRATION_KEYS = ("model", "repo", "fold_bn", "calib_data", "calib_split", "num_calib", "batch", "imgsz",
                    "calib_method", "percentile", "grid", "weight_method", "ignore", "rules", "quant", "preprocess")


@dataclass
class SensitivitySettings:
    """A whole command-line sweep: the PTQ settings of the swept model, how to sweep, and the session's options
    (`out` is the sweep's folder; `calibration` a calibration file to load instead of calibrating)."""

    ptq: PTQSettings
    sweep: SweepSettings = field(default_factory=SweepSettings)
    out: str = "runs/sensitivity"
    metric: str = "map50_95"
    higher_is_better: bool = True
    proxy_images: int = 8
    calibration: Optional[str] = None
    calib_distributed: bool = False
    fresh: bool = False
    progress: bool = True


@dataclass
class Session:
    """A calibrated quantized model with its metric and the data for the proxy pass."""

    model: nn.Module
    metric: Metric
    proxy_batches: List[Any]
    base_config: dict
    model_info: dict
    extra_settings: dict
    verify_factory: Callable[[List[Unit]], nn.Module]
    calibration_file: Path
    calibration_note: str

    def run(self, out_dir: Path, sweep: SweepSettings, *, fresh: bool = False, progress: bool = True):
        """`run_sensitivity` on this session's model, metric, proxy data and recommended-config base."""
        return run_sensitivity(self.model, self.metric, out_dir, sweep, proxy_data=self.proxy_batches or None,
                               base_config=self.base_config, model_info=self.model_info,
                               extra_settings=self.extra_settings, verify_factory=self.verify_factory, fresh=fresh,
                               progress=progress)


def _calibrate_or_load(prep: Prepared, cal_file: Path, calibration: Optional[str], calib_distributed: bool,
                       progress: bool):
    """Load `cal_file` when it exists, else calibrate (rank 0, or distributed) and save it; returns (how, batches)."""
    rank, world = D.rank_and_world()
    calib_batches = None
    if D.broadcast_object(cal_file.exists()):  # rank 0 decides, so all ranks take the same branch
        load_calibration(prep.model, cal_file)
        how = f"loaded {cal_file}"
    elif calibration:
        raise FileNotFoundError(f"--calibration {calibration}: no such file")
    else:
        calib_batches = calibration_data(prep.settings, prep.preprocess)
        if world > 1 and calib_distributed:
            D.distributed_calibrate(prep.model, calib_batches, len(calib_batches), progress=progress,
                                    **calibration_kwargs(prep.settings))
            how = f"distributed over {world} ranks"
        else:
            if rank == 0:
                calibrate(prep, calib_batches, progress=progress)
            how = "calibrated" + (" on rank 0" if world > 1 else "")
        if world > 1:
            D.broadcast_amax(prep.model, 0)
        if rank == 0:
            save_calibration(prep.model, cal_file)
    if world > 1:
        D.broadcast_object(None)  # everyone waits until rank 0 saved the calibration file
    return how, calib_batches


def _proxy_batches(prep: Prepared, proxy_images: int, calib_batches) -> List[Any]:
    """`proxy_images` inputs for the proxy pass: evaluation images, else calibration batches."""
    settings = prep.settings
    batches: List[Any] = []
    if proxy_images <= 0:
        return batches
    if prep.eval_set is not None:
        size = min(settings.batch, proxy_images)
        for _, x in prep.eval_set.batches(size, settings.device):
            batches.append(x[:proxy_images - sum(b.shape[0] for b in batches)])
            if sum(b.shape[0] for b in batches) >= proxy_images:
                break
        return batches
    seen = 0
    for batch in calib_batches if calib_batches is not None else calibration_data(settings, prep.preprocess):
        batches.append(batch)
        seen += samples_in(batch)
        if seen >= proxy_images:
            break
    return batches


def build_session(settings: PTQSettings, out_dir: Path, *, metric: str = "map50_95", proxy_images: int = 8,
                  calibration: Optional[str] = None, calib_distributed: bool = False,
                  higher_is_better: bool = True, progress: bool = True) -> Session:
    """The `prepare` stage, then calibrate (or reuse the calibration saved in `out_dir` for the same settings), and
    the metric: COCO mAP on the prepared, cached EvalSet; fidelity against the float model's own detections (chosen
    instead of COCO mAP when the images have no labels or the model's classes are not the dataset's); or
    'module:function'."""
    rank, _ = D.rank_and_world()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    requested = metric
    detector = metric in COCO_KEYS or metric in FIDELITY_METRICS
    if detector and is_callable_spec(settings.model):
        raise UsageError(f"--metric {metric} needs a YOLO detector checkpoint; for a '--model module:function' "
                         "model pass --metric module:function")
    prep = prepare(settings, with_eval_set=detector, reference_outputs=0, progress=progress and rank == 0)
    if detector:
        metric = sweep_metric_name(metric, labelled=prep.eval_set.labelled, mismatch=prep.mismatch)
    if metric in COCO_KEYS:
        the_metric: Metric = CocoMetric(prep.eval_set, str(prep.layout), metric, scorer=settings.scorer,
                                        batch_size=settings.batch, conf_thres=settings.conf_thres,
                                        iou_thres=settings.iou_thres, max_det=settings.max_det, data=settings.data)
    elif metric in FIDELITY_METRICS:
        if prep.reference is None or not prep.reference.num_boxes:
            raise UsageError(f"--metric {metric}: the float model detects nothing on {settings.data}, so there is "
                             "nothing to agree with; check the model, the images and the preprocessing")
        the_metric = FidelityMetric(prep.reference, FIDELITY_METRICS[metric], batch_size=settings.batch,
                                    data=settings.data)
    else:
        fn = import_callable(metric, "--metric")
        the_metric = Metric(fn, metric, higher_is_better, {"metric": metric, "summary": f"custom metric {metric}"})

    identity = {k: settings.to_dict()[k] for k in CALIBRATION_KEYS}
    if identity["grid"] == "symmetric":
        del identity["grid"]  # the same file name as before shifted grids existed
    key = json_fingerprint(identity)[:16]
    cal_file = Path(calibration) if calibration else out_dir / f"calibration-{key}.json"  # JSON: written atomically
    how, calib_batches = _calibrate_or_load(prep, cal_file, calibration, calib_distributed, progress)
    proxy_batches = _proxy_batches(prep, proxy_images, calib_batches)

    def verify_factory(units: List[Unit]) -> nn.Module:
        fresh, _ = load_float(settings)
        regexes = list(dict.fromkeys(r for u in units for r in u.ignore_regexes()))
        quantize(fresh, settings, prep.default_ignore, prep.sample, regexes)
        load_calibration(fresh, cal_file, strict=False)
        return fresh

    ptq = settings.to_dict()
    ptq["out"] = str(out_dir / "ptq")
    return Session(model=prep.model, metric=the_metric, proxy_batches=proxy_batches,
                   base_config={"kind": "ptq", "data": ptq},
                   model_info={"source": prep.loaded.source if prep.loaded is not None else settings.model,
                               "spec": settings.model, "layout": prep.layout},
                   extra_settings={"ptq": settings.to_dict(), "calibration": {
                       "method": settings.calib_method, "grid": settings.grid, "weight_method": settings.weight_method,
                       "num_calib": settings.num_calib, "file": cal_file.name},
                       "proxy_images": proxy_images, "metric_requested": requested},
                   verify_factory=verify_factory, calibration_file=cal_file, calibration_note=how)


def run_session(settings: SensitivitySettings) -> Optional[dict]:
    """A whole command-line sweep: build the session (calibrating or loading), then run the sweep on it."""
    rank, world = D.rank_and_world()
    out = Path(settings.out)
    check_settings(dataclasses.replace(settings.ptq, out=str(out), export=False, ort_eval=False))
    # before the calibration: a second sweep on this --out is refused in a second, not after minutes
    with sweep_lock(out, journal_name(settings.sweep.shard, rank, world)):
        session = build_session(settings.ptq, out, metric=settings.metric, proxy_images=settings.proxy_images,
                                calibration=settings.calibration, calib_distributed=settings.calib_distributed,
                                higher_is_better=settings.higher_is_better, progress=settings.progress)
        if rank == 0 and settings.progress:
            print(f"calibration: {session.calibration_note}", file=sys.stderr)
        return session.run(out, settings.sweep, fresh=settings.fresh, progress=settings.progress)
