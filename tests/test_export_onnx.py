"""export_onnx: a calibrated fake-quant model becomes a valid Q/DQ ONNX graph that onnxruntime runs like PyTorch."""
from __future__ import annotations

import ast
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from conftest import YOLOV5_REPO_FIXTURE
from qdqtorch import QuantConfig, TensorQuantizer, calibrate, quantize_model
from qdqtorch.export import check_qdq, export_onnx
from qdqtorch.export.onnx_export import ExportError

AMAX_FLOOR = 1e-7  # qdqtorch.tensor_quant's floor for dead channels; restated as the independent reference


class Toy(nn.Module):
    """Conv/BN/SiLU, a strided Conv, a ConvTranspose and a Linear head: every weighted op kind the exporter meets."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.SiLU()
        self.c2 = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(6, 5, 2, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.c1(x)))
        x = self.act(self.c2(x))
        x = self.act(self.up(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _calibrated_toy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = Toy()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
    model.eval()
    quantize_model(model)
    calibrate(model, [torch.randn(4, 3, 16, 16) for _ in range(3)], 3, progress=False)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[nn.Module, Path]:
    model = _calibrated_toy()
    model.train()
    model.bn.eval()  # a mixed state that export must give back untouched
    path = export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path_factory.mktemp("onnx") / "sub" / "toy.onnx",
                       metadata={"stride": 32, "names": {0: "a", 1: "b"}, "task": "detect"})
    return model, path


def _qdq_params(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, np.ndarray, np.ndarray]]:
    """(node, scale, zero point) of every Q/DQ node, reading Constant nodes and initializers."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return [(n, consts[n.input[1]], consts[n.input[2]]) for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_export_restores_modes_and_writes_metadata(exported) -> None:
    model, path = exported
    assert path.is_file() and path.parent.name == "sub"
    assert model.training and not model.bn.training and model.c1.training
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta == {"stride": "32", "names": "{0: 'a', 1: 'b'}", "task": "detect"}
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["output0"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_qdq_nodes_have_int8_zero_points_and_amax_scales(exported) -> None:
    model, path = exported
    proto = onnx.load(str(path))
    params = _qdq_params(proto)
    assert len(params) == 2 * 2 * 4  # Q and DQ, input and weight, 4 weighted layers
    for node, scale, zp in params:
        assert zp.dtype == np.int8 and not zp.any(), node.name
        assert np.all(np.isfinite(scale)) and np.all(scale > 0), node.name
    # every per-tensor scale is some input quantizer's amax / 127, every per-channel one a weight quantizer's
    expected_tensor = sorted(float(m._input_quantizer.amax.clamp_min(AMAX_FLOOR) / 127) for m in
                             (model.c1, model.c2, model.up, model.fc))
    got_tensor = sorted(float(s) for n, s, _ in params if s.size == 1 and n.op_type == "DequantizeLinear")
    np.testing.assert_allclose(got_tensor, expected_tensor, rtol=1e-6)
    dqs = {n.output[0]: (n, s) for n, s, _ in params if n.op_type == "DequantizeLinear" and s.size > 1}
    weighted = {n.op_type: n for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")}
    for op_type, layer, axis in (("ConvTranspose", model.up, 1), ("Gemm", model.fc, 0)):
        dq, scale = dqs[weighted[op_type].input[1]]
        attrs = {a.name: a.i for a in dq.attribute}
        assert attrs["axis"] == axis
        amax = layer._weight_quantizer.amax
        np.testing.assert_allclose(scale, (amax.clamp_min(AMAX_FLOOR) / 127).numpy(), rtol=1e-6)
        # independent reference: per output channel absolute max of the float weight
        w = layer.weight.detach().double().numpy()
        per_out = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(1)
        np.testing.assert_allclose(scale, per_out / 127, rtol=1e-5)
    report = check_qdq(path)
    assert report.ok and not report.warnings, str(report)
    assert report.stats["quantized_weighted_ops"] == 4


def test_onnxruntime_matches_pytorch_fake_quant_with_another_batch(exported) -> None:
    model, path = exported
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model_mode = model.training
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
        float_ref = _float_output(model, x)
    model.train(model_mode)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"images": x.numpy()})[0]
    assert out.shape == (5, 4)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-4)
    # ...and the quantization is really there: the float model differs from both by far more
    ort_err, quant_err = np.abs(out - ref).max(), np.abs(float_ref - ref).max()
    assert quant_err > 1e-4 and quant_err > 20 * ort_err, (quant_err, ort_err)
    print(f"toy: onnxruntime vs torch fake-quant max abs diff {ort_err:.3g}, fake-quant vs float {quant_err:.3g}")


