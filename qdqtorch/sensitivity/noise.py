"""How noisy a sweep's metric is on its images, which impacts stand out of that noise, and what the proxy's rank
agreement says.

The noise is the standard deviation of the all-quantized baseline over a bootstrap of the images (the metric's
`noise(model)`; COCO mAP and fidelity have one). An entry is significant when its impact exceeds it. Every unit is
compared with the baseline on the same images, so a paired difference varies less than this: the test is on the
cautious side, and a layer it keeps is one whose cost shows beyond the choice of images.
"""
from __future__ import annotations

from typing import Any, List, Optional

from torch import nn

NOISE_KEY = "noise/bootstrap"      # journal key: its "metric" holds the bootstrap standard deviation
RESAMPLES = 200
NO_SIGNIFICANT = "no layer's impact exceeds the noise"


def estimate_noise(metric: Any, model: nn.Module, resamples: int = RESAMPLES, seed: int = 0) -> Optional[dict]:
    """The metric's bootstrap over images on `model` as it is ({value, std, low, high, ...}), or None when the
    metric cannot tell (a custom `module:function` metric without a `noise` method)."""
    noise = getattr(metric, "noise", None)
    if not callable(noise):
        return None
    return dict(noise(model, resamples=resamples, seed=seed))


def noise_summary(records: dict) -> Optional[dict]:
    """The `noise` section of sensitivity.json from the journaled record, None when there is none."""
    rec = records.get(NOISE_KEY)
    if rec is None:
        return None
    return {"std": rec["metric"], "method": f"bootstrap over the images ({RESAMPLES} resamples) of the all-quantized "
                                           "baseline", "significant_if": "impact > std"}


def is_significant(impact: Optional[float], noise: Optional[dict]) -> Optional[bool]:
    """True/False when the noise is known (impact above the bootstrap std), None otherwise."""
    if noise is None or impact is None:
        return None
    return impact > noise["std"]


def significant_units(entries: List[dict]) -> List[str]:
    """Units whose impact exceeds the noise, best first (entries are ranked already)."""
    return [e["unit"] for e in entries if e.get("significant")]


def spearman_meaning(rho: Optional[float], n: int) -> str:
    """One sentence on what a Spearman rank correlation between the proxy and the measured impacts means."""
    if rho is None:
        return (f"the proxy's agreement with the measured ranking cannot be computed ({n} unit(s) with both, or one "
                "side constant): do not trust the proxy ranking here")
    if rho >= 0.7:
        verdict = "the proxy ranks layers much as the measurement does: it is a usable prefilter"
    elif rho >= 0.4:
        verdict = "the proxy agrees only roughly: use it to prefilter generously (a large --prefilter), not to decide"
    elif rho > 0:
        verdict = "the proxy barely agrees with the measurement: do not prefilter with it"
    else:
        verdict = "the proxy does not predict the measured impacts at all (or opposes them): do not use it"
    return f"Spearman {rho:.2f} over {n} unit(s): {verdict}"


__all__ = ["NOISE_KEY", "NO_SIGNIFICANT", "RESAMPLES", "estimate_noise", "is_significant", "noise_summary",
           "significant_units", "spearman_meaning"]
