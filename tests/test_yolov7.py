"""YOLOv7 checkpoints through the stand-in repository tests/fixtures/yolov7_repo (random weights, 64-96 px):
whole-model pickles load with --repo, quantize, export clean Q/DQ, and RepConv layers fuse to equal outputs."""
from __future__ import annotations

import copy
import importlib
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from conftest import YOLOV7_REPO_FIXTURE, randomise_batchnorm
from qdqtorch.export import check_qdq, export_onnx
from qdqtorch.models import load_model, select_predictions
from qdqtorch.models.reparam import FusedRepConv
from qdqtorch.models.repo_pickle import repository_on_path
from qdqtorch.quantize import calibrate, quantize_model
from qdqtorch.rules import apply_tensorrt_rules

TINY_YAML = YOLOV7_REPO_FIXTURE / "cfg" / "yolov7-tiny.yaml"
REP_YAML = YOLOV7_REPO_FIXTURE / "cfg" / "rep-small.yaml"
REPCONV_LAYERS = (16, 19, 20)  # RepConv rows of rep-small.yaml




def _save_checkpoint(cfg: Path, path: Path, seed: int = 0) -> nn.Module:
    """Build a model from `cfg` in the stand-in repository and torch.save it as YOLOv7's train.py does (fp16)."""
    torch.manual_seed(seed)
    with repository_on_path(YOLOV7_REPO_FIXTURE):
        model = importlib.import_module("models.yolo").Model(cfg)
        randomise_batchnorm(model)
        model.eval()
        torch.save({"model": copy.deepcopy(model).half(), "optimizer": None, "training_results": None, "epoch": -1},
                   path)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("v7") / "yolov7-tiny.pt"
    _save_checkpoint(TINY_YAML, path)
    return path


@pytest.fixture(scope="module")
def rep_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("v7rep") / "rep-small.pt"
    _save_checkpoint(REP_YAML, path, seed=1)
    return path


def test_yolov7_tiny_checkpoint_loads_with_its_repository(tiny_path):
    loaded = load_model(tiny_path, repo=YOLOV7_REPO_FIXTURE)
    model = loaded.model
    assert loaded.layout == "yolov5" and loaded.stride == 32 and len(loaded.names) == 80
    assert loaded.source.startswith("repo-pickle:") and "fused" not in loaded.source  # no RepConv in tiny
    assert type(model).__module__ == "models.yolo" and not model.training
    assert Path(type(model).forward.__code__.co_filename).resolve().is_relative_to(YOLOV7_REPO_FIXTURE)
    assert next(model.parameters()).dtype == torch.float32
    assert len(model.model) == 78 and type(model.model[-1]).__name__ == "IDetect"
    assert isinstance(model.model[0].act, nn.LeakyReLU) and model.model[0].type == "models.common.Conv"
    assert model.model[-1].f == [74, 75, 76] and 6.0e6 < sum(p.numel() for p in model.parameters()) < 6.5e6
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    pred = select_predictions(out, loaded.layout)
    assert pred.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 85)
    assert [tuple(r.shape) for r in out[1]] == [(2, 3, 8, 12, 85), (2, 3, 4, 6, 85), (2, 3, 2, 3, 85)]


def test_yolov7_tiny_quantizes_and_exports_clean_qdq(tiny_path, tmp_path):
    loaded = load_model(tiny_path, repo=YOLOV7_REPO_FIXTURE)
    model = loaded.model
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        float_raw = model(x)[1]
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    report = quantize_model(model, {"ignore": loaded.default_ignore})
    assert len(report.replaced) == convs == 58 and not report.ignored  # 55 Conv layers + 3 IDetect convs
    rules = apply_tensorrt_rules(model, x[:1], residual="int8")
    assert not rules.skipped, str(rules)
    # SPPCSPC-tiny: the three size-keeping pools, their input and the concat share one scale
    pools = rules.group_of("model.35.conv._input_quantizer")
    assert {"concat", "maxpool"} <= set(pools.reasons), str(pools)
    calibrate(model, [x[:1], x[1:]], progress=False)
    with torch.no_grad():
        quant_raw = model(x)[1]
    for f, q in zip(float_raw, quant_raw):
        assert float(nn.functional.cosine_similarity(f.flatten(), q.flatten(), dim=0)) > 0.95
    path = export_onnx(model, x[:1], tmp_path / "yolov7-tiny.qdq.onnx", dynamic_batch=False)
    check = check_qdq(path)
    assert check.ok, str(check)
    nodes = onnx.load(str(path)).graph.node
    assert sum(n.op_type == "Conv" for n in nodes) == 58


def test_yolov7_repconv_fused_on_load_with_equal_outputs(rep_path):
    training = load_model(rep_path, repo=YOLOV7_REPO_FIXTURE, fuse_reparam=False)
    fused = load_model(rep_path, repo=YOLOV7_REPO_FIXTURE)  # the default: the deployed form
    kept = [training.model.model[i] for i in REPCONV_LAYERS]
    assert all(type(m).__name__ == "RepConv" and hasattr(m, "rbr_dense") for m in kept)
    assert [m.rbr_identity is not None for m in kept] == [False, True, False]  # strided, same, wider
    assert "re-parameterised blocks fused: 3" in fused.source and "fused" not in training.source
    for i in REPCONV_LAYERS:
        block = fused.model.model[i]
        assert isinstance(block, FusedRepConv) and block.i == i and block.type == "models.common.RepConv"
        assert isinstance(block.act, nn.SiLU) and block.conv.bias is not None
    assert not any(type(m).__name__ == "RepConv" for m in fused.model.modules())
    assert (sum(isinstance(m, nn.Conv2d) for m in training.model.modules())
            - sum(isinstance(m, nn.Conv2d) for m in fused.model.modules())) == len(REPCONV_LAYERS)
    x = torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_pred, ref_raw = training.model(x)
        got_pred, got_raw = fused.model(x)
    for a, b in zip(got_raw, ref_raw):
        assert _rel(a, b) < 1e-4
    assert _rel(got_pred, ref_pred) < 1e-4
    # and the repository's own deployed form (Model.fuse: rbr_reparam) agrees with ours, weight by weight
    own = copy.deepcopy(training.model).fuse()
    for i in REPCONV_LAYERS:
        ours, theirs = fused.model.model[i].conv, own.model[i].rbr_reparam
        assert _rel(ours.weight, theirs.weight) < 1e-5 and _rel(ours.bias, theirs.bias) < 1e-5


