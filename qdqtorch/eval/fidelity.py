"""Fidelity: how much of the float model's own detections a quantized model keeps, scored with COCO's protocol.

Label-free: the float model's detections (conf > 0.25, NMS IoU 0.45, one class per box) are the ground truth, and
the candidate's detections (conf > 0.001, the same NMS) are scored against them (mAP50-95, mAP50). Float scored
against itself gives 1.0. It sees what INT8 changes where a 128-image COCO mAP is within its own noise, and it needs
no labels. Per output tensor of the network it also gives the SNR (dB) and cosine similarity against float.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import UsageError
from .eval_set import EvalSet
from .decode import nms_candidates
from .evaluate import Predictions, predict, suppress_predictions
from .scoring import Detections

REFERENCE_CONF = 0.25       # float detections above this are the pseudo ground truth
CANDIDATE_CONF = 0.001      # the candidate is scored on everything above this, as for COCO mAP
FIDELITY_IOU = 0.45         # NMS IoU of both


def _leaves(output: Any) -> List[torch.Tensor]:
    """The tensors of a (nested tuple/list/dict) model output, in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _leaves(item)]
    return []


def _first(output: Any) -> torch.Tensor:
    leaves = _leaves(output)
    if not leaves:
        raise TypeError(f"cannot find the prediction tensor in the model output ({type(output).__name__})")
    return leaves[0]


class FidelityTap:
    """A `select` for `predict` / `evaluate`: passes the prediction tensor on and, from the same inference, keeps
    the one-class-per-box NMS candidates fidelity scores, and every output tensor of the first `output_images`
    images (the float reference's) or their error against `reference_outputs` (a candidate's). So COCO mAP and
    fidelity cost one inference pass."""

    def __init__(self, layout: str, conf_thres: float, *, output_images: int = 0,
                 reference_outputs: Optional[List[torch.Tensor]] = None) -> None:
        self.layout, self.conf_thres = layout, conf_thres
        self.reference = reference_outputs
        self.limit = reference_outputs[0].shape[0] if reference_outputs else output_images
        self.images, self.kept_images = 0, 0
        self.batches: List[tuple] = []
        self.kept: List[List[torch.Tensor]] = []
        self.errors: List[OutputError] = []

    def __call__(self, output: Any) -> torch.Tensor:
        leaves = _leaves(output)
        take = min(self.limit - self.kept_images, leaves[0].shape[0] if leaves else 0)
        if take > 0:
            rows = [t[:take].detach().to("cpu", torch.float32) for t in leaves]
            if self.reference is None:
                self.kept.append(rows)
            else:
                self._compare(rows, self.kept_images)
            self.kept_images += take
        pred = _first(output)
        self.batches.append((self.images, nms_candidates(pred, self.layout, self.conf_thres, multi_label=False)))
        self.images += pred.shape[0]
        return pred

    def _compare(self, rows: List[torch.Tensor], start: int) -> None:
        ref = self.reference or []
        n = min(len(ref), len(rows))
        if not self.errors:
            self.errors = [OutputError(i, list(ref[i].shape[1:])) for i in range(n)]
        for i in range(n):
            r = ref[i][start:start + rows[i].shape[0]]
            if r.shape != rows[i].shape:
                raise UsageError(f"output {i} of the candidate has shape {tuple(rows[i].shape[1:])} per image but "
                                 f"the float model's has {tuple(r.shape[1:])}; fidelity compares the same network")
            self.errors[i].add(r.double(), rows[i].double())

    def predictions(self) -> Predictions:
        """The kept candidates as `Predictions` (for `suppress_predictions`)."""
        return Predictions(list(self.batches), {"inference": 0.0, "nms": 0.0})

    def outputs(self) -> List[torch.Tensor]:
        """The kept outputs, one tensor per output (images along dim 0)."""
        if not self.kept:
            return []
        return [torch.cat([batch[i] for batch in self.kept]) for i in range(len(self.kept[0]))]


