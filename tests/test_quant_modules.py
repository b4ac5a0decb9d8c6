"""Quantized twins keep the float layer's behaviour; quantize_model replaces, ignores, overrides and reports."""
import json

import pytest
import torch
from torch import nn

import qdqtorch
from qdqtorch import QuantConfig, QuantDescriptor, TensorQuantizer, quantize_model
from qdqtorch.nn import (QuantAdd, QuantConcat, QuantConv1d, QuantConv2d, QuantConv3d, QuantConvTranspose1d,
                         QuantConvTranspose2d, QuantConvTranspose3d, QuantLinear, QuantMaxPool2d)
from qdqtorch.tensor_quant import fake_tensor_quant

FLOAT_LAYERS = [
    (nn.Conv1d(4, 6, 3, padding=2, dilation=2, padding_mode="reflect"), QuantConv1d, (2, 4, 11)),
    (nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, bias=False), QuantConv2d, (2, 4, 9, 9)),
    (nn.Conv3d(2, 4, 3, padding=1, padding_mode="circular"), QuantConv3d, (1, 2, 5, 5, 5)),
    (nn.ConvTranspose1d(4, 6, 3, stride=2, output_padding=1), QuantConvTranspose1d, (2, 4, 7)),
    (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, output_padding=1, dilation=1), QuantConvTranspose2d,
     (1, 4, 5, 5)),
    (nn.ConvTranspose3d(2, 4, 2, stride=2), QuantConvTranspose3d, (1, 2, 3, 3, 3)),
    (nn.Linear(7, 5), QuantLinear, (3, 7)),
]


@pytest.mark.parametrize("layer,twin_cls,shape", FLOAT_LAYERS, ids=lambda v: getattr(v, "__name__", ""))
def test_disabled_twin_is_bit_identical_and_shares_parameters(layer, twin_cls, shape):
    torch.manual_seed(0)
    twin = twin_cls.from_float(layer)
    assert twin.weight is layer.weight and twin.bias is layer.bias
    for attr in ("stride", "padding", "dilation", "groups", "padding_mode", "output_padding"):
        if hasattr(layer, attr):
            assert getattr(twin, attr) == getattr(layer, attr)
    twin._input_quantizer.disable()
    twin._weight_quantizer.disable()
    x = torch.randn(*shape)
    assert torch.equal(twin(x), layer(x))


@pytest.mark.parametrize("layer,twin_cls,shape", FLOAT_LAYERS, ids=lambda v: getattr(v, "__name__", ""))
def test_enabled_twin_equals_float_layer_on_fake_quantized_tensors(layer, twin_cls, shape):
    torch.manual_seed(1)
    twin = twin_cls.from_float(layer)
    x = torch.randn(*shape)
    axis = twin._weight_quantizer.axis
    expected_axis = 1 if "Transpose" in twin_cls.__name__ else 0
    assert axis == expected_axis
    w_amax = layer.weight.detach().abs().amax(dim=[d for d in range(layer.weight.dim()) if d != axis])
    twin._input_quantizer.amax = 1.5
    twin._weight_quantizer.amax = w_amax
    xq = fake_tensor_quant(x, torch.tensor(1.5), narrow_range=False)
    wq = fake_tensor_quant(layer.weight.detach(), w_amax, axis=axis)
    with torch.no_grad():
        original = layer.weight.data.clone()
        layer.weight.data.copy_(wq)
        expected = layer(xq)
        layer.weight.data.copy_(original)
        assert torch.allclose(twin(x), expected, atol=1e-5)


def test_twin_keeps_dtype_and_training_mode():
    layer = nn.Conv2d(3, 4, 1).double().train(False)
    twin = QuantConv2d.from_float(layer)
    assert twin.weight.dtype == torch.float64 and not twin.training


def test_pooling_add_concat():
    pool = QuantMaxPool2d.from_float(nn.MaxPool2d(3, 1, 1))
    pool._input_quantizer.amax = 2.0
    x = torch.randn(1, 2, 5, 5) * 3
    expected = fake_tensor_quant(x, torch.tensor(2.0), narrow_range=False)  # activations: full int8 range
    assert torch.equal(pool(x), nn.functional.max_pool2d(expected, 3, 1, 1))
    add = QuantAdd(quantize=(False, True))
    add._input1_quantizer.amax = 1.0
    a, b = torch.randn(10), torch.randn(10) * 4
    assert torch.equal(add(a, b), a + fake_tensor_quant(b, torch.tensor(1.0), narrow_range=False))
    cat = QuantConcat(dim=0)
    cat._input_quantizer.amax = 1.0
    assert torch.equal(cat([a, b]), fake_tensor_quant(torch.cat([a, b]), torch.tensor(1.0), narrow_range=False))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(torch.relu(self.bn(self.conv(x))))


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(Block(), Block().requires_grad_(True), nn.Flatten(), nn.Linear(8 * 2 * 2, 4))


def fixed_first_conv_model():
    m = make_model()
    m[1].conv = nn.Conv2d(8, 8, 3, padding=1)
    return m


