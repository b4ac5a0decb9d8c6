"""Decoding raw YOLO head outputs (YOLOv5 and Ultralytics layouts) and class-aware, multi-label NMS over a batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torchvision

from ..errors import UsageError
from ..models.outputs import LAYOUTS


def infer_layout(pred: torch.Tensor) -> str:
    """Guess the layout from the shape: the anchor axis (thousands) is the longer one."""
    if pred.ndim != 3:
        raise UsageError(f"expected a (B, N, 5+nc) or (B, 4+nc, N) prediction tensor, got shape {tuple(pred.shape)}")
    return "yolov5" if pred.shape[1] > pred.shape[2] else "ultralytics"


def xywh_to_xyxy(xywh: torch.Tensor) -> torch.Tensor:
    """Centre/size boxes → corner boxes."""
    xy, half = xywh[..., :2], xywh[..., 2:4] / 2
    return torch.cat((xy - half, xy + half), dim=-1)


def decode_predictions(pred: torch.Tensor, layout: str,
                       nc: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Raw predictions → (boxes xyxy (B, N, 4), class scores (B, N, nc)), in float32.

    "yolov5": (B, N, 5+nc) rows of xywh, objectness, class probabilities; score = objectness * class prob.
    "ultralytics": (B, 4+nc, N) columns of xywh, class scores. Extra trailing values (e.g. mask coefficients)
    are ignored when `nc` is given.
    """
    if layout == "auto":
        layout = infer_layout(pred)
    if layout not in LAYOUTS:
        raise UsageError(f"unknown prediction layout {layout!r}; expected one of {list(LAYOUTS)} or 'auto'")
    if pred.ndim != 3:
        raise UsageError(f"{layout} predictions must be 3-D, got shape {tuple(pred.shape)}")
    pred = pred.float()
    if layout == "yolov5":
        nc = pred.shape[2] - 5 if nc is None else nc
        if nc <= 0 or pred.shape[2] < 5 + nc:
            raise UsageError(f"yolov5 layout expects (B, N, 5+nc) with nc >= 1, got shape {tuple(pred.shape)}"
                             f"{'' if nc is None else f' for nc={nc}'}; is the layout 'ultralytics'?")
        return xywh_to_xyxy(pred[..., :4]), pred[..., 5:5 + nc] * pred[..., 4:5]
    nc = pred.shape[1] - 4 if nc is None else nc
    if nc <= 0 or pred.shape[1] < 4 + nc:
        raise UsageError(f"ultralytics layout expects (B, 4+nc, N) with nc >= 1, got shape {tuple(pred.shape)}; "
                         f"is the layout 'yolov5'?")
    pred = pred.transpose(1, 2)
    return xywh_to_xyxy(pred[..., :4]), pred[..., 4:4 + nc]


def _rank_within(groups: torch.Tensor) -> torch.Tensor:
    """Position of each element among the elements of its group, in the current order (groups need not be sorted)."""
    order = torch.sort(groups, stable=True).indices
    sorted_groups = groups[order]
    counts = torch.bincount(sorted_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(groups.numel(), device=groups.device) - starts[sorted_groups]
    return rank


def _grouped_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float) -> torch.Tensor:
    """NMS within each group id; returns the kept indices (unordered).

    Same result as torchvision's batched_nms, but slices sorted contiguous groups instead of scanning all boxes
    once per group (or comparing every pair across groups), which matters with ~1000 (image, class) groups.
    """
    order = torch.sort(groups, stable=True).indices
    counts = torch.unique_consecutive(groups[order], return_counts=True)[1].tolist()
    keep = []
    for idx, n in zip(torch.split(order, counts), counts):
        keep.append(idx if n == 1 else idx[torchvision.ops.nms(boxes[idx], scores[idx], iou)])
    return torch.cat(keep) if keep else order[:0]