@dataclass
class OutputError:
    """SNR and cosine similarity of one output tensor against float, accumulated in float64 over images."""

    index: int
    shape: List[int]                      # per image
    signal: float = 0.0                   # sum of float^2
    noise: float = 0.0                    # sum of (float - candidate)^2
    dot: float = 0.0                      # sum of float * candidate
    candidate: float = 0.0                # sum of candidate^2
    num_images: int = 0

    def add(self, ref: torch.Tensor, cand: torch.Tensor) -> None:
        """Accumulate one batch (float64 tensors of equal shape)."""
        self.signal += float((ref * ref).sum())
        self.noise += float(((ref - cand) ** 2).sum())
        self.dot += float((ref * cand).sum())
        self.candidate += float((cand * cand).sum())
        self.num_images += ref.shape[0]

    @property
    def snr_db(self) -> float:
        """10 log10(sum float^2 / sum (float - candidate)^2); inf when equal."""
        if self.noise == 0:
            return math.inf
        return 10 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf

    @property
    def cosine(self) -> float:
        """sum(float * candidate) / (|float| |candidate|) over all elements; 1 when equal."""
        denom = math.sqrt(self.signal * self.candidate)
        return self.dot / denom if denom > 0 else (1.0 if self.noise == 0 else 0.0)

    def to_dict(self) -> dict:
        """JSON-safe dict (an infinite SNR is written as null)."""
        snr = self.snr_db
        return {"output": self.index, "shape": self.shape, "snr_db": snr if math.isfinite(snr) else None,
                "cosine": self.cosine, "num_images": self.num_images}


@dataclass
class FidelityReference:
    """The float model's detections on an eval set as pseudo ground truth (and its outputs on the first images),
    computed once and reused for every candidate."""

    eval_set: EvalSet                     # the images with the pseudo ground truth; class i has category id i
    layout: str
    num_classes: int
    settings: Dict[str, Any]
    outputs: List[torch.Tensor] = field(default_factory=list, repr=False)   # float outputs of the first images
    seconds: float = 0.0                  # time the float pass took

    @property
    def num_boxes(self) -> int:
        """Pseudo ground-truth boxes (float detections above the reference confidence)."""
        return self.eval_set.num_annotations

    @property
    def images_with_boxes(self) -> int:
        """Images where the float model detects something."""
        return len({a["image_id"] for a in self.eval_set.gt["annotations"]})

    def describe(self) -> dict:
        """JSON-able identity (settings, counts) for reports and fingerprints."""
        return {**self.settings, "num_images": len(self.eval_set), "num_boxes": self.num_boxes,
                "images_with_boxes": self.images_with_boxes, "num_classes": self.num_classes}


@dataclass
class FidelityResult:
    """mAP50-95 / mAP50 of a candidate against the float model's detections, and its per-output error."""

    map50_95: float
    map50: float
    num_images: int
    num_reference_boxes: int
    num_detections: int
    outputs: List[OutputError] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    detections: Optional[Detections] = field(default=None, repr=False)

    def __str__(self) -> str:
        text = (f"fidelity mAP50-95 {self.map50_95:.4f}  mAP50 {self.map50:.4f}  (vs {self.num_reference_boxes} "
                f"float detections on {self.num_images} images)")
        return text + (f"; {outputs_line(self.outputs)}" if self.outputs else "")

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        return {"map50_95": self.map50_95, "map50": self.map50, "num_images": self.num_images,
                "num_reference_boxes": self.num_reference_boxes, "num_detections": self.num_detections,
                "outputs": [o.to_dict() for o in self.outputs], "timings": self.timings}


def outputs_line(outputs: Sequence[OutputError]) -> str:
    """One line: SNR and cosine of every output, e.g. 'output 0 (25200x85): SNR 31.2 dB, cos 0.99963'."""
    parts = []
    for o in outputs:
        snr = o.snr_db
        parts.append(f"output {o.index} ({'x'.join(map(str, o.shape))}): SNR "
                     f"{f'{snr:.1f} dB' if math.isfinite(snr) else 'inf'}, cos {o.cosine:.5f}")
    return "; ".join(parts)


