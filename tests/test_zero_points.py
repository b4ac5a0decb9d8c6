"""fold_zero_points: a shifted-grid (non-zero zero point) Q/DQ graph becomes the zero-point-0 form TensorRT accepts,
with the same onnxruntime outputs, its Convs still reading DequantizeLinear (through at most one Pad)."""
from __future__ import annotations

import io
import warnings
from typing import Dict, List, Tuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.nn import functional as F

from qdqtorch.errors import QdqtorchError
from qdqtorch.export.zero_points import ZeroPointError, fold_zero_points

SCALE = 0.02  # activation grid step
ZERO_POINT = -100  # shifted grid: the 256 codes cover [-0.56, 4.54], where SiLU outputs lie


class QConv(nn.Conv2d):
    """Conv2d whose weight is fake-quantized per output channel (symmetric int8, zero point 0), as qdqtorch's
    exporter writes weights: a calibrated amax buffer, so the scales are constants of the graph."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        amax = self.weight.detach().abs().amax(dim=(1, 2, 3))
        self.register_buffer("w_scale", (amax / 127).clamp_min(1e-8))
        self.register_buffer("w_zero", torch.zeros_like(amax, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.fake_quantize_per_channel_affine(self.weight, self.w_scale, self.w_zero, 0, -128, 127)
        return self._conv_forward(x, weight, self.bias)


class Shifted(nn.Module):
    """Conv+SiLU, a shifted-grid activation quantizer, and consumers of every kind fold_zero_points handles."""

    def __init__(self, zero_point: int = ZERO_POINT) -> None:
        super().__init__()
        self.zero_point = zero_point
        self.stem = QConv(3, 8, 3, padding=1)
        self.strided = QConv(8, 6, 3, stride=2, padding=1)  # padded: Pad with value c in front
        self.point = QConv(8, 5, 1, bias=False)  # no bias: one is created
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.mix = QConv(16, 4, 1)  # reads Concat(MaxPool(a), a), re-quantized by the same quantizer
        self.depthwise = QConv(8, 8, 3, padding=1, groups=8)
        self.side = QConv(3, 8, 1)

    def quant(self, x: torch.Tensor) -> torch.Tensor:
        """The shifted-grid activation quantizer."""
        return torch.fake_quantize_per_tensor_affine(x, SCALE, self.zero_point, -128, 127)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        a = self.quant(F.silu(self.stem(x)))
        mixed = self.mix(self.quant(torch.cat([self.pool(a), a], 1)))
        up = F.interpolate(a, scale_factor=2.0, mode="nearest")
        return self.strided(a), self.point(a), mixed, up, a + self.side(x), self.depthwise(a)


def _export(model: nn.Module, sample: torch.Tensor) -> onnx.ModelProto:
    """TorchScript-export at opset 13 with a dynamic batch, as export_onnx does."""
    names = [f"out{i}" for i in range(6)]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (sample,), buffer, opset_version=13, dynamo=False, do_constant_folding=True,
                          input_names=["images"], output_names=names,
                          dynamic_axes={n: {0: "batch"} for n in ["images", *names]})
    return onnx.load_from_string(buffer.getvalue())


def _run(proto: onnx.ModelProto, x: np.ndarray, name: str = "images") -> List[np.ndarray]:
    """onnxruntime outputs, one thread, with the graph run as written (no ORT graph optimizations)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the graph as written
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {name: x})


def _zero_point(proto: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray:
    """A Q/DQ node's zero point: an initializer or Constant output, possibly through Identity nodes."""
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {t: n for n in proto.graph.node for t in n.output}
    name = node.input[2]
    while name not in inits and producer[name].op_type == "Identity":
        name = producer[name].input[0]
    if name in inits:
        return numpy_helper.to_array(inits[name])
    return numpy_helper.to_array(producer[name].attribute[0].t)


@pytest.fixture(scope="module")
def shifted() -> Tuple[nn.Module, onnx.ModelProto, np.ndarray]:
    torch.manual_seed(0)
    model = Shifted()
    x = torch.randn(2, 3, 12, 16) * 2
    return model, _export(model, x[:1]), x.numpy()


def test_export_has_shifted_grid_and_ort_matches_torch(shifted) -> None:
    model, proto, x = shifted
    zps = [_zero_point(proto, n) for n in proto.graph.node
           if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert any(int(z.reshape(-1)[0]) == ZERO_POINT for z in zps if z.size == 1)
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.from_numpy(x))]
    for got, want in zip(_run(proto, x), expected):
        assert np.abs(got - want).max() <= 2 * SCALE * max(1.0, float(np.abs(want).max()))


def _conv_inputs_after_fold(proto: onnx.ModelProto) -> Dict[str, str]:
    """Conv name -> op type feeding its X (looking through one Pad as 'Pad>DequantizeLinear')."""
    producer = {t: n for n in proto.graph.node for t in n.output}
    found = {}
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        src = producer.get(node.input[0])
        kind = src.op_type if src is not None else "input"
        chain = [kind]
        while src is not None and src.op_type in ("DequantizeLinear", "QuantizeLinear", "Pad") and len(chain) < 4:
            src = producer.get(src.input[0])
            chain.append(src.op_type if src is not None else "input")
        found[node.name] = ">".join(chain[:4]) if "Pad" in chain else kind
    return found


