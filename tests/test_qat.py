"""qdqtorch.qat: prepare_qat, learned amax, distillation from the float copy, devices/DDP, QAT checkpoints.

Toy models check exact behaviour against independent references (brute-force amax search, a single-process step
for DDP, finite differences); YOLOv5n on the ../shared COCO images checks that a few distillation steps lower the
loss on held-out images and that a checkpoint reloads into a fresh quantized model with identical outputs.
"""
from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from qdqtorch import CalibrationError, QuantConfig, QuantDescriptor, TensorQuantizer, calibrate, named_quantizers
from qdqtorch import quantize_model
from qdqtorch.qat import (DistillationLoss, amax_parameters, default_blocks, freeze_batchnorm, is_batchnorm_frozen,
                          load_qat_checkpoint, make_amax_fixed, make_teacher, param_groups, prepare_qat,
                          save_qat_checkpoint, unfreeze_batchnorm)
from qdqtorch.tensor_quant import fake_tensor_quant

from conftest import YOLOV5_REPO_FIXTURE

IMGSZ = 256


# ------------------------------------------------------------------------------------------------- toy helpers
class Toy(nn.Module):
    """Conv-BN-ReLU blocks in a Sequential, like a YOLO backbone in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Conv2d(8, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def toy_calibrated(seed: int = 0) -> Toy:
    """A quantized, max-calibrated toy with non-trivial BatchNorm statistics (same for the same seed)."""
    torch.manual_seed(seed)
    model = Toy()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    quantize_model(model)
    calibrate(model, [torch.randn(4, 3, 8, 8) for _ in range(2)], progress=False)
    return model


# ------------------------------------------------------------------------------------------------- prepare_qat
def test_prepare_qat_turns_calibrated_amax_into_parameters_under_the_same_key():
    model = toy_calibrated()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.requires_grad_(False)
    report = prepare_qat(model, learn_amax=[r"model\.0\..*_input_quantizer", r"model\.2\._weight_quantizer"])
    assert report.learned_amax == ["model.0.0._input_quantizer", "model.2._weight_quantizer"]
    assert model.training and all(p.requires_grad for p in model.parameters())
    learned = amax_parameters(model)
    assert [p.shape for p in learned] == [torch.Size([]), torch.Size([4])]
    after = model.state_dict()
    assert list(after) == list(before)  # same keys, same order: `_amax` stays `_amax`
    for key in before:
        assert torch.equal(after[key], before[key]), key
    assert not isinstance(model.model[1][0]._input_quantizer._amax, nn.Parameter)
    groups = param_groups(model, 1e-3, amax_lr=1e-2, weight_decay=5e-4)
    assert [len(g["params"]) for g in groups] == [len(list(model.parameters())) - 2, 2]
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lr"] == 1e-2


def test_prepare_qat_refuses_uncalibrated_wrapped_or_unmatched():
    model = Toy()
    quantize_model(model)
    with pytest.raises(CalibrationError, match=r"model\.0\.0\._input_quantizer"):
        prepare_qat(model)
    calibrated = toy_calibrated()
    with pytest.raises(TypeError, match="plain model first"):
        prepare_qat(nn.DataParallel(calibrated))
    with pytest.raises(ValueError, match="nearest names"):
        prepare_qat(calibrated, learn_amax=[r"backbone\..*"])


def test_frozen_batchnorm_uses_running_statistics_after_train():
    model = toy_calibrated()
    x = torch.randn(4, 3, 8, 8) * 3 + 1
    with torch.no_grad():
        expected = model.eval()(x)
    stats = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    prepare_qat(model, freeze_bn=True)
    model.train()  # a training loop calls this every epoch
    with torch.no_grad():
        out = model(x)
    assert torch.equal(out, expected)
    assert all(torch.equal(a, m.running_mean) for a, m in
               zip(stats, [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]))
    bn = model.model[0][1]
    assert is_batchnorm_frozen(bn) and not bn.training
    copy.deepcopy(model)  # hooks must not break copying
    assert unfreeze_batchnorm(model) == 2
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), expected)  # batch statistics now
    assert not torch.equal(stats[0], model.model[0][1].running_mean)
    assert freeze_batchnorm(model) == ["model.0.1", "model.1.1"]


# ------------------------------------------------------------------------------------------------- learned amax
@pytest.fixture(scope="module")
def outlier_data():
    """Gaussian values with a few 4x outliers, and the amax minimising the float64 fake-quant MSE on a fine grid
    (the independent reference)."""
    torch.manual_seed(0)
    x = torch.randn(20000)
    x[:40] *= 4
    xd = x.double()
    grid = np.linspace(0.05, float(x.abs().max()), 1500)
    errors = [float(((fake_tensor_quant(xd, torch.tensor(a), 8) - xd) ** 2).mean()) for a in grid]
    best = int(np.argmin(errors))
    return x, float(grid[best]), errors[best]


@pytest.mark.parametrize("start", [3.0, 16.0])
def test_learned_amax_moves_towards_the_mse_optimum(start, outlier_data):
    """Too small an amax clips the outliers (amax grows); too large wastes resolution (amax shrinks); both end
    near the brute-force optimum of the quantization MSE."""
    x, best_amax, best_error = outlier_data
    assert 3.0 < best_amax < 16.0
    q = TensorQuantizer(QuantDescriptor(learn_amax=True))
    q.amax = start
    optimizer = torch.optim.Adam(q.parameters(), lr=0.15)
    for _ in range(200):
        optimizer.zero_grad()
        loss = ((q(x) - x) ** 2).mean()
        loss.backward()
        optimizer.step()
    learned = float(q.amax.detach())
    final_error = float(((fake_tensor_quant(x.double(), torch.tensor(learned), 8) - x.double()) ** 2).mean())
    assert abs(learned - best_amax) / best_amax < 0.05, (learned, best_amax)
    assert final_error < 1.02 * best_error


# ------------------------------------------------------------------------------------------------- distillation
def test_distillation_loss_matches_hand_computed_mse_and_trains_only_the_student():
    model = toy_calibrated()
    teacher = make_teacher(model)
    assert default_blocks(model) == ["model.0", "model.1"]
    prepare_qat(model, learn_amax=True)
    loss_fn = DistillationLoss(model, teacher, block_weight=0.5, output_weight=2.0)
    x = torch.randn(2, 3, 8, 8)
    loss = loss_fn(x)
    # reference: run the float and the quantized blocks by hand
    with torch.no_grad():
        f0 = teacher.model[0](x)
        f1 = teacher.model[1](f0)
        f2 = teacher.model[2](f1)
        q0 = model.model[0](x)
        q1 = model.model[1](q0)
        q2 = model.model[2](q1)
    expected = 0.5 * (((q0 - f0) ** 2).mean() + ((q1 - f1) ** 2).mean()) / 2 + 2.0 * ((q2 - f2) ** 2).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert loss_fn.last["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert list(loss_fn.state_dict()) == ["teacher." + k for k in teacher.state_dict()]  # student: not a submodule
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in amax_parameters(model))
    assert not any(q.is_enabled for _, q in named_quantizers(teacher))
    with torch.no_grad():
        model(x)  # the model also runs outside the loss (evaluation): the hooks must keep nothing
    assert not any(loss_fn._features[side] for side in ("student", "teacher"))
    with pytest.raises(ValueError, match="matches no module"):
        DistillationLoss(model, teacher, blocks=[r"backbone\.\d+"])


def _loss_without_grad(loss_fn, x):
    with torch.no_grad():
        return float(loss_fn(x))


def test_learned_amax_gradient_points_where_the_distillation_loss_falls():
    """Finite differences of the real loss agree with the sign of the learned amax's gradient."""
    model = toy_calibrated()
    teacher = make_teacher(model)
    q = model.model[1][0]._input_quantizer
    q.amax = q.amax * 0.3  # heavy clipping
    prepare_qat(model, learn_amax=[re.escape(q.name)], train_weights=False)
    loss_fn = DistillationLoss(model, teacher)
    x = torch.randn(8, 3, 8, 8)
    loss_fn(x).backward()
    grad = float(q._amax.grad)
    a = float(q.amax.detach())
    losses = {}
    for factor in (0.9, 1.0, 1.1):
        q._amax.data.fill_(a * factor)
        losses[factor] = _loss_without_grad(loss_fn, x)
    q._amax.data.fill_(a)
    assert grad < 0 and losses[1.1] < losses[1.0] < losses[0.9]
    optimizer = torch.optim.Adam(amax_parameters(model), lr=0.05)
    for _ in range(10):
        optimizer.zero_grad()
        loss_fn(x).backward()
        optimizer.step()
    assert float(q.amax.detach()) > a * 1.3 and loss_fn.last["loss"] < losses[1.0]


