"""make_scorer: the COCO scorers by name, kept apart from both so that neither scorer module imports the other."""
from __future__ import annotations

from typing import Optional, Sequence, Union

from ..errors import UsageError
from .fast_scorer import FastCocoScorer
from .scoring import PycocotoolsScorer

SCORERS = ("pycocotools", "fast")  # reference COCOeval, and a vectorised reimplementation with the same numbers


def make_scorer(name: str, gt: dict, image_ids: Optional[Sequence[int]] = None
                ) -> Union[PycocotoolsScorer, FastCocoScorer]:
    """The scorer called `name` ("pycocotools" or "fast") prepared for `gt` and `image_ids`."""
    if name == "pycocotools":
        return PycocotoolsScorer(gt, image_ids)
    if name == "fast":
        return FastCocoScorer(gt, image_ids)
    raise UsageError(f"unknown scorer {name!r}; expected one of {SCORERS}")
