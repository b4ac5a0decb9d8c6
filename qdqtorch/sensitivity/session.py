"""Everything a command-line sweep needs, built once from PTQ settings: the calibrated quantized model, the metric
on cached evaluation images, proxy batches, and a factory for verifying a recommended ignore list.

The model, data and calibration options are those of `scripts/ptq.py` (PTQSettings), so the recommended config
file is a PTQ config that reproduces the sweep's model. `model`, `calib_data` and the metric may also be
'package.module:function' for non-YOLO models: a float nn.Module factory, an iterable of input batches, and a
`model -> float` metric. Loading a .pt checkpoint unpickles it (runs code from it): only load files you trust.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import torch
from torch import nn

from ..pipeline import PTQSettings
from ..quantize import QuantConfig, calibrate, load_calibration, quantize_model, save_calibration
from . import distributed as D
from .coco_metric import COCO_KEYS, CocoMetric
from .fingerprint import json_fingerprint
from .metric import Metric, import_callable
from .units import Unit
from ..errors import UsageError

CALIBRATION_KEYS = ("model", "repo", "fold_bn", "calib_data", "calib_split", "num_calib", "batch", "imgsz",
                    "calib_method", "percentile", "weight_method", "ignore", "rules", "quant", "preprocess")


def _is_callable_spec(spec: Optional[str]) -> bool:
    return bool(spec) and ":" in spec and not Path(spec).exists() and not spec.endswith((".pt", ".yaml", ".yml"))


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


class _Float:
    """A float model and how to rebuild it (for the budget verification)."""

    def __init__(self, settings: PTQSettings) -> None:
        self.settings = settings
        self.layout: Optional[str] = None
        self.names: Optional[List[str]] = None
        self.stride = 32
        self.default_ignore: List[str] = []
        self.source = settings.model

    def load(self) -> nn.Module:
        s = self.settings
        if _is_callable_spec(s.model):
            model = import_callable(s.model, "--model")()
            if not isinstance(model, nn.Module):
                raise TypeError(f"--model {s.model}: returned {type(model).__name__}, expected a float nn.Module")
            return model.float().to(s.device).eval()
        from ..models import load_model
        loaded = load_model(s.model, repo=s.repo, device=s.device, fuse_bn=s.fold_bn)
        self.layout, self.names, self.stride = loaded.layout, loaded.names, loaded.stride
        self.default_ignore, self.source = list(loaded.default_ignore), loaded.source
        return loaded.model


def quant_config_for(settings: PTQSettings, default_ignore: List[str], extra: List[str] = ()) -> QuantConfig:
    """The QuantConfig a PTQ run builds: the `quant` section, its ignore list plus the model's default float layers
    and `settings.ignore` (and `extra`)."""
    data = dict(settings.quant)
    ignore = data.pop("ignore", [])
    ignore = [ignore] if isinstance(ignore, str) else list(ignore)
    config = QuantConfig.from_dict(data, where="quant section")
    config.ignore = list(dict.fromkeys([*default_ignore, *ignore, *settings.ignore, *extra]))
    return QuantConfig.from_dict(config.to_dict(), where="quant section")


def _quantize(model: nn.Module, config: QuantConfig, settings: PTQSettings, sample: Optional[torch.Tensor]) -> None:
    quantize_model(model, config, rules=settings.rules, example_input=sample)


def _calib_batches(settings: PTQSettings, preprocess: Any):
    if _is_callable_spec(settings.calib_data):  # batches until num_calib samples
        batches, seen = [], 0
        for batch in import_callable(settings.calib_data, "--calib-data")():
            batches.append(batch)
            seen += _batch_size(batch)
            if seen >= settings.num_calib:
                break
        if not batches:
            raise UsageError(f"--calib-data {settings.calib_data}: yielded no batch")
        return batches
    from ..data import calibration_loader
    source = settings.calib_data or settings.data
    return calibration_loader(source, preprocess, batch_size=settings.batch, num_images=settings.num_calib,
                              workers=settings.workers, split=settings.calib_split)


def _eval_set(settings: PTQSettings, preprocess: Any, names: Optional[List[str]], progress: bool):
    """The evaluation images of a PTQ run, decoded and letterboxed once."""
    from ..eval import EvalSet
    data = Path(settings.data)
    if not data.exists():
        raise FileNotFoundError(f"dataset {settings.data!r} not found: pass --data with a local dataset yaml or an "
                                "image folder with YOLO labels; nothing is downloaded")
    if data.suffix in (".yaml", ".yml"):
        return EvalSet.from_yaml(data, settings.eval_split, preprocess, num_images=settings.num_eval,
                                 workers=settings.workers, progress=progress)
    return EvalSet.from_yolo(data, preprocess, names=names, num_images=settings.num_eval, workers=settings.workers,
                             progress=progress)


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1


def build_session(settings: PTQSettings, out_dir: Path, *, metric: str = "map50_95", proxy_images: int = 8,
                  calibration: Optional[str] = None, calib_distributed: bool = False,
                  higher_is_better: bool = True, progress: bool = True) -> Session:
    """Load, quantize and calibrate (or reuse the calibration saved in `out_dir` for the same settings), and
    prepare the metric (COCO on an EvalSet cached once, or 'module:function')."""
    rank, world = D.rank_and_world()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = _Float(settings)
    model = source.load()
    preprocess = None
    eval_set = None
    if not _is_callable_spec(settings.model) or metric in COCO_KEYS:
        from ..data import Preprocess
        preprocess = Preprocess.from_dict({**settings.preprocess, "imgsz": settings.imgsz, "stride": source.stride})
    if metric in COCO_KEYS:
        if source.layout is None:
            raise UsageError(f"--metric {metric} needs a YOLO detector checkpoint; for a '--model module:function' "
                             "model pass --metric module:function")
        eval_set = _eval_set(settings, preprocess, source.names, progress and rank == 0)
        the_metric: Metric = CocoMetric(eval_set, source.layout, metric, scorer=settings.scorer,
                                        batch_size=settings.batch, conf_thres=settings.conf_thres,
                                        iou_thres=settings.iou_thres, max_det=settings.max_det, data=settings.data)
    else:
        fn = import_callable(metric, "--metric")
        the_metric = Metric(fn, metric, higher_is_better, {"metric": metric, "summary": f"custom metric {metric}"})
    sample = next(eval_set.batches(1, settings.device))[1] if eval_set is not None else None
    config = quant_config_for(settings, source.default_ignore)
    _quantize(model, config, settings, sample)

    key = json_fingerprint({k: settings.to_dict()[k] for k in CALIBRATION_KEYS})[:16]
    cal_file = Path(calibration) if calibration else out_dir / f"calibration-{key}.json"  # JSON: written atomically
    calib_batches = None
    if D.broadcast_object(cal_file.exists()):  # rank 0 decides, so all ranks take the same branch
        load_calibration(model, cal_file)
        how = f"loaded {cal_file}"
    elif calibration:
        raise FileNotFoundError(f"--calibration {calibration}: no such file")
    else:
        calib_batches = _calib_batches(settings, preprocess)
        kwargs = dict(method=settings.calib_method, weight_method=settings.weight_method, device=settings.device,
                      percentile=settings.percentile)
        if world > 1 and calib_distributed:
            D.distributed_calibrate(model, calib_batches, len(calib_batches), progress=progress, **kwargs)
            how = f"distributed over {world} ranks"
        else:
            if rank == 0:
                calibrate(model, calib_batches, progress=progress, **kwargs)
            how = "calibrated" + (" on rank 0" if world > 1 else "")
        if world > 1:
            D.broadcast_amax(model, 0)
        if rank == 0:
            save_calibration(model, cal_file)
    if world > 1:
        D.broadcast_object(None)  # everyone waits until rank 0 saved the calibration file

    proxy_batches: List[Any] = []
    if proxy_images > 0:
        if eval_set is not None:
            size = min(settings.batch, proxy_images)
            for _, x in eval_set.batches(size, settings.device):
                proxy_batches.append(x[:proxy_images - sum(b.shape[0] for b in proxy_batches)])
                if sum(b.shape[0] for b in proxy_batches) >= proxy_images:
                    break
        else:
            batches = calib_batches if calib_batches is not None else _calib_batches(settings, preprocess)
            seen = 0
            for batch in batches:
                proxy_batches.append(batch)
                seen += _batch_size(batch)
                if seen >= proxy_images:
                    break

    def verify_factory(units: List[Unit]) -> nn.Module:
        fresh = source.load()
        regexes = list(dict.fromkeys(r for u in units for r in u.ignore_regexes()))
        _quantize(fresh, quant_config_for(settings, source.default_ignore, regexes), settings, sample)
        load_calibration(fresh, cal_file, strict=False)
        return fresh

    ptq = settings.to_dict()
    ptq["out"] = str(out_dir / "ptq")
    return Session(model=model, metric=the_metric, proxy_batches=proxy_batches,
                   base_config={"kind": "ptq", "data": ptq},
                   model_info={"source": source.source, "spec": settings.model, "layout": source.layout},
                   extra_settings={"ptq": settings.to_dict(), "calibration": {
                       "method": settings.calib_method, "weight_method": settings.weight_method,
                       "num_calib": settings.num_calib, "file": cal_file.name},
                       "proxy_images": proxy_images},
                   verify_factory=verify_factory, calibration_file=cal_file, calibration_note=how)
