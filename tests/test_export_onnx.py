"""export_onnx: a calibrated fake-quant model becomes a valid Q/DQ ONNX graph that onnxruntime runs like PyTorch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from qdqtorch.export import check_qdq, export_onnx
from qdqtorch.export.onnx_export import ExportError
from qdqtorch.nn import TensorQuantizer
from qdqtorch.quantize.calibrate import calibrate
from qdqtorch.quantize.replace import quantize_model

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
    quantizers = [m for m in model.modules() if isinstance(m, TensorQuantizer)]
    for q in quantizers:
        q.disable()
    try:
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


def test_bad_arguments(tmp_path) -> None:
    model = _calibrated_toy()
    with pytest.raises(ValueError, match="opset 11"):
        export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "a.onnx", opset=11)
    with pytest.raises(ExportError, match=r"shape \[\(1, 4, 16, 16\)\]"):
        export_onnx(model, torch.randn(1, 4, 16, 16), tmp_path / "b.onnx")
    with pytest.raises(ValueError, match="2 output names"):
        export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "c.onnx", output_names=("a", "b"))
