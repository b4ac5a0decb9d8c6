"""qdqtorch.qat.fine_tune, the distillation recovery step: it lowers the fake-quant model's error against its float
copy (measured here by hand, not by the function's own report), keeps every quantizer's calibration, leaves the model
as it found it (eval mode, no BatchNorm hooks, requires_grad), puts the calibrated state back when the loss did not
drop or on Ctrl-C, and the exported Q/DQ ONNX reproduces the fine-tuned model."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from qdqtorch import QuantConfig, calibrate, quantize_model
from qdqtorch.errors import QdqtorchError, UsageError
from qdqtorch.qat import fine_tune, is_batchnorm_frozen
from qdqtorch.qat.distill import DistillationLoss
from qdqtorch.quantize import named_quantizers

from conftest import YOLOV5_REPO_FIXTURE


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)))


def _toy(grid: str = "shifted") -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A calibrated 4-bit-activation model (so the loss is large enough to move), its float copy, and its images."""
    torch.manual_seed(0)
    model = _Net().eval()
    with torch.no_grad():
        for bn in (model.a[1], model.b[1]):   # non-trivial running statistics
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    float_model = copy.deepcopy(model)
    data = nn.functional.avg_pool2d(torch.rand(32, 3, 18, 18), 3, 1)
    quantize_model(model, QuantConfig.from_dict({"input": {"num_bits": 4}}))
    calibrate(model, [data], method="mse", grid=grid, progress=False)
    return model, float_model, data


def _output_error(model: nn.Module, float_model: nn.Module, data: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(data).double() - float_model(data).double()).pow(2).mean())


def _calibration(model: nn.Module) -> dict:
    return {n: (q.amax.detach().clone(), q.zero_point) for n, q in named_quantizers(model) if q.amax is not None}


