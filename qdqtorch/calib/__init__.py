"""Calibrators: collect statistics of a tensor and turn them into an amax."""
from .histogram import HISTOGRAM_METHODS, HistogramCalibrator, entropy_search, histogram_percentile, mse_search
from .max import MaxCalibrator, NonFiniteError
from .weights import WEIGHT_METHODS, weight_amax

__all__ = ["MaxCalibrator", "NonFiniteError", "HistogramCalibrator", "HISTOGRAM_METHODS", "WEIGHT_METHODS", "weight_amax",
           "entropy_search", "mse_search", "histogram_percentile"]
