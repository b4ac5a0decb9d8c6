"""Detections in COCO terms, the score result, and the reference scorer (pycocotools COCOeval, bbox)."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import INSTALL_HINT, MissingDependencyError, UsageError

# COCOeval's default thresholds, built the same way so comparisons against them are bit-identical.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = 100        # COCOeval's stats[0]/stats[1] use maxDets=100 (per image and category)
AREA_ALL = (0.0, 1e5 ** 2)


@dataclass
class Detections:
    """Flat arrays of detections: image id, category id, box [x, y, w, h] in original pixels, score."""

    image_id: np.ndarray
    category_id: np.ndarray
    bbox: np.ndarray
    score: np.ndarray

    def __post_init__(self) -> None:
        self.image_id = np.asarray(self.image_id, dtype=np.int64).reshape(-1)
        self.category_id = np.asarray(self.category_id, dtype=np.int64).reshape(-1)
        self.bbox = np.asarray(self.bbox, dtype=np.float64).reshape(-1, 4)
        self.score = np.asarray(self.score, dtype=np.float64).reshape(-1)
        n = len(self.image_id)
        if not len(self.category_id) == len(self.bbox) == len(self.score) == n:
            raise UsageError("Detections arrays must have the same length")

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def concat(cls, parts: Sequence["Detections"]) -> "Detections":
        """Join several Detections in order."""
        if not parts:
            return cls(np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros(0))
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("image_id", "category_id", "bbox",
                                                                              "score")))

    def to_coco_results(self) -> list:
        """COCO results list (what a detections .json holds)."""
        return [{"image_id": int(i), "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
                for i, c, b, s in zip(self.image_id, self.category_id, self.bbox, self.score)]


@dataclass
class ScoreResult:
    """COCO bbox AP (maxDets=100, all areas); -1 where COCOeval gives -1 (no ground truth at all)."""

    map50_95: float
    map50: float
    # category id → AP50-95 / AP50 (NaN for categories without ground truth in the evaluated images)
    per_class_ap50_95: Dict[int, float] = field(default_factory=dict)
    per_class_ap50: Dict[int, float] = field(default_factory=dict)


def per_class_from_precision(precision: np.ndarray, cat_ids: Sequence[int]) -> tuple:
    """Per-category AP50-95 and AP50 from a (T, R, K) precision array (-1 = undefined → NaN)."""
    ap, ap50 = {}, {}
    for k, cat in enumerate(cat_ids):
        p = precision[:, :, k]
        ap[int(cat)] = float(np.mean(p[p > -1])) if (p > -1).any() else float("nan")
        p50 = p[0]
        ap50[int(cat)] = float(np.mean(p50[p50 > -1])) if (p50 > -1).any() else float("nan")
    return ap, ap50


def summary_from_precision(precision: np.ndarray) -> tuple:
    """(mAP50-95, mAP50) as COCOeval.summarize computes stats[0] and stats[1] from (T, R, K) precision."""
    valid = precision[precision > -1]
    map50_95 = float(np.mean(valid)) if valid.size else -1.0
    p50 = precision[0]
    valid50 = p50[p50 > -1]
    return map50_95, float(np.mean(valid50)) if valid50.size else -1.0


class PycocotoolsScorer:
    """Scores with pycocotools' COCOeval (the reference implementation); the GT index is built once."""

    def __init__(self, gt: dict, image_ids: Optional[Sequence[int]] = None):
        try:
            from pycocotools.coco import COCO
        except ImportError:
            raise MissingDependencyError("scorer='pycocotools' needs the `pycocotools` package, which is not "
                                         f"installed: {INSTALL_HINT.format(extra='yolo')}; or use the fast scorer "
                                         "(--scorer fast, the same numbers)") from None
        self.coco_gt = COCO()
        self.coco_gt.dataset = gt
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco_gt.createIndex()
        self.image_ids = sorted(set(image_ids)) if image_ids is not None else sorted(self.coco_gt.getImgIds())
        self.cat_ids = sorted(set(self.coco_gt.getCatIds()))

    def score(self, dets: Detections, per_class: bool = False) -> ScoreResult:
        """COCOeval bbox on `dets` restricted to this scorer's images."""
        from pycocotools.cocoeval import COCOeval

        if len(dets) == 0:      # COCO.loadRes cannot take an empty result: every category with GT scores 0
            precision = np.full((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(self.cat_ids)), -1.0)
            has_gt = {a["category_id"] for a in self.coco_gt.dataset["annotations"]
                      if a["image_id"] in set(self.image_ids) and not a.get("iscrowd", 0)}
            for k, c in enumerate(self.cat_ids):
                if c in has_gt:
                    precision[:, :, k] = 0.0
        else:
            arr = np.column_stack([dets.image_id, dets.bbox, dets.score, dets.category_id]).astype(np.float64)
            with contextlib.redirect_stdout(io.StringIO()):
                coco_dt = self.coco_gt.loadRes(arr)
                ev = COCOeval(self.coco_gt, coco_dt, "bbox")
                ev.params.imgIds = self.image_ids
                ev.evaluate()
                ev.accumulate()
            precision = ev.eval["precision"][:, :, :, 0, ev.params.maxDets.index(MAX_DETS)]
        map50_95, map50 = summary_from_precision(precision)
        result = ScoreResult(map50_95, map50)
        if per_class:
            result.per_class_ap50_95, result.per_class_ap50 = per_class_from_precision(precision, self.cat_ids)
        return result

