"""Accuracy budget: greedily keep the most sensitive units float until the verified metric is within budget."""
from __future__ import annotations

import time
from typing import Callable, List, Optional, Sequence, Tuple

from ..errors import UsageError


def parse_budget(text: str) -> Tuple[float, bool]:
    """'0.003' -> (0.003, absolute); '1%' -> (0.01, relative to the float metric)."""
    raw = str(text).strip()
    relative = raw.endswith("%")
    try:
        value = float(raw[:-1] if relative else raw)
    except ValueError:
        raise UsageError(f"--budget {text!r}: expected an absolute metric drop such as 0.003 or a relative one such "
                         "as 1%") from None
    if value < 0:
        raise UsageError(f"--budget {text!r}: must be >= 0")
    return (value / 100.0 if relative else value), relative


def select_within_budget(evaluate: Callable[[Sequence[str]], float], ranking: Sequence[str], float_metric: float,
                         quantized_metric: float, budget: float, *, relative: bool = False,
                         higher_is_better: bool = True, max_units: Optional[int] = None, candidates: int = 1,
                         verify: Optional[Callable[[Sequence[str]], float]] = None,
                         verify_method: str = "in-place re-evaluation") -> dict:
    """Greedy forward selection of units to keep float until the metric is within budget of float.

    Each step evaluates the next `candidates` untried units of `ranking` (most sensitive first), each added to the
    float set, and keeps the best one if it improves the metric; if none improves, they are dropped and the next
    ones are tried. `candidates=1` walks the ranking once. Stops within budget, at `max_units` float units, or when
    the ranking is exhausted. `evaluate(float_units)` returns the metric with those units float and everything else
    quantized. The final selection is evaluated once more by `verify` (default: `evaluate`) as the verification.
    """
    if candidates < 1:
        raise UsageError(f"candidates must be >= 1, got {candidates}")
    allowed = budget * abs(float_metric) if relative else budget
    sign = 1.0 if higher_is_better else -1.0
    target = float_metric - sign * allowed

    def gap(metric: float) -> float:
        return sign * (float_metric - metric)

    selected: List[str] = []
    pool = list(ranking)
    current = quantized_metric
    steps = [{"float_units": [], "metric": current, "gap": gap(current), "kept": True}]
    limit = len(ranking) if max_units is None else max_units
    while pool and gap(current) > allowed and len(selected) < limit:
        tried = pool[:candidates]
        scores = []
        for name in tried:
            metric = evaluate(selected + [name])
            scores.append(metric)
            steps.append({"float_units": selected + [name], "metric": metric, "gap": gap(metric), "kept": False})
        best = max(range(len(tried)), key=lambda i: sign * scores[i])
        if sign * (scores[best] - current) > 0:
            selected.append(tried[best])
            current = scores[best]
            steps[len(steps) - len(tried) + best]["kept"] = True
            pool.remove(tried[best])
        else:
            pool = pool[len(tried):]
    start = time.perf_counter()
    verified = (verify or evaluate)(list(selected))
    return {"budget": budget, "relative": relative, "allowed": allowed, "target": target,
            "candidates": candidates, "steps": steps, "selected": selected,
            "within_budget": gap(current) <= allowed,
            "verification": {"method": verify_method if verify is not None else "in-place re-evaluation",
                             "metric": verified, "gap": gap(verified), "within_budget": gap(verified) <= allowed,
                             "time_s": round(time.perf_counter() - start, 4)}}
