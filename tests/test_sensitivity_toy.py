"""A toy quantized model and synthetic metric for the sensitivity tests (also importable by subprocesses as
'test_sensitivity_toy:...'), plus unit tests of the small sensitivity building blocks."""
from __future__ import annotations

import os
import time

import pytest
import torch
from torch import nn

import qdqtorch
from qdqtorch.sensitivity import find_units, parse_budget, parse_shard, select_within_budget, spearman
from qdqtorch.sensitivity.jobs import FLOAT, QUANTIZED, baseline_jobs, enabled_quantizers, float_set_job, unit_jobs
from qdqtorch.sensitivity.result import average_ranks

SIZE = 8


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: thread hand-offs cost more than they save (and the suite shares 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_model() -> nn.Module:
    """Six weighted layers; `4` is a block of two convs."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1)), nn.ReLU(),
        nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * SIZE * SIZE, 10)).eval()


def calib_batches():
    """Four fixed batches of four images."""
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, SIZE, SIZE, generator=gen) for _ in range(4)]


_EVAL = torch.randn(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
_REFERENCE = {}


@torch.no_grad()
def metric(model: nn.Module) -> float:
    """1 - relative L2 error of the outputs against the float toy model on fixed images (float scores 1)."""
    if "y" not in _REFERENCE:
        _REFERENCE["y"] = build_model()(_EVAL)
    delay = float(os.environ.get("TOY_SLEEP", "0"))
    if delay:
        time.sleep(delay)
    y = model(_EVAL)
    return float(1 - (y - _REFERENCE["y"]).norm() / _REFERENCE["y"].norm())


def quantized_toy(method: str = "max") -> nn.Module:
    """The toy model quantized (Conv2d + Linear) and calibrated."""
    model = build_model()
    qdqtorch.quantize_model(model)
    qdqtorch.calibrate(model, calib_batches(), method=method, progress=False)
    return model


# ---- unit tests of the building blocks ------------------------------------------------------------------------
def test_units_group_quantizers_by_layer_and_block():
    model = quantized_toy()
    layers = find_units(model, "layer")
    assert [u.name for u in layers] == ["0", "2", "4.0", "4.2", "6", "8"]
    assert layers[0].quantizers == ("0._input_quantizer", "0._weight_quantizer")
    quantizers = find_units(model, "quantizer")
    assert len(quantizers) == 12 and quantizers[1].layers == ("0",)
    blocks = find_units(model, "block")  # auto depth 1
    assert [u.name for u in blocks] == ["0", "2", "4", "6", "8"]
    assert blocks[2].layers == ("4.0", "4.2") and len(blocks[2].quantizers) == 4
    assert blocks[2].ignore_regexes() == [r"^4(\..+)?$"]


def test_units_require_calibration():
    model = build_model()
    qdqtorch.quantize_model(model)
    with pytest.raises(ValueError, match="no amax"):
        find_units(model)


def test_job_switch_sets():
    model = quantized_toy()
    units = {u.name: u for u in find_units(model)}
    order = list(units)
    everything = {q for u in units.values() for q in u.quantizers}
    job = unit_jobs([units["2"]])[0]
    assert enabled_quantizers(job, units, "disable-one") == everything - set(units["2"].quantizers)
    assert enabled_quantizers(job, units, "enable-one") == set(units["2"].quantizers)
    assert [j.key for j in baseline_jobs()] == [FLOAT, QUANTIZED]
    assert enabled_quantizers(baseline_jobs()[0], units, "enable-one") == set()
    assert float_set_job([], order).key == QUANTIZED
    assert float_set_job(["2"], order).key == "unit/2"  # reuses the disable-one result
    assert float_set_job(["6", "0"], order).key == "float/0,6"
    assert float_set_job(["2"], order, reuse_unit_keys=False).key == "float/2"


def test_parsers():
    assert parse_budget("0.003") == (0.003, False)
    assert parse_budget("1%") == (0.01, True)
    with pytest.raises(ValueError, match="budget"):
        parse_budget("lots")
    assert parse_shard("1/4") == (1, 4)
    with pytest.raises(ValueError, match="0 <= K < N"):
        parse_shard("4/4")


def test_spearman_against_formula():
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 6.0, 7.0, 8.0, 7.0]
    ra, rb = average_ranks(a), average_ranks(b)
    assert rb == [1.0, 2.0, 3.5, 5.0, 3.5]
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    ref = sum((x - ma) * (y - mb) for x, y in zip(ra, rb)) / (
        sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    assert spearman(a, b) == pytest.approx(ref)
    assert spearman(a, [-x for x in a]) == pytest.approx(-1.0)
    assert spearman([1.0, 2.0], [1.0, 2.0]) is None


def test_budget_search_against_exhaustive_choice():
    """A metric where units interact: 'b' alone helps most, but 'a' (ranked first) hurts once 'b' is float."""
    gains = {"a": 0.004, "b": 0.006, "c": 0.001, "d": -0.002}

    def evaluate(names):
        value = 0.990 + sum(gains[n] for n in names)
        return value - (0.007 if {"a", "b"} <= set(names) else 0.0)

    ranked = select_within_budget(evaluate, ["a", "b", "c", "d"], 1.0, 0.990, 0.003)
    assert ranked["selected"] == ["a", "c"] and not ranked["within_budget"]  # 'b' after 'a' makes it worse
    forward = select_within_budget(evaluate, ["a", "b", "c", "d"], 1.0, 0.990, 0.0031, candidates=3)
    # step 1 tries a, b, c and keeps b (the best); step 2 tries a, c, d and keeps c (a now hurts)
    assert forward["selected"] == ["b", "c"]
    assert forward["verification"]["metric"] == pytest.approx(0.997)
    assert forward["within_budget"] and forward["verification"]["within_budget"]
    assert [s["kept"] for s in forward["steps"]] == [True, False, True, False, False, True, False]
    capped = select_within_budget(evaluate, ["a", "b", "c", "d"], 1.0, 0.990, 0.0, candidates=3, max_units=1)
    assert capped["selected"] == ["b"]
