"""Accuracy budget: greedily keep the most sensitive units float until the verified metric is within budget."""
from __future__ import annotations

import time
from typing import Callable, List, Optional, Sequence, Tuple


def parse_budget(text: str) -> Tuple[float, bool]:
    """'0.003' -> (0.003, absolute); '1%' -> (0.01, relative to the float metric)."""
    raw = str(text).strip()
    relative = raw.endswith("%")
    try:
        value = float(raw[:-1] if relative else raw)
    except ValueError:
        raise ValueError(f"--budget {text!r}: expected an absolute metric drop such as 0.003 or a relative one such "
                         "as 1%") from None
    if value < 0:
        raise ValueError(f"--budget {text!r}: must be >= 0")
    return (value / 100.0 if relative else value), relative


def select_within_budget(evaluate: Callable[[Sequence[str]], float], ranking: Sequence[str], float_metric: float,
                         quantized_metric: float, budget: float, *, relative: bool = False,
                         higher_is_better: bool = True, max_units: Optional[int] = None,
                         verify: Optional[Callable[[Sequence[str]], float]] = None,
                         verify_method: str = "in-place re-evaluation") -> dict:
    """Walk `ranking` (most sensitive first): add each unit to the float set, evaluate the partly quantized model,
    keep the unit only if it improved the metric, stop once within budget (or after `max_units` float units).

    `evaluate(float_units)` returns the metric with those units float and everything else quantized. The final
    selection is evaluated once more by `verify` (default: `evaluate`) and recorded as the verification.
    """
    allowed = budget * abs(float_metric) if relative else budget
    sign = 1.0 if higher_is_better else -1.0
    target = float_metric - sign * allowed

    def gap(metric: float) -> float:
        return sign * (float_metric - metric)

    selected: List[str] = []
    current = quantized_metric
    steps = [{"float_units": [], "metric": current, "gap": gap(current), "kept": True}]
    limit = len(ranking) if max_units is None else max_units
    for name in ranking:
        if gap(current) <= allowed or len(selected) >= limit:
            break
        metric = evaluate(selected + [name])
        kept = sign * (metric - current) > 0
        steps.append({"float_units": selected + [name], "metric": metric, "gap": gap(metric), "kept": kept})
        if kept:
            selected.append(name)
            current = metric
    start = time.perf_counter()
    verified = (verify or evaluate)(list(selected))
    return {"budget": budget, "relative": relative, "allowed": allowed, "target": target, "steps": steps,
            "selected": selected, "within_budget": gap(current) <= allowed,
            "verification": {"method": verify_method if verify is not None else "in-place re-evaluation",
                             "metric": verified, "gap": gap(verified), "within_budget": gap(verified) <= allowed,
                             "time_s": round(time.perf_counter() - start, 4)}}