def test_yolov7_fused_repconv_exports_one_conv_each(rep_path, tmp_path):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    onnx_convs = {}
    for fuse in (True, False):
        loaded = load_model(rep_path, repo=YOLOV7_REPO_FIXTURE, fuse_reparam=fuse)
        model = loaded.model
        quantize_model(model, {"ignore": loaded.default_ignore})
        apply_tensorrt_rules(model, x[:1], residual="int8")
        calibrate(model, [x[:1], x[1:]], progress=False)
        path = export_onnx(model, x[:1], tmp_path / f"rep_fused_{fuse}.qdq.onnx")
        nodes = onnx.load(str(path)).graph.node
        onnx_convs[fuse] = {i: sum(n.op_type == "Conv" and n.name.startswith(f"/model.{i}/") for n in nodes)
                            for i in REPCONV_LAYERS}
        onnx_convs[fuse]["total"] = sum(n.op_type == "Conv" for n in nodes)
        if fuse:
            check = check_qdq(path)
            assert check.ok and not check.findings, str(check)
            # no branch sum left inside the fused blocks
            assert not [n.name for n in nodes if n.op_type == "Add"
                        and any(n.name.startswith(f"/model.{i}/") for i in REPCONV_LAYERS)]
    assert onnx_convs[True] == {16: 1, 19: 1, 20: 1, "total": onnx_convs[False]["total"] - 3}
    assert onnx_convs[False] == {16: 2, 19: 2, 20: 2, "total": onnx_convs[True]["total"] + 3}


@pytest.mark.parametrize("fuse", [True, False])
def test_yolov7_repconv_checkpoint_through_the_ptq_job(rep_path, coco128_dir, tmp_path, fuse):
    """run_ptq with --repo (2 + 2 coco128 images at 64 px): fuse_reparam decides which form is quantized/exported."""
    from qdqtorch.pipeline import PTQSettings, run_ptq
    settings = PTQSettings.from_dict({
        "model": str(rep_path), "repo": str(YOLOV7_REPO_FIXTURE), "data": str(coco128_dir / "coco128.yaml"),
        "out": str(tmp_path / "ptq"), "imgsz": 64, "num_calib": 2, "num_eval": 2, "batch": 2, "calib_method": "max",
        "fuse_reparam": fuse, "allow_empty": True, "check": True})
    with pytest.warns(UserWarning):  # random weights: nothing detected, said as a warning
        summary = run_ptq(settings, progress=False, log=lambda *_: None).summary
    assert ("re-parameterised blocks fused: 3" in summary["model"]["source"]) is fuse
    replaced = summary["quantization"]["replaced"]
    # 12 Conv layers, 7 convs in SPPCSPC, 2 IDetect convs, and 1 or 2 per RepConv
    assert len(replaced) == (24 if fuse else 27) and not summary["quantization"]["ignored"]
    assert summary["qdq_check"]["ok"] and not summary["qdq_check"]["errors"]
    nodes = onnx.load(summary["onnx"]).graph.node
    convs = [sum(n.op_type == "Conv" and f"/model.{i}/" in n.name for n in nodes) for i in REPCONV_LAYERS]
    assert convs == ([1, 1, 1] if fuse else [2, 2, 2])


@pytest.mark.parametrize("which", ["tiny", "rep"])
def test_yolov7_shifted_grid_exports_zero_point_free_and_onnxruntime_agrees(which, tiny_path, rep_path, tmp_path):
    """--grid shifted on YOLOv7 (LeakyReLU tiny, SiLU + RepConv rep-small): whatever gets a zero point, the export
    folds it away and ONNX Runtime computes what fake quant does."""
    from onnx import numpy_helper

    from qdqtorch.export.runtime import OnnxRuntimeModule
    from qdqtorch.quantize import named_quantizers
    loaded = load_model(tiny_path if which == "tiny" else rep_path, repo=YOLOV7_REPO_FIXTURE)
    model = loaded.model
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    quantize_model(model, {"ignore": loaded.default_ignore})
    apply_tensorrt_rules(model, x[:1], residual="int8")
    calibrate(model, [x[:1], x[1:]], grid="shifted", progress=False)
    assert any(q.zero_point for _, q in named_quantizers(model))  # the image at least
    path = export_onnx(model, x[:1], tmp_path / f"{which}.onnx", dynamic_batch=False)
    assert check_qdq(path).ok
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert not any(inits[n.input[2]].any() for n in proto.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits)
    with torch.no_grad():
        fake = select_predictions(model(x), loaded.layout)
    ort = OnnxRuntimeModule(path, int8_kernels=False)(x)
    assert float(nn.functional.cosine_similarity(fake.flatten(), ort.flatten(), dim=0)) > 0.999