def test_a_learned_amax_an_optimizer_pushes_below_zero_recovers_saves_and_loads():
    """A user's own loop (no fine_tune): SGD steps large enough to cross zero must not leave a quantizer that maps
    everything to 0 for good, a checkpoint that does not load, or a make_amax_fixed that raises."""
    model, teacher = toy_calibrated(), None
    teacher = make_teacher(model)
    prepare_qat(model, learn_amax=True, train_weights=False)
    q = model.model[1][0]._input_quantizer
    loss_fn = DistillationLoss(model, teacher)
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        q._amax.fill_(-0.5)  # where a large step lands
    state = model.state_dict()
    assert float(state["model.1.0._input_quantizer._amax"]) == 0.0  # saved as the value it quantizes with
    twin = toy_calibrated(seed=1)
    twin.load_state_dict(state)  # loads: no negative amax in it
    loss_fn(x).backward()
    assert float(q.amax.detach()) > 0 and float(q._amax.grad) < 0  # projected to the floor, told to grow
    optimizer = torch.optim.SGD([q._amax], lr=0.5)
    for _ in range(20):
        optimizer.zero_grad()
        loss_fn(x).backward()
        optimizer.step()
    assert float(q.amax.detach()) > 0.05  # recovered from the floor
    with torch.no_grad():
        q._amax.fill_(-0.5)
    make_amax_fixed(q)
    assert not q.is_learnable and float(q.amax) == 0.0