def test_fold_removes_zero_points_and_keeps_outputs(shifted) -> None:
    model, original, x = shifted
    proto = onnx.ModelProto()
    proto.CopyFrom(original)
    before = _run(original, x)

    changed = fold_zero_points(proto)
    onnx.checker.check_model(proto, full_check=True)

    assert changed == 2  # the quantizer on a, and its re-application on the Concat
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            assert not np.any(_zero_point(proto, node)), node.name
    # every Conv that read the shifted tensor still reads a DequantizeLinear: TensorRT can fuse it as INT8
    assert _conv_inputs_after_fold(proto) == {
        "/stem/Conv": "input", "/side/Conv": "input",
        "/point/Conv": "DequantizeLinear", "/mix/Conv": "DequantizeLinear",
        # padded convs: Pad (value c, code zp) then the same Q/DQ again, so the Conv still reads a DQ
        "/strided/Conv": "DequantizeLinear>QuantizeLinear>Pad>DequantizeLinear",
        "/depthwise/Conv": "DequantizeLinear>QuantizeLinear>Pad>DequantizeLinear"}
    ops = [n.op_type for n in proto.graph.node]
    # Adds: the model's a + side(x) and one shift before the first Q (the tied re-quantization needs none);
    # Subs: c off side(x), the Add's other input (so the shortcut's DQ feeds the Add directly, as TensorRT's
    # Conv + residual fusion needs), and the upsampled graph output
    assert ops.count("Add") == 2 and ops.count("Sub") == 2
    producer = {t: n for n in proto.graph.node for t in n.output}
    residual = next(n for n in proto.graph.node if n.op_type == "Add"
                    and any(producer.get(t) is not None and producer[t].op_type == "Sub" for t in n.input))
    assert sorted(producer[t].op_type for t in residual.input) == ["DequantizeLinear", "Sub"]
    assert ops.count("Pad") == 2  # strided and depthwise convs pad

    after = _run(proto, x)
    assert after[0].shape[0] == 2  # dynamic batch still works
    for i, (got, want) in enumerate(zip(after, before)):
        step = SCALE * max(1.0, float(np.abs(want).max()))  # one activation step, as seen at this output
        close = np.isclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
        assert close.mean() >= 0.999, f"output {i}: {1 - close.mean():.2%} of elements differ"
        assert np.abs(got - want).max() <= step, f"output {i}: max diff {np.abs(got - want).max()}"


def test_zero_points_all_zero_is_a_no_op() -> None:
    torch.manual_seed(1)
    model = Shifted(zero_point=0)
    proto = _export(model, torch.randn(1, 3, 8, 8))
    before = proto.SerializeToString()
    assert fold_zero_points(proto) == 0
    assert proto.SerializeToString() == before


def test_per_channel_non_zero_zero_point_is_refused() -> None:
    w = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["wf"], name="dq", axis=0),
         helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")],
        "per_channel",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(4, 0.1, np.float32), "s"),
         numpy_helper.from_array(np.array([0, 1, 0, 2], np.int8), "zp")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ZeroPointError, match="per-channel"):
        fold_zero_points(proto)
    assert issubclass(ZeroPointError, QdqtorchError)


def test_initializer_zero_points_mixed_concat_and_graph_outputs() -> None:
    """Zero points as initializers (dropped once replaced); a Concat of two different shifts; a shifted graph output."""
    def qdq(tag: str, zp: int, scale: float) -> List[onnx.NodeProto]:
        ins = [f"s_{tag}", f"zp_{tag}"]
        return [helper.make_node("QuantizeLinear", ["x", *ins], [f"q_{tag}"], name=f"q_{tag}"),
                helper.make_node("DequantizeLinear", [f"q_{tag}", *ins], [tag], name=f"dq_{tag}")]

    float_out = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape)
                 for n, shape in (("cat", ["batch", 8]), ("flat", ["batch", 4]))]
    graph = helper.make_graph(
        [*qdq("a", -20, 0.05), *qdq("b", 30, 0.03),
         helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),  # different shifts: materialized
         helper.make_node("Flatten", ["a"], ["flat"], name="flat")],  # shift passes through to a graph output
        "initializer_zero_points", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        float_out,
        [numpy_helper.from_array(np.array(0.05, np.float32), "s_a"), numpy_helper.from_array(np.int8(-20), "zp_a"),
         numpy_helper.from_array(np.array(0.03, np.float32), "s_b"), numpy_helper.from_array(np.int8(30), "zp_b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.default_rng(0).uniform(-3, 6, (3, 4)).astype(np.float32)
    before = _run(proto, x, "x")

    assert fold_zero_points(proto) == 2
    onnx.checker.check_model(proto, full_check=True)
    assert {t.name for t in proto.graph.initializer}.isdisjoint({"zp_a", "zp_b"})  # replaced, then dropped
    for got, want in zip(_run(proto, x, "x"), before):
        np.testing.assert_allclose(got, want, atol=1e-5)