def test_quantize_model_replaces_ignores_and_reports():
    model = fixed_first_conv_model()
    with pytest.warns(UserWarning, match="nearest"):
        report = quantize_model(model, {"ignore": [r"1\.conv", r"1\.convv2"]})
    assert isinstance(model[0].conv, QuantConv2d) and isinstance(model[3], QuantLinear)
    assert type(model[1].conv) is nn.Conv2d
    assert [r[0] for r in report.replaced] == ["0.conv", "3"]
    assert report.ignored == [("1.conv", "Conv2d", r"1\.conv")]
    assert r"1\.convv2" in report.unmatched_ignore and "1.conv" in report.unmatched_ignore[r"1\.convv2"]
    assert model[0].conv._input_quantizer.name == "0.conv._input_quantizer"
    assert "1.conv" in str(report)


def test_ignore_callable_and_pooling_types():
    model = fixed_first_conv_model()
    report = quantize_model(model, QuantConfig(modules=["Conv2d", "MaxPool2d"],
                                               ignore=lambda name, m: name.startswith("0.")))
    assert isinstance(model[1].pool, QuantMaxPool2d) and type(model[0].pool) is nn.MaxPool2d
    assert {r[0] for r in report.ignored} == {"0.conv", "0.pool"}


def test_overrides_apply_in_order_and_per_quantizer():
    model = fixed_first_conv_model()
    config = QuantConfig(overrides=[{r"0\.": {"num_bits": 16}},
                                    {r"0\.conv": {"weight": {"axis": None}, "input": {"calibrator": "histogram"}}},
                                    {r"3": {"num_bits": 4}}, {r"3$": {"num_bits": 6}}])
    report = quantize_model(model, config)
    conv = model[0].conv
    assert conv._input_quantizer.num_bits == 16 and conv._weight_quantizer.num_bits == 16
    assert conv._weight_quantizer.axis is None
    assert type(conv._input_quantizer._calibrator).__name__ == "HistogramCalibrator"
    assert model[3]._input_quantizer.num_bits == 6
    assert model[1].conv._input_quantizer.num_bits == 8
    assert report.overridden["3"] == ["3", "3$"]


def test_config_round_trips_and_rejects_bad_input(tmp_path):
    config = QuantConfig(input=QuantDescriptor(calibrator="histogram"), ignore=[r"model\.24"],
                         overrides=[{r"model\.0": {"num_bits": 16}}], modules=["Conv2d", "Linear"])
    for name in ("c.yaml", "c.json"):
        config.save(tmp_path / name)
        assert QuantConfig.from_file(tmp_path / name).to_dict() == config.to_dict()
    assert QuantDescriptor.from_json(QuantDescriptor(axis=1, amax=[1.0, 2.0]).to_json()).amax == (1.0, 2.0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['ignor'\]"):
        QuantConfig.from_dict({"ignor": []})
    (tmp_path / "bad.json").write_text(json.dumps({"input": {"num_bit": 8}}))
    with pytest.raises(ValueError, match=r"bad.json.*num_bit"):
        QuantConfig.from_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="num_bits"):
        QuantDescriptor(num_bits=1)
    with pytest.raises(ValueError, match="per-tensor only"):
        QuantDescriptor(axis=0, calibrator="histogram")
    with pytest.raises(ValueError, match="overrides.*unknown field"):
        QuantConfig(overrides=[{"x": {"bits": 4}}])
    with pytest.raises(ValueError, match="no built-in quantized twin"):
        QuantConfig(modules=["BatchNorm2d"])


def test_quant_modules_initialize_and_deactivate():
    with qdqtorch.quant_modules.initialize(quant_desc_input=QuantDescriptor(num_bits=6)):
        layer = nn.Conv2d(3, 4, 3)
        assert isinstance(layer, QuantConv2d) and layer._input_quantizer.num_bits == 6
        assert isinstance(nn.Linear(2, 2), QuantLinear)
    assert type(nn.Conv2d(3, 4, 3)) is nn.Conv2d
    qdqtorch.quant_modules.initialize()
    try:
        assert isinstance(torch.nn.modules.conv.Conv2d(1, 1, 1), QuantConv2d)
    finally:
        qdqtorch.quant_modules.deactivate()
    assert type(torch.nn.modules.conv.Conv2d(1, 1, 1)) is nn.Conv2d


def test_tensor_quantizer_modes_and_repr():
    q = TensorQuantizer()
    assert q.amax is None and q.is_enabled and "amax=None" in q.extra_repr()
    with pytest.raises(qdqtorch.CalibrationError, match="no amax"):
        q(torch.ones(3))
    q.disable()
    assert torch.equal(q(torch.ones(3)), torch.ones(3)) and "disabled" in q.extra_repr()
    q.enable()
    q.amax = 2.0
    assert "\n" not in q.extra_repr() and "amax=2" in q.extra_repr()
    q.disable_quant()
    x = torch.randn(5)
    assert torch.equal(q(x), x)

