"""The metric of a sweep: anything that maps a model to a float, plus what identifies it in a fingerprint.

A metric may also offer `infer(model) -> raw` and `score(raw) -> float` (with `__call__ == score(infer(...))`):
the sweep then scores one unit on a worker thread while the next unit's inference runs.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

from torch import nn

from ..errors import UsageError
from ..user_code import import_callable


class Metric:
    """Wraps `fn(model) -> float`. `higher_is_better` decides the sign of impacts; `describe()` goes into the
    fingerprint, so it should name the data the metric sees (files, sizes) when the metric owns that data."""

    def __init__(self, fn: Callable[[nn.Module], float], name: str, higher_is_better: bool = True,
                 description: Optional[dict] = None) -> None:
        self.fn = fn
        self.name = name
        self.higher_is_better = higher_is_better
        self.description = description or {"metric": name}

    def __call__(self, model: nn.Module) -> float:
        return self.fn(model)

    def describe(self) -> dict:
        """JSON-able identity of the metric and its data (part of the fingerprint)."""
        return dict(self.description)

    @property
    def two_phase(self) -> bool:
        """True when inference and scoring can be split (and overlapped)."""
        return callable(getattr(self, "infer", None)) and callable(getattr(self, "score", None))


def as_metric(metric: Union[Metric, Callable[[nn.Module], float], str], *, name: Optional[str] = None,
              higher_is_better: bool = True) -> Metric:
    """A Metric from a Metric, a callable `model -> float` or a 'module:function' string."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        return Metric(import_callable(metric, "metric"), name or metric, higher_is_better, {"metric": metric})
    if callable(metric):
        label = name or getattr(metric, "__qualname__", type(metric).__name__)
        return Metric(metric, label, higher_is_better, {"metric": label})
    raise TypeError(f"metric must be a Metric, a callable model -> float or 'module:function', got "
                    f"{type(metric).__name__}")


def check_value(value: Any, metric: Metric, job: str) -> float:
    """The metric's result as a finite float, or an error naming the job."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric {metric.name!r} returned {type(value).__name__} for {job}; it must return a float") \
            from None
    if not math.isfinite(value):
        raise UsageError(f"metric {metric.name!r} returned {value} for {job}; the quantized model may produce "
                         "NaN/Inf (check its calibration) or the metric cannot handle this output")
    return value