def _float_output(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    quantizers = [m for m in model.modules() if isinstance(m, TensorQuantizer) and m.is_enabled]
    for q in quantizers:
        q.disable()
    try:
        with torch.no_grad():
            return model(x).numpy()
    finally:
        for q in quantizers:
            q.enable()


def test_refuses_uncalibrated_quantizers_by_name(tmp_path) -> None:
    torch.manual_seed(0)
    model = Toy().eval()
    quantize_model(model)
    with pytest.raises(ExportError) as info:
        export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "x.onnx")
    msg = str(info.value)
    for name in ("c1._input_quantizer", "fc._weight_quantizer", "up._input_quantizer"):
        assert name in msg
    assert not (tmp_path / "x.onnx").exists()
    assert not model.training


def test_disabled_quantizers_export_as_float_and_the_checker_names_them(tmp_path) -> None:
    model = _calibrated_toy()
    model.c2._input_quantizer.disable()
    model.c2._weight_quantizer.disable()
    path = export_onnx(model, torch.randn(2, 3, 16, 16), tmp_path / "partial.onnx", dynamic_batch=False)
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    report = check_qdq(proto)
    conv2 = [n for n in proto.graph.node if n.op_type == "Conv"][1]
    assert {(f.rule, f.node) for f in report.errors} == {("unquantized-activation", conv2.name),
                                                         ("unquantized-weight", conv2.name)}


def test_unsigned_quantizer_is_warned_about_and_flagged_by_the_checker(tmp_path) -> None:
    torch.manual_seed(0)
    model = Toy().eval()
    quantize_model(model, QuantConfig(overrides=[{"c1": {"input": {"unsigned": True}}}]))
    calibrate(model, [torch.rand(4, 3, 16, 16)], 1, progress=False)
    with pytest.warns(UserWarning, match=r"uint8 Q/DQ.*c1\._input_quantizer"):
        path = export_onnx(model, torch.rand(1, 3, 16, 16), tmp_path / "u8.onnx")
    report = check_qdq(path)
    assert [f.rule for f in report.errors] == ["zero-point-type"] * 2  # its Q and its DQ
    assert all("c1/_input_quantizer" in f.node and "UINT8" in f.message for f in report.errors)


def test_bad_arguments(tmp_path) -> None:
    model = _calibrated_toy()
    with pytest.raises(ValueError, match="opset 11"):
        export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "a.onnx", opset=11)
    with pytest.raises(ExportError, match=r"shape \[\(1, 4, 16, 16\)\]"):
        export_onnx(model, torch.randn(1, 4, 16, 16), tmp_path / "b.onnx")
    with pytest.raises(ValueError, match="2 output names"):
        export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "c.onnx", output_names=("a", "b"))


# ---- the real YOLOv5n ------------------------------------------------------------------------------------------
YOLO_SIZE = 128  # small input keeps tracing/inference fast; a multiple of the max stride 32


def _coco_images(coco128_dir: Path, n: int) -> torch.Tensor:
    """n real COCO images, RGB, resized to YOLO_SIZE square, in [0, 1] (a plain resize is enough here)."""
    files = sorted((coco128_dir / "images" / "val2017").glob("*.jpg"))[:n]
    ims = [cv2.resize(cv2.imread(str(f)), (YOLO_SIZE, YOLO_SIZE))[:, :, ::-1].transpose(2, 0, 1) / 255.0
           for f in files]
    return torch.tensor(np.stack(ims), dtype=torch.float32)


@pytest.fixture(scope="module")
def yolo_export(yolov5n_path, coco128_dir, tmp_path_factory):
    """YOLOv5n quantized with the default config, max-calibrated on 4 COCO images, exported to ONNX."""
    from qdqtorch.models import PredictionOnly, load_model

    loaded = load_model(yolov5n_path, repo=YOLOV5_REPO_FIXTURE)
    quantize_model(loaded.model, QuantConfig(ignore=loaded.default_ignore))
    images = _coco_images(coco128_dir, 8)
    calibrate(loaded.model, [images[:4]], 1, progress=False)
    model = PredictionOnly(loaded.model, loaded.layout)
    meta = {"stride": loaded.stride, "names": dict(enumerate(loaded.names))}
    path = export_onnx(model, images[:1], tmp_path_factory.mktemp("yolo") / "yolov5n_qdq.onnx", metadata=meta)
    return model, path, images[4:], loaded


