"""qdqtorch.recovery: learned rounding lowers a layer's output error (checked in float64 against the float layer),
weights land exactly on the quantization grid, activation quantizers and ignored layers stay as they were, and the
exported Q/DQ ONNX reproduces the recovered fake-quant model."""
from __future__ import annotations

from pathlib import Path

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


@pytest.mark.parametrize("method", ["adaround", "nearest+ranges", "distill"])
def test_ptq_script_recovers_the_embedded_demo(tmp_path, method):
    from conftest import REPO_ROOT
    import json
    import subprocess
    import sys
    out = tmp_path / "run"
    def ptq(out: Path, *extra: str) -> dict:
        proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "ptq.py"), "--out", str(out), "--recover",
                               method, "--recover-images", "4", "--recover-epochs", "2", "--no-export", *extra],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads((out / "summary.json").read_text())
    summary = ptq(out)
    assert summary["recovery"]["method"] == method and summary["recovery"]["images"] == 4
    assert ("ranges" in summary["recovery"]) == method.endswith("ranges")
    if method == "distill":
        assert summary["recovery"]["epochs"] == 2 and summary["recovery"]["steps"] == 2
        assert summary["recovery"]["learned_amax"] == []
        learned = ptq(tmp_path / "learned", "--recover-learn-amax")["recovery"]["learned_amax"]
        amax = {run: {name: q.get("amax") for name, q in
                      json.loads((tmp_path / run / "calibration.json").read_text())["quantizers"].items()}
                for run in ("run", "learned")}
        moved = [name for name in learned if amax["run"][name] != amax["learned"][name]]
        assert learned and moved, "the learned amax values must reach calibration.json"
    assert "recover" in summary["timings"] and "recovery" in summary["fields"]


# ---- refine_ranges: activation amax fitted to the network's output ------------------------------------------------