# ------------------------------------------------------------------------------------------------- devices, DDP
def test_quantizers_follow_the_model_and_state_dict():
    model = toy_calibrated()
    prepare_qat(model, learn_amax=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x)
    twin = toy_calibrated(seed=1)
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(twin.eval()(x), expected)  # buffers in the twin take the learned values
    assert not amax_parameters(twin)
    on_meta = copy.deepcopy(model).to("meta")  # every amax is a registered tensor, so .to() reaches it
    assert all(q._amax.device.type == "meta" for _, q in named_quantizers(on_meta))
    assert len(amax_parameters(on_meta)) == len(amax_parameters(model)) == 6
    if torch.cuda.is_available():
        moved = copy.deepcopy(model).cuda()
        assert all(p.is_cuda for p in amax_parameters(moved))
        assert all(q._amax.is_cuda for _, q in named_quantizers(moved))
        with torch.no_grad():
            torch.testing.assert_close(moved(x.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)


def _ddp_worker(rank: int, world: int, init_file: str, batches: list, out_dir: str) -> None:
    torch.set_num_threads(1)  # forked child: keep clear of the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = toy_calibrated()
        teacher = make_teacher(model)
        prepare_qat(model, learn_amax=True)
        ddp = nn.parallel.DistributedDataParallel(model)
        loss_fn = DistillationLoss(ddp, teacher)
        optimizer = torch.optim.SGD(param_groups(model, 1.0, amax_lr=100.0), momentum=0.0)
        loss_fn(batches[rank]).backward()
        optimizer.step()
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{out_dir}/rank{rank}.pt")
        if rank == 0:
            save_qat_checkpoint(ddp, f"{out_dir}/ddp.safetensors")
    finally:
        dist.destroy_process_group()


def test_ddp_step_equals_single_process_step_on_the_whole_batch(tmp_path):
    """Two gloo ranks, each with half the batch, end with the same weights and learned amax as one process
    stepping on the whole batch (BatchNorm frozen, so the loss is a mean over samples)."""
    torch.manual_seed(3)
    batches = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    model = toy_calibrated()
    teacher = make_teacher(model)
    prepare_qat(model, learn_amax=True)
    loss_fn = DistillationLoss(model, teacher)
    optimizer = torch.optim.SGD(param_groups(model, 1.0, amax_lr=100.0), momentum=0.0)
    loss_fn(torch.cat(batches)).backward()
    optimizer.step()
    start = toy_calibrated().state_dict()
    moved = [k for k in start if not torch.equal(start[k], model.state_dict()[k])]
    assert sum(k.endswith("_amax") for k in moved) == 6 and "model.1.0.weight" in moved
    # fork (after the imports above) instead of spawn: re-importing torch in each child costs seconds
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), batches, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in model.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-5, atol=1e-6, msg=key)
    fresh = Toy()
    quantize_model(fresh)
    load_qat_checkpoint(fresh, tmp_path / "ddp.safetensors")  # no `module.` prefix in the keys
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in ranks[0].items())


