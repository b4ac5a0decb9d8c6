"""The one vocabulary of calibration method names and the one place that decides which calibrator a method needs.

- amax methods turn activation statistics into an amax: "max" needs only a running max, the others a histogram.
- calibrator kinds are the two statistics collectors: "max" (MaxCalibrator) and "histogram" (HistogramCalibrator).
- weight methods compute a weight quantizer's amax straight from the weight tensor.
"""
from __future__ import annotations

from typing import Optional
from ..errors import UsageError

AMAX_METHODS = ("max", "entropy", "mse", "percentile")
"""Activation amax methods (`calibrate(method=...)`, `QuantDescriptor.calib_method`, the scripts' --calib-method)."""

HISTOGRAM_METHODS = ("entropy", "mse", "percentile")
"""The amax methods that need histogram statistics."""

CALIBRATORS = ("max", "histogram")
"""Calibrator kinds (`QuantDescriptor.calibrator`)."""

WEIGHT_METHODS = ("max", "mse", "percentile", "admm")
"""Weight amax methods (`calibrate(weight_method=...)`)."""

DEFAULT_HISTOGRAM_METHOD = "percentile"
"""What a histogram calibrator gives when neither the call nor the descriptor names a method."""


def check_amax_method(method: str, where: str) -> str:
    """`method` if it is an amax method, else a ValueError naming `where` and the valid names."""
    if method not in AMAX_METHODS:
        raise UsageError(f"{where}: unknown amax method {method!r}; choose one of {AMAX_METHODS}")
    return method


def calibrator_for(method: Optional[str]) -> str:
    """The calibrator kind an amax method needs: "histogram" for entropy/mse/percentile, else "max"."""
    return "histogram" if method in HISTOGRAM_METHODS else "max"


def effective_method(requested: Optional[str], fixed: Optional[str]) -> str:
    """The amax method a histogram calibrator uses: the descriptor's fixed one wins over the requested one."""
    return fixed or requested or DEFAULT_HISTOGRAM_METHOD
