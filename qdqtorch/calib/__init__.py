"""Calibrators: collect statistics of a tensor and turn them into an amax."""
from .histogram import HistogramCalibrator, entropy_search, histogram_percentile, mse_search
from .max import MaxCalibrator, NonFiniteError
from .methods import (AMAX_METHODS, CALIBRATORS, DEFAULT_HISTOGRAM_METHOD, HISTOGRAM_METHODS, WEIGHT_METHODS,
                      calibrator_for, check_amax_method, effective_method)
from .weights import weight_amax

__all__ = ["MaxCalibrator", "NonFiniteError", "HistogramCalibrator", "AMAX_METHODS", "HISTOGRAM_METHODS", "CALIBRATORS",
           "WEIGHT_METHODS", "DEFAULT_HISTOGRAM_METHOD", "calibrator_for", "check_amax_method", "effective_method",
           "weight_amax", "entropy_search", "mse_search", "histogram_percentile"]