def _pseudo_gt(dets: Detections, eval_set: EvalSet, names: Sequence[str]) -> dict:
    """A COCO instances dict whose annotations are `dets` (original pixels), category id = class index."""
    images = [{"id": int(i), "file_name": p.name, "height": int(info.orig_hw[0]), "width": int(info.orig_hw[1])}
              for i, p, info in zip(eval_set.image_ids, eval_set.paths, eval_set.infos)]
    annotations = [{"id": k + 1, "image_id": int(i), "category_id": int(c), "bbox": [float(v) for v in b],
                    "area": float(b[2] * b[3]), "iscrowd": 0}
                   for k, (i, c, b) in enumerate(zip(dets.image_id, dets.category_id, dets.bbox))]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": str(n)} for c, n in enumerate(names)]}


def reference_tap(layout: str, output_images: int = 8) -> FidelityTap:
    """The `select` that, passed to `evaluate`/`predict` on the float model, collects what `reference_from` needs."""
    return FidelityTap(layout, REFERENCE_CONF, output_images=output_images)


def reference_from(tap: FidelityTap, eval_set: EvalSet, *, iou_thres: float = FIDELITY_IOU, max_det: int = 300,
                   names: Optional[Sequence[str]] = None, allow_empty: bool = False,
                   seconds: float = 0.0) -> FidelityReference:
    """The FidelityReference from a float pass through `reference_tap` (its detections become the ground truth).

    No float detection at all raises a ValueError (wrong model, images or preprocessing) unless `allow_empty`;
    images without any are fine (they only count a candidate's false positives).
    """
    if not tap.batches:
        raise UsageError("reference_from: the tap saw no batch; pass it as select= to the float model's pass")
    nc = tap.batches[0][1].nc
    if names is not None and len(names) != nc:
        raise UsageError(f"{len(names)} class names given but the model predicts {nc} classes")
    names = [str(n) for n in names] if names is not None else [str(c) for c in range(nc)]
    view = dataclasses.replace(eval_set, names=names, category_ids=list(range(nc)), _scorers={}, labelled=True)
    dets, _ = suppress_predictions(tap.predictions(), view, iou_thres=iou_thres, max_det=max_det)
    if not len(dets) and not allow_empty:
        raise UsageError(f"the float model detects nothing (no box above conf {tap.conf_thres}) on any of the "
                         f"{len(eval_set)} evaluation images (e.g. {eval_set.paths[0]}): wrong model, wrong images or "
                         f"wrong preprocessing (colour order, mean/std)? Every accuracy figure would be meaningless; "
                         f"pass --allow-empty (allow_empty=True) to go on anyway")
    view.gt = _pseudo_gt(dets, view, names)
    settings = {"reference_conf": tap.conf_thres, "candidate_conf": CANDIDATE_CONF, "iou_thres": iou_thres,
                "max_det": max_det, "imgsz": list(eval_set.preprocess.hw), "output_images": tap.kept_images}
    return FidelityReference(view, tap.layout, nc, settings, tap.outputs(), seconds=seconds)


def float_reference(model: nn.Module, eval_set: EvalSet, *, layout: str, iou_thres: float = FIDELITY_IOU,
                    max_det: int = 300, batch_size: int = 16, names: Optional[Sequence[str]] = None,
                    output_images: int = 8, allow_empty: bool = False, progress: bool = False) -> FidelityReference:
    """Run the float model once over `eval_set` and keep its detections (conf > 0.25) as pseudo ground truth.

    `output_images`: how many images' raw outputs to keep for the per-output SNR/cosine (memory: a YOLOv5n output
    at 640 is about 17 MB per image). To get the float COCO mAP from the same pass, pass `reference_tap(...)` as
    `select=` to `evaluate` and call `reference_from`.
    """
    tap = reference_tap(layout, output_images)
    t0 = time.perf_counter()
    predict(model, eval_set, layout=layout, conf_thres=REFERENCE_CONF, batch_size=batch_size, select=tap,
            multi_label=False, progress=progress)
    return reference_from(tap, eval_set, iou_thres=iou_thres, max_det=max_det, names=names, allow_empty=allow_empty,
                          seconds=time.perf_counter() - t0)


