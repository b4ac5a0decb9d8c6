"""Checks on the data given for calibration and evaluation: inputs outside the range the preprocessing produces
(0..255 data where 0..1 is expected, all-zero inputs), and calibrating on the evaluation images."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch

from .preprocess import Preprocess


def expected_range(preprocess: Preprocess) -> Tuple[float, float]:
    """(lowest, highest) value the pixel transform gives for 0..255 pixels over all channels."""
    mean = preprocess.mean if isinstance(preprocess.mean, (list, tuple)) else [preprocess.mean]
    std = preprocess.std if isinstance(preprocess.std, (list, tuple)) else [preprocess.std]
    ends = [(v - m) / s for m, s in zip(mean * (len(std) if len(mean) == 1 else 1),
                                        std * (len(mean) if len(std) == 1 else 1)) for v in (0.0, 255.0)]
    return min(ends), max(ends)


def input_range_problem(lo: float, hi: float, preprocess: Preprocess, source: str = "the calibration data") \
        -> Optional[str]:
    """A one-line explanation when inputs spanning lo..hi cannot come from `preprocess`, else None."""
    exp_lo, exp_hi = expected_range(preprocess)
    span = exp_hi - exp_lo
    if hi > exp_hi + span or lo < exp_lo - span:
        hint = " (did you pass 0..255 data?)" if exp_hi <= 1.5 and hi > 2 else ""
        return (f"{source}: model inputs span {lo:.3g}..{hi:.3g} but the preprocessing (mean {preprocess.mean}, std "
                f"{preprocess.std}) gives {exp_lo:.3g}..{exp_hi:.3g}{hint}; normalise the inputs as the model was "
                f"trained, or fix the preprocess settings")
    if hi == lo:
        return (f"{source}: every model input value is {hi:.3g} (all-zero or blank data?): calibration would see no "
                f"signal; check the calibration source")
    return None


def _tensors(batch: Any) -> List[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, (list, tuple)):
        return [t for item in batch for t in _tensors(item)]
    if isinstance(batch, dict):
        return [t for item in batch.values() for t in _tensors(item)]
    return []


def check_input_range(batches: Sequence[Any], preprocess: Preprocess, source: str = "the calibration data", *,
                      warn: bool = True) -> Optional[str]:
    """Check the value range of a few input batches against the preprocessing (warned when `warn`)."""
    floats = [t for b in batches for t in _tensors(b) if t.is_floating_point() and t.numel()]
    if not floats:
        return None
    lo = min(float(t.min()) for t in floats)
    hi = max(float(t.max()) for t in floats)
    message = input_range_problem(lo, hi, preprocess, source)
    if message and warn:
        warnings.warn(message, stacklevel=2)
    return message


def check_distinct(calib_paths: Sequence[Path], eval_paths: Sequence[Path], *, warn: bool = True) -> Optional[str]:
    """Warn when calibration images are also evaluation images: the INT8 score is then flattered (calibrating on
    the test set)."""
    eval_set = {Path(p).resolve() for p in eval_paths}
    shared = [p for p in calib_paths if Path(p).resolve() in eval_set]
    if not shared:
        return None
    message = (f"{len(shared)} of the {len(calib_paths)} calibration images are evaluation images (e.g. {shared[0]}): "
               f"calibrating on the evaluation images flatters the INT8 score; calibrate on other images "
               f"(--calib-data, or the dataset's train split)")
    if warn:
        warnings.warn(message, stacklevel=2)
    return message


__all__ = ["check_distinct", "check_input_range", "expected_range", "input_range_problem"]
