"""TensorQuantizer's public mode and snapshot/restore; one calibration-method vocabulary; descriptor key migration."""
import argparse
import importlib.util
import itertools
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from qdqtorch import QuantConfig, QuantDescriptor, TensorQuantizer, collect_stats, named_quantizers, quantize_model
from qdqtorch.calib import (AMAX_METHODS, CALIBRATORS, WEIGHT_METHODS, HistogramCalibrator, MaxCalibrator,
                            calibrator_for)
from qdqtorch.nn import QuantizerMode, preserve_quantizer_state

ROOT = Path(__file__).resolve().parents[1]
ALL_MODES = [QuantizerMode(*flags) for flags in itertools.product((False, True), repeat=3)]


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    quantize_model(model)
    return model


def test_set_mode_drives_forward_and_mode_reads_it_back():
    q = TensorQuantizer({"amax": 1.0})
    x = torch.tensor([0.3001, -2.0, 0.5])
    for mode in ALL_MODES:
        q.set_mode(mode)
        assert q.mode == mode and q.is_enabled == mode.enabled
        out = q(x)
        expected_quant = mode.enabled and mode.quant
        # 8-bit narrow range, amax 1: step 1/127, clipped at +-1 (an independent formula, not the kernel)
        ref = torch.clamp(torch.round(x * 127), -127, 127) / 127 if expected_quant else x
        assert torch.allclose(out, ref)
        assert (q.calibrator.num_collected > 0) == (mode.enabled and mode.calib)
        q.calibrator.reset()
    q.set_mode(QuantizerMode(), calib=True)  # keyword flags override the given mode
    assert q.mode == QuantizerMode(enabled=True, quant=True, calib=True)


def test_set_mode_calib_without_calibrator_is_a_clear_error():
    q = TensorQuantizer()
    q.calibrator = None
    with pytest.raises(Exception, match="has no calibrator"):
        q.set_mode(calib=True)
    assert q.mode.calib is False


@pytest.mark.parametrize("with_amax", [False, True])
def test_preserve_quantizer_state_restores_exactly_after_an_exception(with_amax):
    model = _model()
    quantizers = [q for _, q in named_quantizers(model)]
    for q, mode in zip(quantizers, itertools.cycle(ALL_MODES[1::2])):  # varied starting modes
        q.set_mode(mode)
    quantizers[0].amax = 0.5
    quantizers[1].amax = [1.0, 2.0, 3.0, 4.0]
    before = [(q.mode, None if q.amax is None else q.amax.clone()) for q in quantizers]
    with pytest.raises(RuntimeError, match="boom"):
        with preserve_quantizer_state(model, amax=with_amax) as inside:
            assert inside == quantizers
            for q in inside:
                q.set_mode(enabled=False, quant=False, calib=False)
                q.amax = 9.0 if q.axis is None else torch.full((q.amax.numel() if q.amax is not None else 4,), 9.0)
            raise RuntimeError("boom")
    for q, (mode, amax) in zip(quantizers, before):
        assert q.mode == mode
        if with_amax:
            assert (q.amax is None) == (amax is None)
            if amax is not None:
                assert torch.equal(q.amax, amax)
        else:
            assert q.amax is not None and float(q.amax.flatten()[0]) == 9.0  # amax not saved: left as set


def test_restore_keeps_a_learned_amax_the_same_parameter():
    q = TensorQuantizer({"learn_amax": True, "amax": 2.0})
    param = q.amax
    assert isinstance(param, nn.Parameter) and q.is_learnable
    snap = q.snapshot(amax=True)
    with torch.no_grad():
        param.mul_(3)
    q.restore(snap)
    assert q.amax is param and float(param.detach()) == 2.0


def test_collect_stats_leaves_modes_exactly_as_found():
    model = _model()
    quantizers = [q for _, q in named_quantizers(model)]
    for q, mode in zip(quantizers, itertools.cycle([QuantizerMode(True, False, False), QuantizerMode(True, True,
                                                                                                     False)])):
        q.set_mode(mode)
    before = [q.mode for q in quantizers]
    collect_stats(model, [torch.randn(1, 3, 8, 8)], progress=False)
    assert [q.mode for q in quantizers] == before


