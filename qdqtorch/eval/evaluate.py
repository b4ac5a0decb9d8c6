"""`evaluate`: COCO bbox mAP of a YOLO detector on an EvalSet (inference, NMS, scale-back, scoring), with timings."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..models.outputs import prediction_tensor
from .decode import Candidates, nms_candidates, suppress
from .eval_set import EvalSet
from .scoring import Detections
from ..errors import UsageError


@dataclass
class EvalResult:
    """mAP50-95 / mAP50 (COCOeval stats[0], stats[1]), optional per-class AP50-95 by name, counts and timings."""

    map50_95: float
    map50: float
    num_images: int
    num_detections: int
    timings: Dict[str, float]                       # seconds: inference, nms, scoring, total
    per_class: Optional[Dict[str, float]] = None    # class name → AP50-95 (NaN: no ground truth of that class)
    per_class_ap50: Optional[Dict[str, float]] = None
    settings: Dict[str, Any] = field(default_factory=dict)
    detections: Optional[Detections] = field(default=None, repr=False)   # what was scored (original pixels)

    def __str__(self) -> str:
        t = self.timings
        return (f"mAP50-95 {self.map50_95:.4f}  mAP50 {self.map50:.4f}  ({self.num_images} images, "
                f"{self.num_detections} detections; inference {t['inference']:.2f}s, nms {t['nms']:.2f}s, "
                f"scoring {t['scoring']:.2f}s)")

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        return {k: getattr(self, k) for k in ("map50_95", "map50", "num_images", "num_detections", "timings",
                                              "per_class", "per_class_ap50", "settings")}


def _model_device_dtype(model: nn.Module) -> Tuple[torch.device, Optional[torch.dtype]]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    for b in model.buffers():
        if b.is_floating_point():
            return b.device, b.dtype
    return torch.device("cpu"), None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Predictions:
    """The raw half of a detection run: NMS candidates per batch (on the model's device) + inference timings.

    Kept apart from the suppression so a caller (the sensitivity sweep) can suppress and score one run on a
    worker thread while the next run's inference proceeds.
    """

    batches: List[Tuple[int, Candidates]]   # (index of the batch's first image, its candidates)
    timings: Dict[str, float]


def predict(model: nn.Module, eval_set: EvalSet, *, layout: str, conf_thres: float = 0.001, batch_size: int = 16,
            device: Union[str, torch.device, None] = None, select: Optional[Callable[[Any], torch.Tensor]] = None,
            multi_label: bool = True, progress: bool = True) -> Predictions:
    """Run the model over the eval set (eval mode, no_grad) and keep each batch's above-threshold candidates."""
    model_device, model_dtype = _model_device_dtype(model)
    device = torch.device(device) if device is not None else model_device
    mismatch = device.type != model_device.type or (device.index is not None and model_device.index is not None
                                                     and device.index != model_device.index)
    if mismatch and any(True for _ in model.parameters()):
        raise UsageError(f"the model is on {model_device} but device={device}; move the model first (model.to())")
    select = select or prediction_tensor
    out: List[Tuple[int, Candidates]] = []
    t_inf, t_cand = 0.0, 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batches = eval_set.batches(batch_size, device, model_dtype)
            for start, x in tqdm(batches, total=-(-len(eval_set) // batch_size), desc="evaluating",
                                 disable=not progress, leave=False):
                _sync(device)
                t0 = time.perf_counter()
                pred = select(model(x))
                _sync(device)
                t1 = time.perf_counter()
                out.append((start, nms_candidates(pred, layout, conf_thres, multi_label)))
                _sync(device)
                t_inf, t_cand = t_inf + t1 - t0, t_cand + time.perf_counter() - t1
    finally:
        model.train(was_training)
    return Predictions(out, {"inference": t_inf, "nms": t_cand})


def suppress_predictions(predictions: Predictions, eval_set: EvalSet, *, iou_thres: float = 0.65,
                         max_det: int = 300, agnostic: bool = False) -> Tuple[Detections, Dict[str, float]]:
    """NMS on every batch of `predictions` → detections in original-image pixels (COCO ids) + timings."""
    lut = torch.tensor(eval_set.category_ids, dtype=torch.int64)
    parts = []
    t0 = time.perf_counter()
    for start, candidates in predictions.batches:
        dets = [d.cpu() for d in suppress(candidates, iou_thres, max_det, agnostic)]
        for k, det in enumerate(dets):
            parts.append(_to_coco(det, start + k, eval_set, lut))
    timings = dict(predictions.timings)
    timings["nms"] += time.perf_counter() - t0
    return Detections.concat(parts), timings


def detect(model: nn.Module, eval_set: EvalSet, *, layout: str, conf_thres: float = 0.001, iou_thres: float = 0.65,
           max_det: int = 300, batch_size: int = 16, device: Union[str, torch.device, None] = None,
           select: Optional[Callable[[Any], torch.Tensor]] = None, multi_label: bool = True,
           agnostic: bool = False, progress: bool = True) -> Tuple[Detections, Dict[str, float]]:
    """Run the model over the eval set and return detections in original-image pixels (COCO ids) + timings."""
    if not 0 <= iou_thres <= 1:   # before inference, not after it
        raise UsageError(f"iou_thres must be in [0, 1], got {iou_thres}")
    predictions = predict(model, eval_set, layout=layout, conf_thres=conf_thres, batch_size=batch_size,
                          device=device, select=select, multi_label=multi_label, progress=progress)
    return suppress_predictions(predictions, eval_set, iou_thres=iou_thres, max_det=max_det, agnostic=agnostic)


def _to_coco(det: torch.Tensor, index: int, eval_set: EvalSet, lut: torch.Tensor) -> Detections:
    """(n, 6) network-space detections of image `index` → Detections in original pixels with category ids."""
    cls = det[:, 5].long()
    if cls.numel() and int(cls.max()) >= len(lut):
        raise UsageError(f"the model predicts class {int(cls.max())} but the evaluation set has only {len(lut)} "
                         f"categories ({', '.join(eval_set.names[:3])}, ...); is it the right dataset/model?")
    xyxy = eval_set.infos[index].to_original(det[:, :4].double())
    xywh = torch.cat((xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]), dim=1)
    n = det.shape[0]
    return Detections(np.full(n, eval_set.image_ids[index]), lut[cls].numpy(), xywh.numpy(),
                      det[:, 4].double().numpy())


def evaluate(model: nn.Module, eval_set: EvalSet, *, layout: str, conf_thres: float = 0.001, iou_thres: float = 0.65,
             max_det: int = 300, batch_size: int = 16, device: Union[str, torch.device, None] = None,
             scorer: str = "pycocotools", per_class: bool = False, progress: bool = True,
             select: Optional[Callable[[Any], torch.Tensor]] = None, multi_label: bool = True,
             agnostic: bool = False) -> EvalResult:
    """COCO bbox mAP of `model` on `eval_set`.

    `layout` is "yolov5" (B, N, 5+nc), "ultralytics" (B, 4+nc, N) or "auto"; the prediction tensor is the output's
    first rank-3 tensor (`models.prediction_tensor`, as export picks it) unless `select` picks it. The model runs on
    its own device in eval mode (restored afterwards), under no_grad. `scorer` is "pycocotools" (reference) or "fast"
    (same numbers).
    """
    t_start = time.perf_counter()
    scorer_obj = eval_set.scorer(scorer)          # fail early on a missing pycocotools, before inference
    dets, timings = detect(model, eval_set, layout=layout, conf_thres=conf_thres, iou_thres=iou_thres,
                           max_det=max_det, batch_size=batch_size, device=device, select=select,
                           multi_label=multi_label, agnostic=agnostic, progress=progress)
    t0 = time.perf_counter()
    score = scorer_obj.score(dets, per_class=per_class)
    timings["scoring"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    result = EvalResult(score.map50_95, score.map50, len(eval_set), len(dets), timings,
                        settings=dict(layout=layout, conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det,
                                      imgsz=list(eval_set.preprocess.hw), scorer=scorer, multi_label=multi_label,
                                      agnostic=agnostic),
                        detections=dets)
    if per_class:
        name_of = dict(zip(eval_set.category_ids, eval_set.names))
        result.per_class = {name_of[c]: ap for c, ap in score.per_class_ap50_95.items() if c in name_of}
        result.per_class_ap50 = {name_of[c]: ap for c, ap in score.per_class_ap50.items() if c in name_of}
    return result
