"""Watch the integer weights of a model during fine-tuning: how many change per optimizer step, how many of those
go straight back to the value they had before the change (oscillation around a rounding boundary, Nagel et al.
2022), and optionally pull every weight a fraction towards the centre of its rounding bin after each step."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook


def _quantized_weight_layers(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "_weight_quantizer") and m._weight_quantizer.is_enabled
            and m._weight_quantizer.amax is not None and m._weight_quantizer.desc.narrow_range]


def _step_size(layer: nn.Module) -> torch.Tensor:
    """The weight grid's step, broadcastable to the weight (symmetric narrow range: amax / 127 at 8 bits)."""
    q = layer._weight_quantizer
    amax = q.amax.detach()
    if amax.numel() > 1:
        shape = [1] * layer.weight.dim()
        shape[q.desc.axis] = -1
        amax = amax.reshape(shape)
    return amax / (2 ** (q.desc.num_bits - 1) - 1)


class WeightFlips:
    """Context manager: while open, every optimizer step counts `changed` and `reverted` integer weights of
    `model`'s weight-quantized layers (`per_step`); `pull` > 0 then moves each weight that fraction of the way
    to its bin centre (0: observe only)."""

    def __init__(self, model: nn.Module, pull: float = 0.0) -> None:
        if not 0.0 <= pull <= 1.0:
            raise ValueError(f"pull must be in [0, 1], got {pull}")
        self.layers = _quantized_weight_layers(model)
        self.pull = pull
        self.per_step: List[dict] = []
        self._last: List[torch.Tensor] = []
        self._before_last: List[Optional[torch.Tensor]] = []
        self._handle = None

    def _integers(self, layer: nn.Module) -> torch.Tensor:
        limit = 2 ** (self.layers[0]._weight_quantizer.desc.num_bits - 1) - 1
        return torch.round(layer.weight.detach() / _step_size(layer)).clamp_(-limit, limit)

    @property
    def num_weights(self) -> int:
        return sum(layer.weight.numel() for layer in self.layers)

    def __enter__(self) -> "WeightFlips":
        self._last = [self._integers(layer) for layer in self.layers]
        self._before_last = [None] * len(self.layers)
        self._handle = register_optimizer_step_post_hook(self._after_step)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs) -> None:
        changed = reverted = 0
        for i, layer in enumerate(self.layers):
            if self.pull > 0:
                centre = self._integers(layer) * _step_size(layer)
                layer.weight.sub_(self.pull * (layer.weight - centre))
            now = self._integers(layer)
            moved = now != self._last[i]
            changed += int(moved.sum())
            if self._before_last[i] is not None:
                reverted += int((moved & (now == self._before_last[i])).sum())
            # the value each weight held before its latest change
            self._before_last[i] = torch.where(moved, self._last[i],
                                               self._before_last[i] if self._before_last[i] is not None
                                               else self._last[i])
            self._last[i] = now
        self.per_step.append({"changed": changed, "reverted": reverted})

    def totals_since(self, step: int) -> dict:
        """Changed and reverted weights summed over the steps from `step` (0-based) on."""
        steps = self.per_step[step:]
        return {"changed": sum(s["changed"] for s in steps), "reverted": sum(s["reverted"] for s in steps)}