class _Branches(nn.Module):
    """Two conv branches concatenated into a third conv: TensorRT rules tie the Concat inputs' quantizers."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.c = nn.Conv2d(12, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1))


def test_recover_setting_names_the_valid_choices():
    from qdqtorch.ptq import PTQSettings
    assert PTQSettings(recover="adaround+ranges").recover == "adaround+ranges"
    with pytest.raises(ValueError, match="recover must be one of"):
        PTQSettings(recover="ranges+adaround")


def _branches(config: dict, rules: bool = True) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    model = _Branches().eval()
    float_model = _Branches().eval()
    float_model.load_state_dict(model.state_dict())
    data = nn.functional.avg_pool2d(torch.randn(16, 4, 14, 14), 3, 1)
    data[0, :, 2, 2] = 12.0    # an outlier that max calibration stretches every range for
    quantize_model(model, QuantConfig.from_dict(config))
    if rules:
        apply_placement(model, TensorRTPlacement(), data[:1])
    calibrate(model, [data], method="max", progress=False)
    return model, float_model, data


def _output_mse(model: nn.Module, float_model: nn.Module, data: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(data).double() - float_model(data).double()).pow(2).mean())


def test_refined_ranges_lower_the_output_error_below_calibration_and_stay_tied():
    from qdqtorch.recovery import refine_ranges
    from qdqtorch.rules import TiedQuantizer
    model, float_model, data = _branches({"input": {"num_bits": 4}})
    weights = weight_quantizer_ids(model)
    tied = [q for _, q in named_quantizers(model) if isinstance(q, TiedQuantizer)]
    assert tied, "the placement should tie the Concat inputs"
    w_before = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("_amax")}
    w_amax = {n: q.amax.clone() for n, q in named_quantizers(model) if id(q) in weights}
    tied_before = float(tied[0].amax)
    before = _output_mse(model, float_model, data)
    report = refine_ranges(model, [data], num_images=16, iters=150, lr=0.05, batch_size=8, progress=False)
    after = _output_mse(model, float_model, data)
    assert after < 0.7 * before, (before, after)
    assert report.error_after < report.error_before
    # tied: every site still reads one quantizer object, whose amax was learned
    assert float(tied[0].amax) != tied_before
    sites = [m for m in model.modules() for v in m.children() if v is tied[0]]
    assert len(sites) >= 2, sites
    # weights and weight quantizers untouched
    after_state = model.state_dict()
    assert all(torch.equal(after_state[k], v) for k, v in w_before.items())
    assert all(torch.equal(q.amax, w_amax[n]) for n, q in named_quantizers(model) if id(q) in weights)


def test_refined_ranges_respect_ignore_and_restore_on_interrupt(monkeypatch):
    from qdqtorch.recovery import refine_ranges
    model, _, data = _branches({"input": {"num_bits": 4}, "ignore": [r"c"]}, rules=False)
    model.a._input_quantizer.disable()
    amax = {n: q.amax.clone() for n, q in named_quantizers(model) if q.amax is not None}
    assert not hasattr(model.c, "_input_quantizer")   # ignored: left a float Conv2d
    import qdqtorch.recovery.ranges as rr
    real = rr._output_error
    calls = []

    def boom(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(rr, "_output_error", boom)
    with pytest.raises(KeyboardInterrupt):
        refine_ranges(model, [data], num_images=16, iters=20, progress=False)
    assert all(torch.equal(q.amax, amax[n]) for n, q in named_quantizers(model) if q.amax is not None)
    monkeypatch.setattr(rr, "_output_error", real)
    report = refine_ranges(model, [data], num_images=16, iters=20, progress=False)
    assert "b._input_quantizer" in report.amax and "a._input_quantizer" not in report.amax
    assert not model.a._input_quantizer.is_enabled
    assert torch.equal(model.a._input_quantizer.amax, amax["a._input_quantizer"])


def test_export_reproduces_the_refined_ranges(tmp_path):
    pytest.importorskip("onnxruntime")
    from qdqtorch.export import export_onnx
    from qdqtorch.export.runtime import OnnxRuntimeModule
    from qdqtorch.quantize import load_calibration, save_calibration
    from qdqtorch.recovery import refine_ranges
    model, _, data = _branches({})   # 8-bit: ONNX Q/DQ
    refine_ranges(model, [data], num_images=16, iters=40, lr=0.05, progress=False)
    path = export_onnx(model, data[:1], tmp_path / "ranges.onnx")
    with torch.no_grad():
        fake = model(data[:4])
    ort = OnnxRuntimeModule(path)(data[:4])
    step = float(model.c._input_quantizer.amax) / 127 * float(model.c.weight.detach().abs().max()) * 12
    assert torch.allclose(ort, fake, atol=max(step, 1e-4)), float((ort - fake).abs().max())
    save_calibration(model, tmp_path / "calibration.json")
    fresh, _, _ = _branches({})
    load_calibration(fresh, tmp_path / "calibration.json")
    with torch.no_grad():
        assert torch.equal(fresh(data), model(data))


# ---- reconstruct_blocks: weight rounding and activation ranges fitted per block (QDrop) ---------------------------

def _blocks(config: dict, rules: bool = True, seed: int = 2) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """Three blocks: conv-ReLU-conv-ReLU, two branches into a Concat (tied under the rules), a 1x1 head."""
    def make() -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1),
                                           nn.ReLU()), _Branches(), nn.Conv2d(5, 3, 1)).eval()
    model, float_model = make(), make()
    torch.manual_seed(seed)
    data = nn.functional.avg_pool2d(torch.randn(16, 4, 14, 14), 3, 1) * torch.linspace(0.5, 2.0, 4).view(1, 4, 1, 1)
    quantize_model(model, QuantConfig.from_dict(config))
    if rules:
        apply_placement(model, TensorRTPlacement(), data[:1])
    calibrate(model, [data], method="mse", progress=False)
    return model, float_model, data


def test_block_reconstruction_lowers_the_block_output_error_below_nearest_and_stays_tied():
    from qdqtorch.recovery.blocks import reconstruct_blocks
    from qdqtorch.rules import TiedQuantizer
    model, float_model, data = _blocks({**COARSE, "input": {"num_bits": 16}})   # the error is the rounding's
    tied = [q for _, q in named_quantizers(model) if isinstance(q, TiedQuantizer)]
    assert tied, "the placement should tie the Concat inputs"

    def first_block_error() -> float:   # block 0 sees the same images in both models: checked directly
        with torch.no_grad():
            q, f = model[0](data).double(), float_model[0](data).double()
        return float((q - f).pow(2).sum() / f.pow(2).sum())
    before = first_block_error()
    report = reconstruct_blocks(model, [data], num_images=16, iters=150, batch_size=8, progress=False)
    assert [b.name for b in report.blocks] == ["0", "1", "2"]
    assert all(b.error_after <= b.error_before for b in report.blocks)
    assert report.blocks[0].kept and first_block_error() < 0.9 * before, (before, first_block_error())
    # the tied quantizer is still one object on several sites
    sites = [m for m in model.modules() for v in m.children() if v is tied[0]]
    assert len(sites) >= 2, sites
    # kept blocks' weights lie on the grid of the calibrated weight amax: re-quantizing is the identity
    for b in report.blocks:
        for m in model[int(b.name)].modules():
            if b.kept and hasattr(m, "_weight_quantizer"):
                assert torch.allclose(m._weight_quantizer(m.weight), m.weight, atol=1e-6), b.name


def test_block_reconstruction_respects_ignore_and_restores_on_interrupt(monkeypatch):
    from qdqtorch.recovery import RecoveryError
    from qdqtorch.recovery import blocks as blk
    model, _, data = _blocks({**COARSE, "ignore": [r"^2$"]}, rules=False)
    assert not hasattr(model[2], "_weight_quantizer")     # ignored: left a float Conv2d
    model[1].a._input_quantizer.disable()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = blk._output_error
    calls = []

    def boom(*args):
        calls.append(1)
        if len(calls) == 160:      # inside the second block, after the first was hardened
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(blk, "_output_error", boom)
    with pytest.raises(KeyboardInterrupt):
        blk.reconstruct_blocks(model, [data], num_images=16, iters=100, progress=False)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    monkeypatch.setattr(blk, "_output_error", real)
    report = blk.reconstruct_blocks(model, [data], num_images=16, iters=30, progress=False)
    assert [b.name for b in report.blocks] == ["0", "1"]          # the ignored head has nothing to learn
    assert not model[1].a._input_quantizer.is_enabled
    assert torch.equal(model[1].a._input_quantizer.amax, before["1.a._input_quantizer._amax"])
    assert torch.equal(model[2].weight, before["2.weight"])
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3))
    quantize_model(fresh)
    with pytest.raises(RecoveryError, match="calibrate"):
        blk.reconstruct_blocks(fresh, [torch.randn(2, 3, 8, 8)], progress=False)


def test_export_and_calibration_reproduce_the_reconstructed_blocks(tmp_path):
    pytest.importorskip("onnxruntime")
    from qdqtorch.export import export_onnx
    from qdqtorch.export.runtime import OnnxRuntimeModule
    from qdqtorch.quantize import load_calibration, save_calibration
    from qdqtorch.recovery.blocks import reconstruct_blocks
    model, _, data = _blocks({})   # 8-bit: ONNX Q/DQ
    report = reconstruct_blocks(model, [data], num_images=16, iters=60, progress=False)
    assert any(b.kept for b in report.blocks)
    path = export_onnx(model, data[:1], tmp_path / "blocks.onnx")
    with torch.no_grad():
        fake = model(data[:4])
    ort = OnnxRuntimeModule(path)(data[:4])
    step = float(model[2]._input_quantizer.amax) / 127 * float(model[2].weight.detach().abs().max()) * 5
    assert torch.allclose(ort, fake, atol=max(step, 1e-4)), float((ort - fake).abs().max())
    # weights are saved with the model, activation amax in calibration.json: both together reproduce it
    save_calibration(model, tmp_path / "calibration.json")
    fresh, _, _ = _blocks({})
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("_amax")}, strict=False)
    load_calibration(fresh, tmp_path / "calibration.json")
    with torch.no_grad():
        assert torch.equal(fresh(data), model(data))