def test_calibrator_state_round_trip_equals_brute_force():
    data = [torch.randn(2, 4, 5) * (i + 1) for i in range(3)]
    mx, hist = MaxCalibrator(axis=1), HistogramCalibrator()
    for x in data:
        mx.collect(x)
        hist.collect(x)
    mx2, hist2 = MaxCalibrator(axis=1), HistogramCalibrator()
    mx2.load_state(mx.state())
    hist2.load_state(hist.state())
    everything = torch.cat(data)
    assert torch.equal(mx2.compute_amax(), everything.abs().amax(dim=(0, 2)))
    assert mx2.num_collected == 3 and hist2.num_collected == 3
    assert hist2.compute_amax("max").item() == pytest.approx(everything.abs().max().item())
    assert torch.equal(hist2.counts, hist.counts) and hist2.counts.sum() == everything.numel()


# ---- descriptor keys: one meaning each ---------------------------------------------------------------------------
def test_old_histogram_calib_method_names_the_new_key():
    with pytest.raises(ValueError, match=r"calibrator='histogram'"):
        QuantDescriptor(calib_method="histogram")
    with pytest.raises(ValueError, match=r"QuantConfig\.input: .*calibrator='histogram'"):
        QuantConfig.from_dict({"input": {"calib_method": "histogram"}})
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match=r"layer '0'.*calibrator='histogram'"):
        quantize_model(model, {"overrides": [{"0": {"input": {"calib_method": "histogram"}}}]})


def test_calibrator_kind_follows_the_one_decision():
    for method in AMAX_METHODS:
        desc = QuantDescriptor(calib_method=method)
        assert desc.calibrator_kind == calibrator_for(method)
        expected = HistogramCalibrator if method in ("entropy", "mse", "percentile") else MaxCalibrator
        assert isinstance(TensorQuantizer(desc).calibrator, expected)
    assert QuantDescriptor().calibrator_kind == "max"
    assert isinstance(TensorQuantizer({"calibrator": "histogram"}).calibrator, HistogramCalibrator)
    with pytest.raises(ValueError, match="needs calibrator='histogram'"):
        QuantDescriptor(calib_method="entropy", calibrator="max")
    with pytest.raises(ValueError, match="per-tensor only"):
        QuantDescriptor(axis=0, calibrator="histogram")
    assert set(CALIBRATORS) == {calibrator_for(m) for m in AMAX_METHODS}


# ---- one vocabulary ----------------------------------------------------------------------------------------------
def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _choices(parser, option):
    return next(tuple(a.choices) for a in parser._actions if option in a.option_strings)


def test_scripts_offer_exactly_the_vocabulary(monkeypatch):
    parsers = []
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, *a, **k: parsers.append(self))
    _load_script("ptq").parse_args([])
    parsers.append(_load_script("sensitivity").run_parser())
    for parser in parsers:
        assert _choices(parser, "--calib-method") == AMAX_METHODS
        assert _choices(parser, "--weight-method") == WEIGHT_METHODS


def test_every_amax_method_is_computable_and_no_other_name_is():
    hist = HistogramCalibrator()
    hist.collect(torch.linspace(-3, 3, 1001))
    for method in AMAX_METHODS:
        assert 0 < hist.compute_amax(method).item() <= 3.0
    with pytest.raises(ValueError, match="choose one of"):
        hist.compute_amax("histogram")
    from qdqtorch.calib import weight_amax
    for method in WEIGHT_METHODS:
        assert weight_amax(torch.randn(4, 3), 0, method=method).shape == (4,)


def test_method_names_are_defined_once():
    """No tuple/list of method names is spelled out outside qdqtorch/calib/methods.py (library and scripts)."""
    pattern = re.compile(r"""[\(\[]\s*["'](max|entropy|mse|percentile)["']\s*,\s*["'](entropy|mse|percentile|admm)""")
    offenders = [str(p.relative_to(ROOT)) for folder in ("qdqtorch", "scripts") for p in (ROOT / folder).rglob("*.py")
                 if p.name != "methods.py" and pattern.search(p.read_text())]
    assert offenders == []


def test_no_private_quantizer_fields_outside_nn():
    pattern = re.compile(r"\._(disabled|if_quant|if_calib|calibrator|amax)\b")
    offenders = []
    for folder in ("qdqtorch", "scripts", "benchmarks", "examples"):
        for p in (ROOT / folder).rglob("*.py"):
            rel = p.relative_to(ROOT)
            if rel.parts[:2] == ("qdqtorch", "nn"):
                continue
            offenders += [f"{rel}:{i}" for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_missing_optional_dependency_names_the_extra():
    from qdqtorch.optional import require
    with pytest.raises(ImportError, match=r'pip install -e "\.\[plots\]"'):
        require("qdqtorch_no_such_module", "nosuchpkg", "plots", "a chart")