def _candidates(pred: torch.Tensor, layout: str, conf_thres: float, multi_label: bool, nc: Optional[int]):
    """Sparse decoding: (image index, xyxy box, score, class) of every candidate above `conf_thres`, plus nc.

    Rows are filtered before the class scores are formed (by objectness for yolov5, by the best class for
    ultralytics), which skips most of the dense work; the result equals thresholding `decode_predictions`.
    """
    if layout == "auto":
        layout = infer_layout(pred)
    decode_predictions(pred[:1, :1] if layout == "yolov5" else pred[:1, :, :1], layout, nc)    # validates shape
    pred = pred.float()
    if layout == "yolov5":
        nc = pred.shape[2] - 5 if nc is None else nc
        img, anchor = (pred[..., 4] > conf_thres).nonzero(as_tuple=True)
        rows = pred[img, anchor]
        scores = rows[:, 5:5 + nc] * rows[:, 4:5]
    else:
        nc = pred.shape[1] - 4 if nc is None else nc
        pred = pred.transpose(1, 2)
        img, anchor = (pred[..., 4:4 + nc].amax(dim=2) > conf_thres).nonzero(as_tuple=True)
        rows = pred[img, anchor]
        scores = rows[:, 4:4 + nc]
    boxes = xywh_to_xyxy(rows[:, :4])
    if multi_label:
        row, cls = (scores > conf_thres).nonzero(as_tuple=True)
        score = scores[row, cls]
    else:
        score, cls = scores.max(dim=1)
        row = (score > conf_thres).nonzero(as_tuple=True)[0]
        score, cls = score[row], cls[row]
    return img[row], boxes[row], score, cls, nc


@dataclass
class Candidates:
    """One batch's (box, class) pairs above the confidence threshold, ready for NMS (on pred's device)."""

    batch_size: int
    image: torch.Tensor   # (n,) index of the image in the batch
    boxes: torch.Tensor   # (n, 4) xyxy in network-input pixels
    score: torch.Tensor   # (n,)
    cls: torch.Tensor     # (n,) class index
    nc: int


def nms_candidates(pred: torch.Tensor, layout: str, conf_thres: float = 0.001, multi_label: bool = True,
                   max_candidates: int = 30000, nc: Optional[int] = None) -> Candidates:
    """The dense half of NMS: threshold the raw predictions (every class above `conf_thres` with `multi_label`,
    else the best class only) and keep at most `max_candidates` per image (the best)."""
    if not 0 <= conf_thres <= 1:
        raise UsageError(f"conf_thres must be in [0, 1], got {conf_thres}")
    bsz = pred.shape[0]
    img, boxes, score, cls, ncls = _candidates(pred, layout, conf_thres, multi_label, nc)
    if score.numel() and torch.bincount(img, minlength=bsz).max() > max_candidates:
        by_score = torch.sort(score, descending=True, stable=True).indices
        top = by_score[_rank_within(img[by_score]) < max_candidates]
        img, boxes, score, cls = img[top], boxes[top], score[top], cls[top]
    return Candidates(bsz, img, boxes, score, cls, ncls)


def suppress(c: Candidates, iou_thres: float = 0.65, max_det: int = 300, agnostic: bool = False) -> List[torch.Tensor]:
    """The sparse half of NMS: class-aware (per image and class, unless `agnostic`) suppression; per image an
    (n, 6) tensor of [x1, y1, x2, y2, score, class], best first, at most `max_det`."""
    if not 0 <= iou_thres <= 1:
        raise UsageError(f"iou_thres must be in [0, 1], got {iou_thres}")
    img, boxes, score, cls = c.image, c.boxes, c.score, c.cls
    keep = _grouped_nms(boxes, score, img if agnostic else img * c.nc + cls, iou_thres)
    # order kept boxes by image, then score; cap each image at max_det
    keep = keep[torch.sort(score[keep], descending=True, stable=True).indices]
    keep = keep[torch.sort(img[keep], stable=True).indices]
    counts = torch.bincount(img[keep], minlength=c.batch_size)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(keep.numel(), device=keep.device) - starts[img[keep]]
    keep = keep[rank < max_det]
    det = torch.cat((boxes[keep], score[keep, None], cls[keep, None].float()), dim=1)
    return list(torch.split(det, counts.clamp(max=max_det).tolist()))


def non_max_suppression(pred: torch.Tensor, layout: str, conf_thres: float = 0.001, iou_thres: float = 0.65,
                        max_det: int = 300, multi_label: bool = True, agnostic: bool = False,
                        max_candidates: int = 30000, nc: Optional[int] = None) -> List[torch.Tensor]:
    """Per image, an (n, 6) tensor of [x1, y1, x2, y2, score, class] in network-input pixels, best first.

    Candidates are (box, class) pairs scoring above `conf_thres` (every such class with `multi_label`, else the
    best class only); at most `max_candidates` per image (the best) go into NMS, which is class-aware (per image
    and class) unless `agnostic`; at most `max_det` survive per image. All images are processed together on
    pred's device.
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise UsageError(f"conf_thres and iou_thres must be in [0, 1], got {conf_thres}, {iou_thres}")
    candidates = nms_candidates(pred, layout, conf_thres, multi_label, max_candidates, nc)
    return suppress(candidates, iou_thres, max_det, agnostic)