# ------------------------------------------------------------------------------------------------- YOLOv5n
@pytest.fixture(scope="module")
def yolo_qat(yolov5n_path, coco128_dir):
    """YOLOv5n quantized, calibrated on 8 train images, then 2 distillation steps (batch 4) on them, 256 px;
    the distillation loss measured on 8 val images before and after."""
    from qdqtorch.data import Preprocess, calibration_loader
    from qdqtorch.models import load_model

    torch.manual_seed(0)
    loaded = load_model(yolov5n_path, repo=YOLOV5_REPO_FIXTURE)
    model = loaded.model
    config = QuantConfig(ignore=loaded.default_ignore)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_model(model, config)
    pp = Preprocess(imgsz=IMGSZ)
    train = list(calibration_loader(coco128_dir / "images" / "train2017", pp, batch_size=4, num_images=8))
    val = list(calibration_loader(coco128_dir / "images" / "val2017", pp, batch_size=8, num_images=8))
    calibrate(model, train, progress=False)
    teacher = make_teacher(model)
    learned = [r"model\.(4|17)\.cv1\.conv\._input_quantizer"]
    prepare_qat(model, freeze_bn=True, learn_amax=learned)
    bn_before = model.model[2].cv1.bn.running_mean.clone()
    amax_before = float(model.model[4].cv1.conv._input_quantizer.amax.detach())
    loss_fn = DistillationLoss(model, teacher)
    before = loss_fn.measure(val)
    optimizer = torch.optim.Adam(param_groups(model, 1e-5, amax_lr=1e-3))
    for batch in train:
        optimizer.zero_grad()
        loss_fn(batch).backward()
        optimizer.step()
    after = loss_fn.measure(val)
    return dict(loaded=loaded, model=model, teacher=teacher, config=config, val=val, before=before, after=after,
                bn_before=bn_before, amax_before=amax_before, repo=YOLOV5_REPO_FIXTURE, path=yolov5n_path)


def test_yolov5n_distillation_steps_lower_the_loss_on_val_images(yolo_qat):
    before, after = yolo_qat["before"], yolo_qat["after"]
    assert after["loss"] < 0.85 * before["loss"], (before, after)
    assert after["blocks"] < before["blocks"] and after["output"] < before["output"]
    model = yolo_qat["model"]
    assert torch.equal(model.model[2].cv1.bn.running_mean, yolo_qat["bn_before"])  # BatchNorm frozen
    assert float(model.model[4].cv1.conv._input_quantizer.amax.detach()) != yolo_qat["amax_before"]
    teacher_w = yolo_qat["teacher"].model[2].cv1.conv.weight
    assert not torch.equal(model.model[2].cv1.conv.weight, teacher_w)  # the student moved, the teacher is a copy


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_yolov5n_qat_checkpoint_reloads_into_a_fresh_quantized_model(yolo_qat, tmp_path, suffix):
    from qdqtorch.models import load_model

    model = yolo_qat["model"]
    path = save_qat_checkpoint(model, tmp_path / f"qat{suffix}", metadata={"steps": 2})
    fresh = load_model(yolo_qat["path"], repo=yolo_qat["repo"]).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_model(fresh, yolo_qat["config"])
    assert load_qat_checkpoint(fresh, path) == {"steps": 2}
    x = yolo_qat["val"][0][:2]
    model.eval()
    try:
        with torch.no_grad():
            expected, got = model(x)[0], fresh.eval()(x)[0]
    finally:
        model.train()
    assert torch.equal(got, expected)
    learned = {n for n, q in named_quantizers(fresh) if isinstance(q._amax, nn.Parameter)}
    assert learned == {"model.4.cv1.conv._input_quantizer", "model.17.cv1.conv._input_quantizer"}
    mismatched = load_model(yolo_qat["path"], repo=yolo_qat["repo"]).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_model(mismatched, QuantConfig(ignore=[r"model\.24\."]))
    with pytest.raises(CalibrationError, match=r"model\.24\.m\.0\._input_quantizer"):
        load_qat_checkpoint(mismatched, path)


