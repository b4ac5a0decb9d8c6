"""benchmarks/fidelity_resolution.py's perturbation behind BENCHMARKS.md §8l: every bias moves by exactly one
float32 ulp (checked against numpy's spacing), nothing else moves, and the draw is seeded."""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from fidelity_resolution import perturb_biases  # noqa: E402


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1),
                               torch.nn.Conv2d(4, 4, 1, bias=False))


def test_every_bias_moves_one_ulp_and_nothing_else():
    model = _model()
    with torch.no_grad():
        model[1].bias.copy_(torch.linspace(-2, 2, 8))   # includes values of both signs; 0 is not among them
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moved = perturb_biases(model, seed=1)
    assert moved == 8 + 8 + 4
    after = model.state_dict()
    for key, old in before.items():
        if key.endswith(".bias"):
            old64, new64 = old.double().numpy(), after[key].double().numpy()
            ulp = np.spacing(np.abs(old.numpy())).astype(np.float64)      # float32 ulp at each value
            gap = np.abs(new64 - old64)
            # one ulp up or down; going down from a power of two the step below is half as wide
            assert np.all((gap == ulp) | (gap == ulp / 2)), key
        else:
            assert torch.equal(after[key], old), key
    ups = [(after[k] > v).float().mean().item() for k, v in before.items() if k.endswith(".bias")]
    assert 0.0 < sum(ups) / len(ups) < 1.0     # both directions occur


def test_the_same_seed_gives_the_same_copy_and_another_seed_does_not():
    a, b, c = _model(), _model(), _model()
    perturb_biases(a, seed=3)
    perturb_biases(b, seed=3)
    perturb_biases(c, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))
