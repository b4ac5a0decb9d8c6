"""collect_stats / compute_amax / calibrate on a small model; failure messages; state round trips."""
import pytest
import torch
from torch import nn

import qdqtorch
from qdqtorch import (CalibrationError, QuantDescriptor, calibrate, collect_stats, compute_amax,
                      disable_quantization, enable_quantization, load_calibration, named_quantizers, quant_summary,
                      quantize_model, save_calibration)


class TwoBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)
        self.unused = nn.Conv2d(8, 4, 1)

    def forward(self, x, scale: float = 1.0):
        return self.head(torch.relu(self.stem(x))) * scale


def batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=g) for _ in range(n)]


def quantized(ignore=(r"unused",), **kw):
    torch.manual_seed(0)
    model = TwoBranch()
    quantize_model(model, {"ignore": list(ignore), **kw})
    return model


def test_max_calibration_matches_brute_force_and_restores_modes():
    model = quantized()
    data = batches()
    model.train()
    calibrate(model, data, progress=False)
    assert model.training  # train/eval flag restored
    stem_in = torch.cat(data).abs().max()
    assert model.stem._input_quantizer.amax.item() == pytest.approx(stem_in.item())
    with torch.no_grad():
        head_in = torch.cat([torch.relu(nn.functional.conv2d(b, model.stem.weight, model.stem.bias, padding=1))
                             for b in data]).abs().max()
    assert model.head._input_quantizer.amax.item() == pytest.approx(head_in.item(), rel=1e-6)
    assert torch.equal(model.stem._weight_quantizer.amax, model.stem.weight.abs().amax(dim=(1, 2, 3)))
    for _, q in named_quantizers(model):
        assert q._if_quant and not q._if_calib and q.is_enabled


def test_collect_stats_accepts_tuples_dicts_and_preprocess():
    data = batches(2)
    a, b, c = quantized(), quantized(), quantized()
    collect_stats(a, data, progress=False)
    collect_stats(b, [(x, "label") for x in data], progress=False)
    collect_stats(c, [{"x": x, "scale": 1.0} for x in data], progress=False)
    for m in (a, b, c):
        compute_amax(m, progress=False)
    assert a.head._input_quantizer.amax == b.head._input_quantizer.amax == c.head._input_quantizer.amax
    d = quantized()
    collect_stats(d, [{"image": x} for x in data], preprocess=lambda batch: batch["image"], progress=False)
    compute_amax(d, progress=False)
    assert d.stem._input_quantizer.amax == a.stem._input_quantizer.amax


def test_num_batches_limits_data():
    model = quantized()
    data = batches(4)
    data[3] = data[3] * 100
    assert collect_stats(model, iter(data), num_batches=3, progress=False) == 3
    compute_amax(model, progress=False)
    assert model.stem._input_quantizer.amax.item() == pytest.approx(torch.cat(data[:3]).abs().max().item())


def test_unreached_quantizer_is_named():
    model = quantized(ignore=())
    with pytest.raises(CalibrationError, match=r"never reached.*unused\._input_quantizer"):
        calibrate(model, batches(1), progress=False)


def test_nan_in_calibration_data_names_the_quantizer():
    model = quantized()
    data = batches(2)
    data[1][0, 0, 0, 0] = float("nan")
    with pytest.raises(CalibrationError, match=r"stem\._input_quantizer.*NaN"):
        calibrate(model, data, progress=False)
    assert all(not q._if_calib for _, q in named_quantizers(model))  # modes restored after the error


def test_histogram_methods_need_histograms_and_calibrate_switches():
    model = quantized()
    collect_stats(model, batches(), progress=False)
    with pytest.raises(CalibrationError, match="histogram"):
        compute_amax(model, "entropy", progress=False)
    data = batches()
    data[0][0, 0, 0, 0] = 50.0  # one outlier: percentile clips it, max does not
    calibrate(model, data, method="percentile", progress=False, percentile=99.9)
    assert 0 < model.stem._input_quantizer.amax.item() < 5.0
    for method in ("mse", "entropy"):
        calibrate(model, data, method=method, progress=False)
        assert 0 < model.stem._input_quantizer.amax.item() <= 50.0


def test_fixed_histogram_method_in_descriptor_wins():
    model = quantized(overrides=[{"head": {"input": {"calib_method": "max"}}},
                                 {"stem": {"input": {"calib_method": "percentile"}}}])
    data = batches()
    collect_stats(model, data, progress=False)
    compute_amax(model, "max", progress=False, percentile=50.0)
    assert model.stem._input_quantizer.amax.item() < torch.cat(data).abs().max().item() * 0.8


def test_quantized_output_close_to_float_and_disable_restores_float():
    model = quantized()
    x = torch.randn(2, 3, 8, 8)
    calibrate(model, batches(), progress=False)
    with disable_quantization(model):
        float_out = model(x)
    quant_out = model(x)
    assert not torch.equal(float_out, quant_out)
    cos = nn.functional.cosine_similarity(float_out.flatten(), quant_out.flatten(), dim=0)
    assert cos > 0.999
    disable_quantization(model.head)
    assert not model.head._input_quantizer.is_enabled and model.stem._input_quantizer.is_enabled
    with enable_quantization(model):
        assert model.head._input_quantizer.is_enabled
    assert not model.head._input_quantizer.is_enabled


def test_state_dict_and_calibration_files_round_trip(tmp_path):
    model = quantized()
    calibrate(model, batches(), method="percentile", progress=False)
    x = torch.randn(1, 3, 8, 8)
    expected = model(x)
    state = model.state_dict()
    assert "stem._input_quantizer._amax" in state and "head._weight_quantizer._amax" in state
    torch.save(state, tmp_path / "sd.pt")
    fresh = quantized()
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    assert torch.equal(fresh(x), expected)
    for suffix in (".json", ".safetensors"):
        save_calibration(model, tmp_path / f"calib{suffix}")
        fresh = quantized()
        fresh.load_state_dict({k: v for k, v in state.items() if not k.endswith("_amax")}, strict=False)
        assert load_calibration(fresh, tmp_path / f"calib{suffix}") == 4
        assert torch.allclose(fresh(x), expected)
    other = quantized(ignore=())
    with pytest.raises(CalibrationError, match="does not match the model"):
        load_calibration(other, tmp_path / "calib.json")
    with pytest.raises(ValueError, match="json or .safetensors"):
        save_calibration(model, tmp_path / "calib.pt")
    assert "stem._input_quantizer" in str(quant_summary(model))


def test_amax_zero_channels_warn_and_stay_finite():
    model = quantized()
    with torch.no_grad():
        model.stem.weight[2] = 0
    with pytest.warns(UserWarning, match="amax is 0"):
        calibrate(model, [torch.zeros(1, 3, 8, 8)], progress=False)
    assert torch.isfinite(model(torch.randn(1, 3, 8, 8))).all()


def test_learn_amax_descriptor_gives_a_parameter():
    q = qdqtorch.TensorQuantizer(QuantDescriptor(learn_amax=True, amax=1.0))
    assert isinstance(q._amax, nn.Parameter)
    x = torch.randn(100) * 3
    ((q(x) - x) ** 2).mean().backward()
    assert q._amax.grad is not None and q._amax.grad < 0
