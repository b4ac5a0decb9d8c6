"""How much a COCO mAP (against labels, or fidelity's pseudo labels) moves with the choice of images: a bootstrap
over images (draw N of the N images with replacement, score again; duplicates become distinct images)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from ..errors import UsageError
from .fast_scorer import FastCocoScorer
from .scoring import Detections

KEYS = ("map50_95", "map50")


@dataclass
class BootstrapResult:
    """The metric on the images as they are, and its spread over `resamples` bootstrap draws."""

    value: float
    std: float
    low: float        # 2.5th percentile of the draws
    high: float       # 97.5th percentile
    resamples: int
    num_images: int

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        return dict(self.__dict__)


def _by_image(ids: np.ndarray, image_ids: Sequence[int]) -> List[np.ndarray]:
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    lo = np.searchsorted(sorted_ids, image_ids, side="left")
    hi = np.searchsorted(sorted_ids, image_ids, side="right")
    return [order[a:b] for a, b in zip(lo, hi)]


def bootstrap_map(gt: dict, dets: Detections, image_ids: Sequence[int], *, key: str = "map50_95",
                  resamples: int = 200, seed: int = 0) -> BootstrapResult:
    """Bootstrap the COCO `key` ("map50_95" or "map50") of `dets` against `gt` over `image_ids` (fast scorer)."""
    if key not in KEYS:
        raise UsageError(f"bootstrap key {key!r}: choose one of {KEYS}")
    image_ids = list(image_ids)
    anns = gt["annotations"]
    a_img = np.array([a["image_id"] for a in anns], dtype=np.int64)
    a_of = _by_image(a_img, image_ids)
    d_of = _by_image(dets.image_id, image_ids)
    value = float(getattr(FastCocoScorer(gt, image_ids).score(dets), key))
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for r in range(resamples):
        pick = rng.integers(0, len(image_ids), len(image_ids))
        new_anns: List[Dict] = []
        for new_id, k in enumerate(pick):
            for j in a_of[k]:
                new_anns.append({**anns[j], "id": len(new_anns) + 1, "image_id": new_id})
        d_idx = np.concatenate([d_of[k] for k in pick]) if len(pick) else np.zeros(0, dtype=np.int64)
        d_new = np.repeat(np.arange(len(pick)), [len(d_of[k]) for k in pick])
        sample = Detections(d_new, dets.category_id[d_idx], dets.bbox[d_idx], dets.score[d_idx])
        sample_gt = {"images": [{"id": i} for i in range(len(pick))], "annotations": new_anns,
                     "categories": gt["categories"]}
        draws[r] = getattr(FastCocoScorer(sample_gt, list(range(len(pick)))).score(sample), key)
    return BootstrapResult(value, float(np.std(draws, ddof=1)) if resamples > 1 else 0.0,
                           float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5)), resamples,
                           len(image_ids))


__all__ = ["BootstrapResult", "bootstrap_map"]
