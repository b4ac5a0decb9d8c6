"""Watch the integer weights of a model during fine-tuning: how many change per optimizer step, how many of those
go straight back to the value they had before the change (oscillation around a rounding boundary, Nagel et al.
2022), and optionally pull every weight a fraction towards the centre of its rounding bin after each step."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from qdqtorch.recovery.layers import scale_and_bounds, skip_reason, weighted_quant_layers


def _grid(layer: nn.Module) -> Tuple[torch.Tensor, int, int]:
    """The weight grid's step, broadcastable to the weight, and the integer code bounds."""
    scale, lo, hi = scale_and_bounds(layer)
    return scale.reshape(-1, *[1] * (layer.weight.dim() - 1)), lo, hi


def _integers(layer: nn.Module) -> torch.Tensor:
    """The layer's weights as integer codes on its quantization grid (float tensor of whole numbers)."""
    step, lo, hi = _grid(layer)
    return torch.round(layer.weight.detach() / step).clamp_(lo, hi)


class WeightFlips:
    """Context manager: while open, every optimizer step counts `changed` and `reverted` integer weights of
    `model`'s weight-quantized layers (`per_step`); `pull` > 0 then first moves each weight that fraction of the
    way to its bin centre (0: observe only)."""

    def __init__(self, model: nn.Module, pull: float = 0.0) -> None:
        if not 0.0 <= pull <= 1.0:
            raise ValueError(f"pull must be in [0, 1], got {pull}")
        self.layers = [m for _, m in weighted_quant_layers(model) if skip_reason(m) is None]
        self.pull = pull
        self.per_step: List[dict] = []
        self._last: List[torch.Tensor] = []
        self._before_last: List[torch.Tensor] = []   # each weight's integer before its latest change
        self._handle = None

    @property
    def num_weights(self) -> int:
        return sum(layer.weight.numel() for layer in self.layers)

    def __enter__(self) -> "WeightFlips":
        self._last = [_integers(layer) for layer in self.layers]
        self._before_last = [codes.clone() for codes in self._last]
        self._handle = register_optimizer_step_post_hook(self._after_step)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs) -> None:
        changed = reverted = 0
        for i, layer in enumerate(self.layers):
            if self.pull > 0:
                layer.weight.sub_(self.pull * (layer.weight - _integers(layer) * _grid(layer)[0]))
            now = _integers(layer)
            moved = now != self._last[i]
            changed += int(moved.sum())
            reverted += int((moved & (now == self._before_last[i])).sum())
            self._before_last[i] = torch.where(moved, self._last[i], self._before_last[i])
            self._last[i] = now
        self.per_step.append({"changed": changed, "reverted": reverted})

    def epoch_totals(self, epoch: int) -> dict:
        """Changed and reverted weights summed over the steps of `epoch` (1-based), the epoch that has just ended
        (call it from `fine_tune(on_epoch=...)`; all epochs have the same number of steps)."""
        steps_per_epoch = len(self.per_step) // epoch
        steps = self.per_step[steps_per_epoch * (epoch - 1):]
        return {"changed": sum(s["changed"] for s in steps), "reverted": sum(s["reverted"] for s in steps)}
