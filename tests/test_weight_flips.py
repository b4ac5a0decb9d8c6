"""benchmarks/_weight_flips.py, the oscillation counter behind BENCHMARKS.md §8k: changed and reverted integer
weights after hand-chosen SGD steps, and the pull towards the bin centre, against values worked out by hand."""
import sys
from pathlib import Path

import pytest
import torch

from qdqtorch import nn as qnn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _weight_flips import WeightFlips  # noqa: E402


def _conv_on_grid_steps(first: float) -> qnn.QuantConv2d:
    """Two 1x1 output channels with grid steps 0.01 and 0.02 (amax 1.27 and 2.54 at 8 bits, narrow range)."""
    conv = qnn.QuantConv2d(1, 2, 1, bias=False)
    conv._weight_quantizer.amax = torch.tensor([1.27, 2.54])
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([first, 0.0]).reshape(2, 1, 1, 1))
    return conv


def _step(conv: qnn.QuantConv2d, optimizer: torch.optim.Optimizer, delta: list) -> None:
    conv.weight.grad = -torch.tensor(delta).reshape(2, 1, 1, 1)   # SGD at lr 1 adds delta to the weights
    optimizer.step()


def test_counts_changes_and_the_ones_that_go_back():
    conv = _conv_on_grid_steps(0.0149)           # integer 1, just below the boundary to 2 at 0.015
    sgd = torch.optim.SGD([conv.weight], lr=1.0)
    with WeightFlips(conv) as flips:
        _step(conv, sgd, [0.0002, 0.0])          # 0.0151: 1 -> 2
        _step(conv, sgd, [-0.0002, 0.0])         # 0.0149: 2 -> 1, back to where it was
        assert flips.epoch_totals(1) == {"changed": 2, "reverted": 1}
        _step(conv, sgd, [0.0, 0.011])           # second channel 0 -> 1 (step 0.02): a change, not a reversion
        _step(conv, sgd, [0.0, 0.0])
    assert flips.per_step == [{"changed": 1, "reverted": 0}, {"changed": 1, "reverted": 1},
                              {"changed": 1, "reverted": 0}, {"changed": 0, "reverted": 0}]
    assert flips.epoch_totals(2) == {"changed": 1, "reverted": 0}
    assert flips.num_weights == 2
    _step(conv, sgd, [0.0002, 0.0])              # the hook is gone once the context closes
    assert len(flips.per_step) == 4


def test_pull_moves_weights_towards_their_bin_centre():
    conv = _conv_on_grid_steps(0.0149)
    sgd = torch.optim.SGD([conv.weight], lr=1.0)
    with WeightFlips(conv, pull=0.5):
        _step(conv, sgd, [0.0, 0.0])
    # centre of integer 1 is 0.01: half of the 0.0049 distance remains
    assert conv.weight.flatten()[0].item() == pytest.approx(0.01245, abs=1e-7)
    with pytest.raises(ValueError, match="pull"):
        WeightFlips(conv, pull=1.5)
