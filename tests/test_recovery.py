"""qdqtorch.recovery: learned rounding lowers a layer's output error (checked in float64 against the float layer),
weights land exactly on the quantization grid, activation quantizers and ignored layers stay as they were, and the
exported Q/DQ ONNX reproduces the recovered fake-quant model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qdqtorch import QuantConfig, calibrate, quantize_model
from qdqtorch.quantize import named_quantizers, weight_quantizer_ids
from qdqtorch.recovery import RecoveryError, recover_weights
from qdqtorch.rules import TensorRTPlacement, apply_placement

COARSE = {"weight": {"num_bits": 4, "axis": 0}}   # 4-bit weights: rounding matters enough to measure


def _toy(seed: int = 0, config=None) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1, bias=False))
    model.eval()
    # spatially smooth inputs: correlated patches, where choosing the rounding direction pays (as in images)
    data = nn.functional.avg_pool2d(torch.randn(16, 4, 14, 14), 3, 1) * torch.linspace(0.5, 2.0, 4).view(1, 4, 1, 1)
    quantize_model(model, QuantConfig.from_dict(config or COARSE))
    calibrate(model, [data], progress=False)
    return model, data


def _float_error(model: nn.Module, float_model: nn.Module, layer: int, data: torch.Tensor) -> float:
    """Brute force in float64: || quantized layer(quantized model's input) - float layer(float input) ||^2, where the
    quantized layer's input and weight go through its own quantizers."""
    with torch.no_grad():
        xq = model[:layer](data) if layer else data
        xf = float_model[:layer](data) if layer else data
        m, f = model[layer], float_model[layer]
        wq = m._weight_quantizer(m.weight).double()
        yq = nn.functional.conv2d(m._input_quantizer(xq).double(), wq, None if m.bias is None else m.bias.double(),
                                  padding=1)
        yf = nn.functional.conv2d(xf.double(), f.weight.double(), None if f.bias is None else f.bias.double(),
                                  padding=1)
        return float((yq - yf).pow(2).sum())


def _float_copy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1, bias=False)).eval()


@pytest.mark.parametrize("method", ["adaround", "gptq"])
def test_learned_rounding_lowers_each_layers_output_error_below_nearest(method):
    model, data = _toy(config={**COARSE, "input": {"num_bits": 16}})   # fine inputs: the error is the rounding's
    float_model = _float_copy()
    nearest = [_float_error(model, float_model, i, data) for i in (0, 2)]
    recover_weights(model, [data], method=method, bias_correction=False, num_images=16, progress=False)
    recovered = [_float_error(model, float_model, i, data) for i in (0, 2)]
    assert all(after <= before * (1 + 1e-9) for before, after in zip(nearest, recovered)), (nearest, recovered)
    assert recovered[1] < 0.8 * nearest[1], (method, nearest, recovered)   # correlated post-ReLU inputs


def test_bias_correction_cancels_the_mean_output_error():
    model, data = _toy()
    float_model = _float_copy()
    recover_weights(model, [data], method="nearest", bias_correction=True, num_images=16, progress=False)
    with torch.no_grad():
        m = model[2]
        xq = m._input_quantizer(model[:2](data)).double()
        yq = nn.functional.conv2d(xq, m._weight_quantizer(m.weight).double(), m.bias.double(), padding=1)
        yf = nn.functional.conv2d(float_model[:2](data).double(), float_model[2].weight.double(), padding=1)
    assert model[2].bias is not None   # the bias-free conv got one
    assert float((yq - yf).mean((0, 2, 3)).abs().max()) < 1e-4


def test_weights_end_on_the_grid_and_activation_quantizers_are_untouched():
    model, data = _toy()
    weights = weight_quantizer_ids(model)
    amax_before = {n: q.amax.clone() for n, q in named_quantizers(model)}
    recover_weights(model, [data], method="adaround", num_images=16, progress=False, iters=100)
    for name, q in named_quantizers(model):
        assert torch.equal(q.amax, amax_before[name]), name
    for m in (model[0], model[2]):
        assert torch.equal(m._weight_quantizer(m.weight), m.weight)   # re-quantizing is the identity
        codes = m.weight / (m._weight_quantizer.amax / 7).view(-1, 1, 1, 1)
        assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 7
    assert all(id(q) in weights for _, q in named_quantizers(model) if q.axis == 0)