def test_yolov5n_export_passes_the_checker(yolo_export) -> None:
    model, path, _, loaded = yolo_export
    report = check_qdq(path)
    n_convs = sum(type(m).__name__ == "QuantConv2d" for m in model.modules())
    assert n_convs == 60
    assert report.ok, str(report)
    assert report.stats["weighted_ops"] == report.stats["quantized_weighted_ops"] == n_convs
    # the default config adds no quantizer on residual Adds / Concat inputs: only those performance warnings
    assert {f.rule for f in report.warnings} <= {"residual-add-unquantized", "scale-mismatch"}
    assert len(report.by_rule("residual-add-unquantized")) == 7  # YOLOv5n's backbone bottlenecks: 1 + 2 + 3 + 1
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert ast.literal_eval(meta["names"]) == dict(enumerate(loaded.names)) and meta["stride"] == "32"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_yolov5n_qdq_parameters_equal_the_quantizers(yolo_export) -> None:
    model, path, _, _ = yolo_export
    proto = onnx.load(str(path))
    params = _qdq_params(proto)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    quantizers = [m for m in model.modules() if isinstance(m, TensorQuantizer)]
    # quantizers of one tensor with equal amax (C3's cv1/cv2 inputs) export as one shared Q/DQ pair: compare sets
    act = np.unique(np.float32([float(q.amax) / 127 for q in quantizers if q.axis is None]))
    got = np.unique(np.float32([float(s) for n, s, _ in params if n.op_type == "DequantizeLinear" and s.size == 1]))
    np.testing.assert_allclose(got, act, rtol=1e-6)
    # every weight Q/DQ reproduces PyTorch's fake-quantized weight exactly (ONNX rounding: x / scale, half to even)
    torch_weights = {}
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "QuantConv2d":
                key = np.round(float(m._weight_quantizer.amax.sum()) / 127, 6)
                torch_weights[key] = m._weight_quantizer(m.weight).numpy()
    checked = 0
    for node, scale, _zp in params:
        if node.op_type != "QuantizeLinear" or scale.size == 1:
            continue
        w = inits[node.input[0]]
        s = scale.reshape(-1, 1, 1, 1)
        onnx_fq = np.clip(np.round(w / s), -128, 127) * s  # np.round is half-to-even like ONNX
        np.testing.assert_array_equal(onnx_fq, torch_weights[np.round(float(scale.sum()), 6)])
        checked += 1
    assert checked == 60


def test_yolov5n_onnxruntime_agrees_with_pytorch(yolo_export) -> None:
    model, path, images, _ = yolo_export
    proto = onnx.load(str(path))
    first_conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    proto.graph.output.append(onnx.ValueInfoProto(name=first_conv.output[0]))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    out, conv0 = sess.run(None, {"images": images.numpy()})  # batch 4 through a graph traced at batch 1
    seen: dict[str, np.ndarray] = {}

    def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["conv0"] = output.detach().numpy()

    first_qconv = next(m for m in model.modules() if type(m).__name__ == "QuantConv2d")
    handle = first_qconv.register_forward_hook(keep)
    with torch.no_grad():
        ref = model(images).numpy()
    handle.remove()
    float_ref = _float_output(model, images)
    assert out.shape == ref.shape == (4, 3 * (16 * 16 + 8 * 8 + 4 * 4), 85)
    # the first quantized conv (input Q/DQ, per-channel weight Q/DQ) matches to float32 accumulation noise
    np.testing.assert_allclose(conv0, seen["conv0"], atol=1e-4 * np.abs(seen["conv0"]).max())
    # deeper down, activations lying on a rounding tie (x / scale = k + 0.5 up to float32 noise, which differs
    # between the two conv implementations) round to neighbouring codes and the flips spread; the export is
    # still far closer to the PyTorch fake-quant model than quantization itself moves it from float
    export_err = np.abs(out - ref).mean()
    quant_err = np.abs(ref - float_ref).mean()
    print(f"yolov5n@{YOLO_SIZE}: mean |onnxruntime - torch fake-quant| {export_err:.4g}, "
          f"mean |fake-quant - float| {quant_err:.4g}, max {np.abs(out - ref).max():.3g}")
    assert export_err < quant_err
    conf = (slice(None), slice(None), slice(4, None))
    assert np.corrcoef(out[conf].ravel(), ref[conf].ravel())[0, 1] > 0.98


def test_static_graph_runs_any_batch_in_onnxruntime_slices(tmp_path) -> None:
    """A static-shape export (batch 2) scored on 5 images: OnnxRuntimeModule slices and pads, and every row matches
    the model run in PyTorch one image at a time."""
    from qdqtorch.export.runtime import OnnxRuntimeModule
    model = _calibrated_toy()
    path = export_onnx(model, torch.randn(2, 3, 16, 16), tmp_path / "static.onnx", dynamic_batch=False)
    x = torch.randn(5, 3, 16, 16)
    runner = OnnxRuntimeModule(path)
    assert runner.fixed_batch == 2
    with torch.no_grad():
        reference = torch.cat([model(x[i:i + 1]) for i in range(5)])
    got = runner(x)
    assert got.shape == reference.shape
    torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-4)
