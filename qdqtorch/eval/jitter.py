"""How finely one score resolves one model: score it again in copies whose biases moved by one float32 ulp.

Every runtime adds biases and sums in its own order (PyTorch, ONNX Runtime and TensorRT kernels differ by about an
ulp), so such a copy is the same model deployed elsewhere. A float model does not notice; an INT8 one does, because
an activation that sat on a rounding boundary tips to the next code. The spread of the copies' figures is the grain
below which two figures of that model say nothing (BENCHMARKS.md §8l).
"""
from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UsageError


def _biases(model: nn.Module) -> Iterator[nn.Parameter]:
    """The floating-point bias parameters of `model`, in named_parameters order."""
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] == "bias" and p.is_floating_point():
            yield p


@torch.no_grad()
def perturb_biases(model: nn.Module, seed: int) -> int:
    """Move every bias parameter of `model` by one float32 ulp up or down (random per value, seeded) in place;
    returns how many values moved."""
    generator = torch.Generator().manual_seed(seed)
    moved = 0
    for p in _biases(model):
        up = (torch.rand(p.shape, generator=generator) < 0.5).to(p.device)
        target = torch.where(up, torch.full_like(p, float("inf")), torch.full_like(p, float("-inf")))
        p.copy_(torch.nextafter(p, target))
        moved += p.numel()
    return moved


def spread(values: List[float]) -> Dict[str, float]:
    """Mean, standard deviation, min and max of a list of figures (and how many)."""
    return {"mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def spread_text(s: Mapping[str, float]) -> str:
    """One `spread` (or its JSON form in a summary) as 'mean (sd, min-max)', the way every report prints it."""
    return f"{s['mean']:.4f} (sd {s['stdev']:.4f}, {s['min']:.4f}-{s['max']:.4f})"


@dataclass
class JitterResult:
    """Each figure of the model as it is (first) and of each one-ulp copy (seeds 1..draws, in order)."""

    figures: Dict[str, List[float]]
    biases_moved: int
    seeds: List[int] = field(default_factory=list)

    def spread(self, key: str) -> Dict[str, float]:
        """`spread` over the unperturbed figure and the draws of `key`."""
        return spread(self.figures[key])

    def to_dict(self) -> dict:
        """JSON-safe: per figure its values and spread, plus what was perturbed."""
        return {"perturbation": "every bias one float32 ulp up or down (random per value)", "seeds": self.seeds,
                "biases_moved": self.biases_moved,
                "figures": {k: {"values": v, **spread(v)} for k, v in self.figures.items()}}

    def __str__(self) -> str:
        parts = [f"{key} {spread_text(self.spread(key))}" for key in self.figures]
        return f"one-ulp bias jitter over {len(self.seeds)} draws + the model itself: " + "; ".join(parts)


def jitter(model: nn.Module, score: Callable[[nn.Module], Mapping[str, float]], draws: int = 5, *,
           unperturbed: Optional[Mapping[str, float]] = None, progress: bool = False) -> JitterResult:
    """Score `model` (or take `unperturbed`, its figures already measured) and `draws` deep copies of it, each with
    `perturb_biases(seed=i)` for i in 1..draws; `score` maps a model to named figures. `model` is not changed."""
    if draws < 1:
        raise UsageError(f"jitter draws must be at least 1, got {draws}")
    if next(_biases(model), None) is None:
        raise UsageError("jitter: the model has no floating-point bias to perturb; its figure's grain cannot be "
                         "measured this way")
    first = dict(score(model) if unperturbed is None else unperturbed)
    if not first:
        raise UsageError("jitter: the score gave no figure")
    figures = {k: [float(v)] for k, v in first.items()}
    moved = 0
    seeds = list(range(1, draws + 1))
    for seed in tqdm(seeds, desc="one-ulp jitter", unit="draw", disable=not progress):
        candidate = copy.deepcopy(model)
        moved = perturb_biases(candidate, seed)
        row = score(candidate)
        del candidate
        for key in figures:
            if key not in row:
                raise UsageError(f"jitter: the score of draw {seed} has no {key!r} (it gave {sorted(row)})")
            figures[key].append(float(row[key]))
    return JitterResult(figures, moved, seeds)