def test_ignored_and_disabled_layers_keep_their_weights():
    model, data = _toy(config={**COARSE, "ignore": [r"2"]})
    kept = model[2].weight.detach().clone()
    model[0]._weight_quantizer.disable()
    first = model[0].weight.detach().clone()
    with pytest.raises(RecoveryError, match="no quantized Conv/Linear"):
        recover_weights(model, [data], num_images=4, progress=False)
    assert torch.equal(model[2].weight, kept) and torch.equal(model[0].weight, first)


def test_uncalibrated_model_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    quantize_model(model)
    with pytest.raises(RecoveryError, match="calibrate"):
        recover_weights(model, [torch.randn(2, 3, 8, 8)], progress=False)


def test_interrupt_restores_the_model(monkeypatch):
    model, data = _toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    import qdqtorch.recovery.recover as rec
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    real = rec.solve
    monkeypatch.setattr(rec, "solve", boom)
    with pytest.raises(KeyboardInterrupt):
        recover_weights(model, [data], method="adaround", num_images=16, progress=False, iters=10)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_export_reproduces_the_recovered_model(tmp_path):
    pytest.importorskip("onnxruntime")
    from qdqtorch.export import export_onnx
    from qdqtorch.export.runtime import OnnxRuntimeModule
    model, data = _toy(config={})   # 8-bit: ONNX Q/DQ
    recover_weights(model, [data], method="adaround", num_images=16, progress=False, iters=100)
    path = export_onnx(model, data[:1], tmp_path / "rec.onnx")
    with torch.no_grad():
        fake = model(data[:4])
    ort = OnnxRuntimeModule(path)(data[:4])
    step = float(model[2]._input_quantizer.amax) / 127 * float(model[2].weight.abs().max()) * 72
    assert torch.allclose(ort, fake, atol=max(step, 1e-4)), float((ort - fake).abs().max())


def test_compensation_through_quantized_inputs_lowers_the_second_layers_error():
    model, data = _toy()   # 8-bit inputs: layer 2 also corrects the error its quantized input carries
    float_model = _float_copy()
    before = _float_error(model, float_model, 2, data)
    recover_weights(model, [data], method="gptq", bias_correction=True, num_images=16, progress=False)
    assert _float_error(model, float_model, 2, data) < 0.6 * before


def _head_snr(model: nn.Module, reference: list, images: torch.Tensor) -> float:
    outs: list = []
    hooks = [m.register_forward_hook(lambda mod, i, o: outs.append(o.double())) for m in model.model[-1].m]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    if not reference:
        reference.extend(outs)
        return float("inf")
    signal = sum(float(r.pow(2).sum()) for r in reference)
    noise = sum(float((r - o).pow(2).sum()) for r, o in zip(reference, outs))
    return 10 * torch.log10(torch.tensor(signal / noise)).item()


def test_yolov5n_recovery_raises_the_output_snr_over_plain_ptq(yolov5n_path, coco128_dir):
    from conftest import YOLOV5_REPO_FIXTURE
    from qdqtorch.data import Preprocess, calibration_loader
    from qdqtorch.models import load_model
    loaded = load_model(yolov5n_path, repo=YOLOV5_REPO_FIXTURE)
    model = loaded.model
    pp = Preprocess(imgsz=160, stride=loaded.stride)
    yaml = coco128_dir / "coco128.yaml"
    train = next(iter(calibration_loader(yaml, pp, batch_size=4, num_images=4)))
    val = next(iter(calibration_loader(yaml, pp, batch_size=4, num_images=4, split="val")))
    reference: list = []
    _head_snr(model, reference, val)
    quantize_model(model, QuantConfig(ignore=list(loaded.default_ignore)))
    apply_placement(model, TensorRTPlacement(), val[:1])
    calibrate(model, [train], method="max", progress=False)
    ptq = _head_snr(model, reference, val)
    report = recover_weights(model, [train], num_images=4, progress=False, iters=100)
    assert len(report.layers) == 60 and not report.skipped
    assert _head_snr(model, reference, val) > ptq + 0.3   # measured on held-out images


def test_ptq_script_recovers_the_embedded_demo(tmp_path):
    from conftest import REPO_ROOT
    import json
    import subprocess
    import sys
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "ptq.py"), "--out", str(out), "--recover",
                           "adaround", "--recover-images", "4", "--no-export"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recovery"]["method"] == "adaround" and summary["recovery"]["images"] == 4
    assert "recover" in summary["timings"] and "recovery" in summary["fields"]
