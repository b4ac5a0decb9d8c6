"""After calibration: quantizers left without a range, and activation ranges that are 0 or vanishingly small, which
export as a near-zero ONNX scale and mean a dead input or broken preprocessing rather than a real range."""
from __future__ import annotations

import statistics
import warnings
from typing import List, Optional

import torch
from torch import nn

from .control import named_quantizers, weight_quantizer_ids

TINY_AMAX = 1e-6     # relative to the layer's weight scale (max |W|), or to the model's median activation amax


def _weight_scale(module: nn.Module) -> Optional[float]:
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.numel():
        return float(weight.detach().abs().max())
    return None


def uncalibrated_quantizers(model: nn.Module) -> List[str]:
    """Names of the enabled quantizers that have no amax yet: what every step that needs a calibrated model (QAT,
    sweeps, recovery) refuses, each with its own error."""
    return [name for name, q in named_quantizers(model) if q.is_enabled and q.amax is None]


def check_amax(model: nn.Module, relative: float = TINY_AMAX, *, warn: bool = True) -> List[str]:
    """Warnings (also issued through `warnings` when `warn`) for enabled activation quantizers whose calibrated amax
    is 0, or below `relative` times the layer's weight scale (layers without weights: the median activation amax
    of the model). Each names the quantizer and what to check."""
    weights = weight_quantizer_ids(model)
    found = [(name, q) for name, q in named_quantizers(model)
             if id(q) not in weights and q.is_enabled and q.amax is not None]
    amaxes = [float(q.amax.max()) for _, q in found]
    median = statistics.median(amaxes) if amaxes else 0.0
    messages = []
    for (name, _), amax in zip(found, amaxes):
        owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        scale = _weight_scale(owner)
        ref, ref_name = ((scale, "its layer's weight scale") if scale
                         else (median, "the model's median activation range"))
        if amax == 0 or (ref and amax < relative * ref):
            messages.append(f"{name}: calibrated activation range (amax) is {amax:.3g}, "
                            f"{'zero' if amax == 0 else f'below {relative:g} x {ref_name} ({ref:.3g})'}: a dead "
                            f"input or broken preprocessing (all-zero or wrongly scaled calibration images?); the "
                            f"export would get a near-zero scale. Check the calibration data, or keep this layer "
                            f"float (ignore it)")
    if warn:
        for message in messages:
            warnings.warn(message, stacklevel=2)
    return messages


__all__ = ["TINY_AMAX", "check_amax"]
