"""How much a COCO mAP (against labels, or fidelity's pseudo labels) moves with the choice of images: a bootstrap
over images (draw N of the N images with replacement, score again; duplicates become distinct images)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UsageError
from .fast_scorer import FastCocoScorer
from .scoring import Detections, summary_from_precision

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


def bootstrap_map(gt: dict, dets: Detections, image_ids: Sequence[int], *, key: str = "map50_95",
                  resamples: int = 200, seed: int = 0) -> BootstrapResult:
    """Bootstrap the COCO `key` ("map50_95" or "map50") of `dets` against `gt` over `image_ids` (fast scorer).

    COCO matches detections per image, so the detections are matched once and each draw only ranks the drawn
    images' matches again: the same numbers as matching every draw afresh, without its cost.
    """
    if key not in KEYS:
        raise UsageError(f"bootstrap key {key!r}: choose one of {KEYS}")
    image_ids = list(image_ids)
    scorer = FastCocoScorer(gt, image_ids)
    matches = scorer.match(dets)
    column = KEYS.index(key)
    value = float(summary_from_precision(scorer.precision_of(matches))[column])
    # the scorer numbers images in sorted id order; a draw picks positions of `image_ids`
    index = np.searchsorted(scorer.image_ids, np.asarray(image_ids, dtype=np.int64))
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for r in range(resamples):
        pick = index[rng.integers(0, len(image_ids), len(image_ids))]
        draws[r] = summary_from_precision(scorer.precision_of(matches.take_images(pick)))[column]
    return BootstrapResult(value, float(np.std(draws, ddof=1)) if resamples > 1 else 0.0,
                           float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5)), resamples,
                           len(image_ids))


__all__ = ["BootstrapResult", "bootstrap_map"]