def candidate_tap(reference: FidelityReference, outputs: bool = True) -> FidelityTap:
    """The `select` that, passed to `evaluate`/`predict` on a candidate, collects what `score_tap` needs."""
    return FidelityTap(reference.layout, CANDIDATE_CONF, reference_outputs=reference.outputs if outputs else None)


def fidelity_predictions(candidate: nn.Module, reference: FidelityReference, *, batch_size: int = 16,
                         progress: bool = False) -> Predictions:
    """The candidate's one-class-per-box NMS candidates over the reference images (the inference half)."""
    return predict(candidate, reference.eval_set, layout=reference.layout, conf_thres=CANDIDATE_CONF,
                   batch_size=batch_size, multi_label=False, progress=progress)


def score_fidelity(preds: Predictions, reference: FidelityReference, *, scorer: str = "fast") -> tuple:
    """Scoring half of `fidelity`: (ScoreResult vs the pseudo ground truth, the candidate's detections)."""
    if preds.batches and preds.batches[0][1].nc != reference.num_classes:
        raise UsageError(f"the candidate predicts {preds.batches[0][1].nc} classes, the float reference "
                         f"{reference.num_classes}: not the same network")
    dets, _ = suppress_predictions(preds, reference.eval_set, iou_thres=reference.settings["iou_thres"],
                                   max_det=reference.settings["max_det"])
    return reference.eval_set.scorer(scorer).score(dets), dets


def score_tap(tap: FidelityTap, reference: FidelityReference, *, scorer: str = "fast",
              timings: Optional[Dict[str, float]] = None) -> FidelityResult:
    """The FidelityResult of a candidate's pass through `candidate_tap(reference)`."""
    t0 = time.perf_counter()
    score, dets = score_fidelity(tap.predictions(), reference, scorer=scorer)
    timings = {**(timings or {}), "scoring": time.perf_counter() - t0}
    return FidelityResult(score.map50_95, score.map50, len(reference.eval_set), reference.num_boxes, len(dets),
                          list(tap.errors), timings, dets)


def fidelity(candidate: nn.Module, reference: Union[FidelityReference, nn.Module], eval_set: Optional[EvalSet] = None,
             *, layout: Optional[str] = None, batch_size: int = 16, scorer: str = "fast", outputs: bool = True,
             progress: bool = False) -> FidelityResult:
    """COCO mAP50-95 / mAP50 of `candidate` (a torch module, or `OnnxRuntimeModule`) against the float model's
    detections, plus per-output SNR/cosine on the reference's first images.

    `reference` is a FidelityReference from `float_reference` (compute it once, reuse it for every candidate), or
    the float model itself together with `eval_set` and `layout`. To get the candidate's COCO mAP from the same
    pass, pass `candidate_tap(reference)` as `select=` to `evaluate` and call `score_tap`.
    """
    if not isinstance(reference, FidelityReference):
        if eval_set is None or layout is None:
            raise UsageError("fidelity(candidate, float_model, eval_set, layout=...): a float model as reference "
                             "needs the eval set and the layout")
        reference = float_reference(reference, eval_set, layout=layout, batch_size=batch_size, progress=progress)
    tap = candidate_tap(reference, outputs)
    t0 = time.perf_counter()
    predict(candidate, reference.eval_set, layout=reference.layout, conf_thres=CANDIDATE_CONF, batch_size=batch_size,
            select=tap, multi_label=False, progress=progress)
    return score_tap(tap, reference, scorer=scorer, timings={"inference": time.perf_counter() - t0})


def output_errors(reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor]) -> List[OutputError]:
    """SNR/cosine of each candidate output against the float one (tensors with images along dim 0)."""
    errors = []
    for i, (r, c) in enumerate(zip(reference, candidate)):
        err = OutputError(i, list(r.shape[1:]))
        err.add(r.double(), c.double())
        errors.append(err)
    return errors


__all__ = ["CANDIDATE_CONF", "FIDELITY_IOU", "REFERENCE_CONF", "FidelityReference", "FidelityResult", "FidelityTap",
           "OutputError", "candidate_tap", "fidelity", "fidelity_predictions", "float_reference", "output_errors",
           "outputs_line", "reference_from", "reference_tap", "score_fidelity", "score_tap"]