def _same_state(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tune_lowers_the_error_against_float_and_keeps_the_calibration():
    model, float_model, data = _toy()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.head.bias.requires_grad_(False)                 # a frozen parameter stays frozen
    flags["head.bias"] = False
    calibration = _calibration(model)
    assert any(zp for _, zp in calibration.values())      # the shifted grid gave SiLU outputs a zero point
    before = _output_error(model, float_model, data)
    report = fine_tune(model, [data], epochs=60, num_images=32, batch_size=8, lr=2e-3, progress=False)
    after = _output_error(model, float_model, data)
    assert report.kept and report.loss_after < report.loss_before and report.steps == 240
    assert after < 0.8 * before, (before, after)
    assert report.images == 32 and len(report.epoch_losses) == 60
    for name, (amax, zp) in _calibration(model).items():
        assert torch.equal(amax, calibration[name][0]) and zp == calibration[name][1], name
    assert not model.training and not any(is_batchnorm_frozen(m) for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_a_loss_that_does_not_drop_puts_the_calibrated_model_back(monkeypatch):
    model, _, data = _toy()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    values = iter([1.0, 2.0])   # before, after: worse
    monkeypatch.setattr(DistillationLoss, "measure", lambda self, *a, **k: {"loss": next(values)})
    report = fine_tune(model, [data], epochs=2, num_images=32, lr=1e-3, progress=False)
    assert not report.kept and "put back" in str(report)
    assert _same_state(model.state_dict(), state)


def test_ctrl_c_restores_the_model_and_its_flags(monkeypatch):
    model, _, data = _toy()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    steps = []
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with pytest.raises(KeyboardInterrupt):
        fine_tune(model, [data], epochs=4, num_images=32, batch_size=8, lr=1e-3, progress=False)
    assert _same_state(model.state_dict(), state)
    assert not model.training and not any(is_batchnorm_frozen(m) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_the_callers_frozen_batchnorm_and_fixed_amax_survive_both_outcomes(monkeypatch):
    from qdqtorch.qat import freeze_batchnorm
    for outcome in ("kept", "put back"):
        model, _, data = _toy()
        freeze_batchnorm(model, only={"a.1"})              # the caller froze one BatchNorm before fine-tuning
        state = {k: v.clone() for k, v in model.state_dict().items()}
        values = iter([1.0, 2.0] if outcome == "put back" else [2.0, 1.0])   # loss before, after
        monkeypatch.setattr(DistillationLoss, "measure", lambda self, *a, **k: {"loss": next(values)})  # noqa: B023
        report = fine_tune(model, [data], epochs=2, num_images=32, batch_size=8, lr=1e-4, learn_amax=True,
                           progress=False)
        assert report.kept == (outcome == "kept")
        assert is_batchnorm_frozen(model.a[1]) and not is_batchnorm_frozen(model.b[1]), outcome
        quantizers = [q for _, q in named_quantizers(model) if q.amax is not None]
        assert quantizers and len(report.learned_amax) == len(quantizers)
        for q in quantizers:   # amax is a plain buffer again, under the same state_dict key
            assert not q.is_learnable and not q.learn_amax and "_amax" in q._buffers, (outcome, q.label)
        assert set(model.state_dict()) == set(state)
        moved = [k for k in state if k.endswith("_amax") and not torch.equal(model.state_dict()[k], state[k])]
        assert (len(moved) > 0) == (outcome == "kept"), moved   # learned values kept, or the calibration back


def test_dict_batches_go_through_preprocess():
    from qdqtorch.recovery import RecoveryError, gather_images
    model, float_model, data = _toy()
    batches = [{"img": (data[:16] * 255).round(), "labels": None}, {"img": (data[16:] * 255).round()}]
    with pytest.raises(RecoveryError, match=r"fine_tune: .*a dict with keys \['img', 'labels'\].*preprocess="):
        fine_tune(model, batches, progress=False)
    to_input = lambda b: b["img"] / 255   # noqa: E731
    gathered = gather_images(batches, 24, "cpu", preprocess=to_input)
    assert torch.equal(gathered, (data[:24] * 255).round() / 255)
    with pytest.raises(RecoveryError, match=r"preprocess\(batch\) must return"):
        gather_images(batches, 4, "cpu", preprocess=lambda b: b)
    before = _output_error(model, float_model, data)
    report = fine_tune(model, batches, epochs=20, num_images=32, batch_size=8, lr=2e-3, preprocess=to_input,
                       progress=False)
    assert report.kept and report.images == 32 and _output_error(model, float_model, data) < before
    assert "lr 0.002 constant" in str(report) and report.lr == 2e-3 and report.schedule == "constant"


def test_a_learned_amax_never_steps_below_zero():
    model, _, data = _toy()
    fine_tune(model, [data], epochs=3, num_images=32, batch_size=8, lr=1e-4, amax_lr=5.0, learn_amax=True,
              progress=False)    # steps of about 5 on amax values near 1 would cross zero
    amax = [float(v) for _, q in named_quantizers(model) if q.amax is not None for v in q.amax.flatten()]
    assert amax and all(math.isfinite(v) and v > 0 for v in amax)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_the_learning_rate_follows_the_schedule_step_by_step(monkeypatch, schedule):
    model, _, data = _toy()
    seen: list[float] = []
    real_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    lr, epochs, batch = 2e-4, 3, 8
    fine_tune(model, [data], epochs=epochs, num_images=32, batch_size=batch, lr=lr, schedule=schedule,
              progress=False)
    total = epochs * math.ceil(32 / batch)
    expected = [lr * (0.5 * (1 + math.cos(math.pi * k / total)) if schedule == "cosine" else 1.0)
                for k in range(total)]
    assert seen == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_bad_arguments_are_clear_errors():
    model, _, data = _toy()
    with pytest.raises(UsageError, match="epochs"):
        fine_tune(model, [data], epochs=0, progress=False)
    with pytest.raises(QdqtorchError, match="fine_tune: the data yielded no batch"):
        fine_tune(model, [], progress=False)
    with pytest.raises(UsageError, match="optimizer"):
        fine_tune(model, [data], optimizer="lbfgs", progress=False)
    with pytest.raises(UsageError, match="schedule"):
        fine_tune(model, [data], schedule="step", progress=False)
    from qdqtorch.nn import CalibrationError
    fresh = _Net().eval()
    quantize_model(fresh, QuantConfig())
    with pytest.raises(CalibrationError, match="calibrate"):
        fine_tune(fresh, [data], progress=False)


def test_settings_fit_distill_on_the_calibration_images():
    from qdqtorch.ptq import PTQSettings
    assert PTQSettings(recover="distill", num_calib=64).recovery_images == 64
    assert PTQSettings(recover="adaround").recovery_images == 16
    assert PTQSettings(recover="distill", recover_images=8).recovery_images == 8
    with pytest.raises(ValueError, match="bias_correction"):
        PTQSettings(recover="distill", bias_correction=True)
    with pytest.raises(ValueError, match="recover_epochs"):
        PTQSettings(recover="distill", recover_epochs=0)
    with pytest.raises(ValueError, match="recover_learn_amax works with recover='distill'"):
        PTQSettings(recover="adaround", recover_learn_amax=True)


@pytest.mark.parametrize("arch", ["yolov8n.yaml", "yolo11n.yaml"])
def test_ultralytics_heads_fine_tune_and_come_back_in_eval_mode(arch):
    """Ultralytics' Detect returns other structures in training than in eval: the teacher follows the student's
    flag, so the loss compares like with like, and afterwards the model predicts as before (eval-mode output)."""
    pytest.importorskip("ultralytics")
    from qdqtorch.models import PredictionOnly, load_model
    loaded = load_model(arch)
    model = loaded.model
    quantize_model(model, QuantConfig(ignore=list(loaded.default_ignore)))
    torch.manual_seed(0)
    data = torch.rand(8, 3, 96, 96)
    calibrate(model, [data], method="max", progress=False)
    before = PredictionOnly(model, loaded.layout)(data[:1]).shape
    report = fine_tune(model, [data], epochs=3, num_images=8, batch_size=4, lr=1e-5, progress=False)
    assert report.kept and report.loss_after < report.loss_before and report.steps == 6
    assert not model.training and PredictionOnly(model, loaded.layout)(data[:1]).shape == before == (1, 84, 189)


def _snr_db(out: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / ((out - ref) ** 2).sum()))


def test_yolov5n_fine_tune_gets_closer_to_float_and_the_export_reproduces_it(yolov5n_path, coco128_dir, tmp_path):
    """The real checkpoint, shifted grid, TensorRT rules: three epochs on 8 COCO images at 192 px raise the output SNR
    against float on those images, and ONNX Runtime runs the exported fine-tuned model as fake quant does. (Batches
    of 4 are noisier than the default 16: at the default lr 1e-5 a step there can raise the loss, so lr 1e-6.)"""
    pytest.importorskip("onnxruntime")
    from qdqtorch.data import Preprocess, calibration_loader
    from qdqtorch.export import check_qdq, export_onnx
    from qdqtorch.export.runtime import OnnxRuntimeModule
    from qdqtorch.models import PredictionOnly, load_model
    from qdqtorch.rules import apply_placement, placement_from_name

    loaded = load_model(yolov5n_path, repo=YOLOV5_REPO_FIXTURE)
    pp = Preprocess(imgsz=192, stride=loaded.stride)
    calib = list(calibration_loader(coco128_dir / "coco128.yaml", pp, batch_size=8, num_images=8))
    images = calib[0][0] if isinstance(calib[0], (list, tuple)) else calib[0]
    float_net = PredictionOnly(copy.deepcopy(loaded.model), loaded.layout)
    model = loaded.model
    quantize_model(model, QuantConfig(ignore=list(loaded.default_ignore)))
    apply_placement(model, placement_from_name("tensorrt"), images[:1])
    calibrate(model, calib, method="mse", grid="shifted", progress=False)
    net = PredictionOnly(model, loaded.layout)
    with torch.no_grad():
        ref = float_net(images).numpy()
        before = _snr_db(net(images).numpy(), ref)
    report = fine_tune(model, calib, epochs=3, num_images=8, batch_size=4, lr=4e-6, progress=False)
    with torch.no_grad():
        fake = net(images).numpy()
    assert report.kept and _snr_db(fake, ref) > before + 0.3, (before, _snr_db(fake, ref), str(report))
    path = export_onnx(net, images[:1], tmp_path / "tuned.onnx")
    assert check_qdq(path).ok
    ort = OnnxRuntimeModule(path, int8_kernels=False)(images).numpy()
    # rounding ties aside, the graph computes fake quant: far closer to it than quantization is to float
    assert _snr_db(ort, fake) > _snr_db(fake, ref) + 3.0


def test_on_epoch_sees_each_epochs_weights_and_leaves_the_run_unchanged():
    model, float_model, data = _toy()
    twin = copy.deepcopy(model)
    seen: list[tuple[int, float, bool]] = []
    training_at_entry: list[bool] = []

    def evaluate(epoch: int, m: nn.Module) -> None:
        training_at_entry.append(m.training)
        m.eval()  # what an evaluation does; fine_tune must switch back to training
        seen.append((epoch, _output_error(m, float_model, data), torch.is_grad_enabled()))

    kwargs = dict(epochs=20, num_images=32, batch_size=8, lr=2e-3, progress=False)  # long enough to be kept
    report = fine_tune(model, [data], on_epoch=evaluate, **kwargs)
    plain = fine_tune(twin, [data], **kwargs)
    assert report.kept and [e for e, _, _ in seen] == list(range(1, 21)) and not any(g for _, _, g in seen)
    assert len({err for _, err, _ in seen}) == 20  # the weights moved between the calls
    assert seen[-1][1] == pytest.approx(_output_error(model, float_model, data), rel=1e-12)  # last call: final weights
    assert all(training_at_entry)  # the previous call's eval() was undone
    assert report.epoch_losses == plain.epoch_losses  # the callback's evaluation did not change training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