def test_qat_example_scores_fidelity_of_ptq_and_qat_on_the_demo(tmp_path, capsys):
    """examples/qat_distill.py judges PTQ and QAT by fidelity too: both in summary.json, as fractions of the float
    model's own detections, and one epoch of distillation does not lose agreement with float. With --jitter-draws it
    also rescores both in one-ulp copies, the model's own figure first; a negative count is refused before any work."""
    import importlib.util
    import json

    from conftest import REPO_ROOT
    spec = importlib.util.spec_from_file_location("qat_distill", REPO_ROOT / "examples" / "qat_distill.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    demo = REPO_ROOT / "assets" / "demo"
    out = tmp_path / "qat"
    assert example.main(["--model", str(demo / "shapes_detector.safetensors"), "--images", str(demo / "shapes.yaml"),
                         "--val-data", str(demo / "shapes.yaml"), "--imgsz", "256", "--epochs", "1",
                         "--num-images", "16", "--num-eval", "16", "--num-calib", "16", "--device", "cpu",
                         "--jitter-draws", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    ptq, qat = summary["ptq"]["fidelity"], summary["qat"]["fidelity"]
    for key in ("ptq", "qat"):
        drawn = summary["jitter"][key]["figures"]
        assert drawn["fidelity"]["values"][0] == summary[key]["fidelity"]["map50_95"]
        assert drawn["map50_95"]["values"][0] == summary[key]["map50_95"]
        assert len(drawn["fidelity"]["values"]) == 3 and summary["jitter"][key]["seeds"] == [1, 2]
        assert all(0.0 <= v <= 1.0 for v in drawn["fidelity"]["values"])
    assert "QAT fidelity, the model and 2 one-ulp copies" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        example.main(["--model", "never-read.pt", "--images", "x", "--val-data", "x", "--jitter-draws", "-1"])
    assert "--jitter-draws must be 0 (off) or more" in capsys.readouterr().err
    for f in (ptq, qat):
        assert 0.0 < f["map50_95"] <= f["map50"] <= 1.0
    assert ptq["map50_95"] < 1.0                     # INT8 changes some boxes
    assert qat["map50_95"] >= ptq["map50_95"] - 0.01  # distilling towards float keeps (here: raises) agreement


def test_qat_example_keeps_the_last_finished_epoch_on_ctrl_c(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the second epoch: exit 130, qat.safetensors holds epoch 1 (it loads into a freshly quantized model
    and equals the weights after epoch 1), summary.json keeps the PTQ figures and epoch 1's loss."""
    import importlib.util
    import json

    from safetensors import safe_open

    from conftest import REPO_ROOT
    from qdqtorch.qat import DistillationLoss
    spec = importlib.util.spec_from_file_location("qat_distill", REPO_ROOT / "examples" / "qat_distill.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    calls, after_epoch_one = {"n": 0}, {}
    forward = DistillationLoss.forward

    def interrupted(self, images):
        calls["n"] += 1
        if calls["n"] == 3:  # 16 images in batches of 8: the first batch of epoch 2
            after_epoch_one.update({k: v.detach().clone() for k, v in self.student.state_dict().items()})
            raise KeyboardInterrupt
        return forward(self, images)
    monkeypatch.setattr(DistillationLoss, "forward", interrupted)
    demo, out = REPO_ROOT / "assets" / "demo", tmp_path / "qat"
    assert example.main(["--model", str(demo / "shapes_detector.safetensors"), "--images", str(demo / "shapes.yaml"),
                         "--val-data", str(demo / "shapes.yaml"), "--imgsz", "256", "--epochs", "3", "--batch", "8",
                         "--num-images", "16", "--num-eval", "16", "--num-calib", "16", "--device", "cpu",
                         "--skip-float-eval", "--out", str(out)]) == 130
    assert "interrupted in epoch 2" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted_in_epoch"] == 2 and [h["epoch"] for h in summary["history"]] == [1]
    assert "ptq" in summary and "qat" not in summary
    with safe_open(str(out / "qat.safetensors"), framework="pt") as fh:
        assert json.loads(fh.metadata()["metadata"])["epochs"] == 1
        saved = {k: fh.get_tensor(k) for k in fh.keys()}
    assert saved.keys() == after_epoch_one.keys()
    assert all(torch.equal(saved[k], after_epoch_one[k]) for k in saved)


def test_qat_checkpoint_keeps_the_shifted_grid_and_reads_files_from_before_it(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = toy_calibrated()
    q = model.model[2]._input_quantizer
    q.zero_point = -100
    path = save_qat_checkpoint(model, tmp_path / "qat.safetensors")
    fresh = toy_calibrated()
    load_qat_checkpoint(fresh, path)
    assert fresh.model[2]._input_quantizer.zero_point == -100
    # a checkpoint written before zero points existed has no `_zero_point` keys: it loads strictly, as grid 0
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys() if not k.endswith("._zero_point")}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    load_qat_checkpoint(fresh, tmp_path / "old.safetensors")
    assert all(q.zero_point == 0 for _, q in named_quantizers(fresh))
