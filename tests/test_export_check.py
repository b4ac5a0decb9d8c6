"""check_qdq on hand-built ONNX graphs: a clean Q/DQ graph passes, and each rule fires on the one violation made."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdqtorch.export import QdqReport, check_qdq
from qdqtorch.export.__main__ import main as check_main

RNG = np.random.default_rng(0)
F32 = np.float32


class G:
    """A mutable graph spec: nodes by name, initializers by name, then `.model()` builds the ModelProto."""

    def __init__(self, opset: int = 13, dtype: int = TensorProto.FLOAT, out_shape: tuple = (1, 10)) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.inputs = [helper.make_tensor_value_info("x", dtype, [1, 3, 8, 8])]
        self.outputs = [helper.make_tensor_value_info("out", dtype, list(out_shape))]
        self.opset = opset

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits[name] = np.asarray(value)
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> onnx.NodeProto:
        n = helper.make_node(op, inputs, outputs, name=name, **attrs)
        self.nodes.append(n)
        return n

    def qdq(self, x: str, out: str, scale, name: str, zp=None, axis: int | None = None) -> None:
        """Q then DQ of tensor x with the given scale (scalar or per-channel) and int8 zero point 0."""
        scale = np.asarray(scale, dtype=F32)
        s = self.init(f"{name}.scale", scale)
        z = self.init(f"{name}.zp", np.zeros(scale.shape, np.int8) if zp is None else zp)
        attrs = {} if axis is None else {"axis": axis}
        self.node("QuantizeLinear", [x, s, z], [f"{name}.q"], f"{name}.Q", **attrs)
        self.node("DequantizeLinear", [f"{name}.q", s, z], [out], f"{name}.DQ", **attrs)

    def find(self, name: str) -> onnx.NodeProto:
        return next(n for n in self.nodes if n.name == name)

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", self.inputs, self.outputs,
                                  [numpy_helper.from_array(v, k) for k, v in self.inits.items()])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        return m


def clean_graph() -> G:
    """Conv-Relu-Conv-Relu + quantized residual Add, Concat, MaxPool (shared scale), Flatten, Gemm: all int8."""
    g = G()
    g.qdq("x", "xq", 0.05, "x_in")
    g.qdq(g.init("w1", RNG.normal(size=(4, 3, 3, 3)).astype(F32)), "w1q", RNG.uniform(0.01, 0.02, 4), "w1", axis=0)
    g.node("Conv", ["xq", "w1q", g.init("b1", np.zeros(4, F32))], ["c1"], "conv1", pads=[1, 1, 1, 1])
    g.node("Relu", ["c1"], ["r1"], "relu1")
    g.qdq("r1", "r1q", 0.2, "r1_in")  # r1 also enters the Concat: same scale as its output
    g.qdq(g.init("w2", RNG.normal(size=(4, 4, 1, 1)).astype(F32)), "w2q", RNG.uniform(0.01, 0.02, 4), "w2", axis=0)
    g.node("Conv", ["r1q", "w2q"], ["c2"], "conv2")
    g.node("Relu", ["c2"], ["r2"], "relu2")
    g.node("Add", ["r2", "r1q"], ["add"], "add")
    g.node("Concat", ["add", "r1"], ["cat"], "concat", axis=1)
    g.qdq("cat", "catq", 0.2, "cat_out")
    g.node("MaxPool", ["catq"], ["mp"], "maxpool", kernel_shape=[2, 2], strides=[2, 2])
    g.qdq("mp", "mpq", 0.2, "mp_out")
    g.node("Flatten", ["mpq"], ["flat"], "flatten")
    g.qdq(g.init("w3", RNG.normal(size=(10, 128)).astype(F32)), "w3q", RNG.uniform(0.01, 0.02, 10), "w3", axis=0)
    g.node("Gemm", ["flat", "w3q", g.init("b3", np.zeros(10, F32))], ["out"], "fc", transB=1)
    return g


def rules(report: QdqReport) -> set[tuple[str, str, str]]:
    return {(f.rule, f.severity, f.node) for f in report.findings}


def only(report: QdqReport, rule: str, severity: str, node: str, tensor: str | None = None) -> None:
    """Assert the report holds exactly one finding, and it is this one."""
    assert [(f.rule, f.severity, f.node) for f in report.findings] == [(rule, severity, node)], str(report)
    if tensor is not None:
        assert report.findings[0].tensor == tensor


def test_clean_graph_passes_and_runs() -> None:
    model = clean_graph().model()
    onnx.checker.check_model(model, full_check=True)
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": RNG.normal(size=(1, 3, 8, 8)).astype(F32)})[0]
    assert out.shape == (1, 10)
    report = check_qdq(model)
    assert report.ok and not report.warnings, str(report)
    assert report.stats["weighted_ops"] == 3 and report.stats["quantized_weighted_ops"] == 3
    assert report.stats["quantize_linear"] == 7 and report.stats["dequantize_linear"] == 7


def test_conv_activation_without_dq() -> None:
    g = clean_graph()
    g.find("conv1").input[0] = "x"
    only(check_qdq(g.model()), "unquantized-activation", "error", "conv1", "x")


def test_conv_weight_without_dq() -> None:
    g = clean_graph()
    g.find("conv2").input[1] = "w2"
    report = check_qdq(g.model())
    only(report, "unquantized-weight", "error", "conv2", "w2")
    assert report.stats["quantized_weighted_ops"] == 2


def test_allow_float_downgrades_to_warning() -> None:
    g = clean_graph()
    g.find("conv2").input[1] = "w2"
    report = check_qdq(g.model(), allow_float=["conv*"])
    only(report, "unquantized-weight", "warning", "conv2")
    assert report.ok


def test_weight_through_trivial_ops_counts_as_quantized() -> None:
    g = clean_graph()
    g.find("fc").input[1] = "w3t"
    g.node("Identity", ["w3q"], ["w3t"], "w3_identity")
    assert check_qdq(g.model()).ok


def _activation_matmul(quantized: tuple = ()) -> G:
    """The clean graph plus MatMul(flat2^T, flat2) of two activations; inputs named in `quantized` get a Q/DQ."""
    g = clean_graph()
    g.outputs = [helper.make_tensor_value_info("mm", TensorProto.FLOAT, [128, 128])]
    g.node("Flatten", ["mp"], ["flat2"], "flatten2")
    g.node("Transpose", ["flat2"], ["flat2_t"], "flat2_t", perm=[1, 0])
    inputs = []
    for t in ("flat2_t", "flat2"):
        if t in quantized:
            g.qdq(t, f"{t}_q", 0.2, f"{t}_in")
        inputs.append(f"{t}_q" if t in quantized else t)
    g.node("MatMul", inputs, ["mm"], "matmul")
    return g


def test_float_activation_matmul_is_a_warning_half_quantized_an_error() -> None:
    """Both inputs float: attention kept float by the placement rules, a warning (an error with float_matmul=False);
    one input quantized and the other not: TensorRT cannot run it INT8 either, an error naming the float input; both
    quantized: clean."""
    model = _activation_matmul().model()
    report = check_qdq(model)
    assert rules(report) == {("float-activation-matmul", "warning", "matmul")} and report.ok
    assert report.warnings[0].tensor == "flat2_t, flat2"
    assert report.stats["activation_matmuls"] == 1 and report.stats["weighted_ops"] == 3  # not a weighted op
    strict = check_qdq(model, float_matmul=False)
    assert rules(strict) == {("unquantized-activation", "error", "matmul")}
    assert sorted(f.tensor for f in strict.errors) == ["flat2", "flat2_t"]  # both inputs, named
    half = check_qdq(_activation_matmul(quantized=("flat2_t",)).model())
    assert [(f.rule, f.severity, f.tensor) for f in half.findings] == [("unquantized-activation", "error", "flat2")]
    both = check_qdq(_activation_matmul(quantized=("flat2_t", "flat2")).model(), float_matmul=False)
    assert both.ok and not both.findings and both.stats["quantized_activation_matmuls"] == 1, str(both)


def test_cli_int8_matmul_flag_refuses_float_attention(tmp_path) -> None:
    path = tmp_path / "mm.onnx"
    onnx.save(_activation_matmul().model(), str(path))
    assert check_main([str(path)]) == 0 and check_main([str(path), "--int8-matmul"]) == 1


def test_nonzero_zero_point() -> None:
    g = clean_graph()
    g.inits["x_in.zp"] = np.array(3, np.int8)
    report = check_qdq(g.model())
    assert rules(report) == {("zero-point-nonzero", "error", "x_in.Q"), ("zero-point-nonzero", "error", "x_in.DQ")}
    assert {f.tensor for f in report.findings} == {"x_in.zp"}


def test_uint8_zero_point() -> None:
    g = clean_graph()
    g.inits["r1_in.zp"] = np.array(0, np.uint8)
    report = check_qdq(g.model())
    assert rules(report) == {("zero-point-type", "error", "r1_in.Q"), ("zero-point-type", "error", "r1_in.DQ")}
    assert "UINT8" in report.errors[0].message


def test_missing_zero_point_defaults_to_uint8() -> None:
    g = clean_graph()
    q, dq = g.find("x_in.Q"), g.find("x_in.DQ")
    del q.input[2]
    del dq.input[2]
    report = check_qdq(g.model())
    only(report, "zero-point-type", "error", "x_in.Q")
    assert "defaults to uint8" in report.errors[0].message


def test_zero_scale_and_nan_scale() -> None:
    g = clean_graph()
    g.inits["w1.scale"] = np.array([0.01, 0.0, 0.02, 0.01], F32)
    g.inits["cat_out.scale"] = np.array(np.nan, F32)
    report = check_qdq(g.model())
    assert rules(report) == {("scale-non-positive", "error", "w1.Q"), ("scale-non-positive", "error", "w1.DQ"),
                             ("scale-non-finite", "error", "cat_out.Q"), ("scale-non-finite", "error", "cat_out.DQ")}


def test_scale_that_is_not_a_constant() -> None:
    g = clean_graph()
    g.inputs.append(helper.make_tensor_value_info("s_dyn", TensorProto.FLOAT, []))
    g.find("x_in.Q").input[1] = "s_dyn"
    g.find("x_in.DQ").input[1] = "s_dyn"
    report = check_qdq(g.model())
    assert rules(report) == {("scale-not-constant", "error", "x_in.Q"), ("scale-not-constant", "error", "x_in.DQ")}


def test_conv_per_channel_on_default_axis_1_is_wrong() -> None:
    g = clean_graph()
    g.inits["w2.scale"] = RNG.uniform(0.01, 0.02, 4).astype(F32)  # 4 in- and 4 out-channels: runs, but wrong
    for n in (g.find("w2.Q"), g.find("w2.DQ")):
        del n.attribute[:]  # ONNX default axis is 1
    report = check_qdq(g.model())
    only(report, "per-channel-axis", "error", "w2.DQ", "w2.q")
    assert "axis 1" in report.errors[0].message and "axis 0" in report.errors[0].message


@pytest.mark.parametrize("axis, ok", [(1, True), (0, False)])
def test_conv_transpose_weight_axis_is_1(axis: int, ok: bool) -> None:
    g = G(out_shape=(1, 5, 16, 16))
    g.qdq("x", "xq", 0.05, "x_in")
    g.qdq(g.init("wt", RNG.normal(size=(3, 5, 2, 2)).astype(F32)), "wtq",
          RNG.uniform(0.01, 0.02, 5 if axis == 1 else 3), "wt", axis=axis)
    g.node("ConvTranspose", ["xq", "wtq"], ["out"], "deconv", strides=[2, 2])
    report = check_qdq(g.model())
    if ok:
        assert report.ok and not report.warnings, str(report)
    else:
        only(report, "per-channel-axis", "error", "wt.DQ")


@pytest.mark.parametrize("trans_b, axis, ok", [(0, 1, True), (0, 0, False), (1, 0, True), (1, 1, False)])
def test_gemm_weight_axis_depends_on_trans_b(trans_b: int, axis: int, ok: bool) -> None:
    g = G(out_shape=(2, 4))
    g.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])]
    w = RNG.normal(size=(4, 6) if trans_b else (6, 4)).astype(F32)
    g.qdq("x", "xq", 0.05, "x_in")
    g.qdq(g.init("w", w), "wq", RNG.uniform(0.01, 0.02, w.shape[axis]), "w", axis=axis)
    g.node("Gemm", ["xq", "wq"], ["out"], "fc", transB=trans_b)
    report = check_qdq(g.model())
    if ok:
        assert report.ok and not report.warnings, str(report)
    else:
        only(report, "per-channel-axis", "error", "w.DQ")


def test_per_channel_scale_count_must_match_channels() -> None:
    g = clean_graph()
    g.inits["w1.scale"] = np.array([0.01, 0.02], F32)  # 2 scales, 4 output channels
    g.inits["w1.zp"] = np.zeros(2, np.int8)
    only(check_qdq(g.model()), "per-channel-size", "error", "w1.DQ", "w1.scale")


def test_q_and_dq_of_a_pair_disagree() -> None:
    g = clean_graph()
    g.init("r1_in.scale2", np.array(0.3, F32))  # Q quantizes with 0.2, DQ dequantizes with 0.3
    g.find("r1_in.DQ").input[1] = "r1_in.scale2"
    only(check_qdq(g.model()), "qdq-pair-mismatch", "error", "r1_in.DQ")


def test_maxpool_with_different_input_and_output_scales() -> None:
    g = clean_graph()
    g.inits["mp_out.scale"] = np.array(0.25, F32)
    report = check_qdq(g.model())
    only(report, "scale-mismatch", "warning", "maxpool", "catq, mp")
    assert "0.2" in report.warnings[0].message and "0.25" in report.warnings[0].message


def test_concat_input_quantized_elsewhere_with_another_scale() -> None:
    """r1 is quantized at 0.1 for conv2 and also enters the Concat whose output is quantized at 0.2."""
    g = clean_graph()
    g.inits["r1_in.scale"] = np.array(0.1, F32)
    report = check_qdq(g.model())
    only(report, "scale-mismatch", "warning", "concat", "r1, cat")
    assert "r1=0.1" in report.warnings[0].message and "cat=0.2" in report.warnings[0].message
    g.inits["cat_out.scale"] = np.array(0.1, F32)
    g.inits["mp_out.scale"] = np.array(0.1, F32)
    assert not check_qdq(g.model()).findings  # one shared scale: fine


def test_residual_add_with_no_quantized_input() -> None:
    g = clean_graph()
    g.find("add").input[1] = "r1"
    only(check_qdq(g.model()), "residual-add-unquantized", "warning", "add", "r2, r1")


def test_add_of_constant_is_not_a_residual() -> None:
    g = clean_graph()
    g.find("add").input[1] = g.init("bias", np.ones((1, 4, 1, 1), F32))
    assert not check_qdq(g.model()).findings


def test_tensor_quantized_with_two_scales() -> None:
    g = clean_graph()
    g.qdq("r1", "r1q_b", 0.3, "r1_other")
    g.find("concat").input[1] = "r1q_b"
    report = check_qdq(g.model())
    assert ("multi-scale-tensor", "warning", "relu1") in rules(report)


def test_per_channel_activation_is_flagged() -> None:
    g = clean_graph()
    g.inits["r1_in.scale"] = np.full(4, 0.2, F32)
    g.inits["r1_in.zp"] = np.zeros(4, np.int8)
    for n in (g.find("r1_in.Q"), g.find("r1_in.DQ")):
        n.attribute.append(helper.make_attribute("axis", 1))
    only(check_qdq(g.model()), "per-channel-activation", "warning", "r1_in.DQ")


def test_constant_nodes_are_resolved_like_initializers() -> None:
    """TorchScript exports put scales/zero points in Constant nodes; they must be read, not flagged."""
    g = clean_graph()
    for key in ("x_in.scale", "x_in.zp"):
        value = g.inits.pop(key)
        g.nodes.insert(0, helper.make_node("Constant", [], [key], name=f"const_{key}",
                                           value=numpy_helper.from_array(value)))
    assert check_qdq(g.model()).ok
    g.nodes[0] = helper.make_node("Constant", [], ["x_in.zp"], name="const_zp",
                                  value=numpy_helper.from_array(np.array(5, np.int8)))
    report = check_qdq(g.model())
    assert rules(report) == {("zero-point-nonzero", "error", "x_in.Q"), ("zero-point-nonzero", "error", "x_in.DQ")}


def test_ops_inside_model_local_functions_are_checked() -> None:
    g = clean_graph()
    conv2 = g.find("conv2")
    g.nodes[g.nodes.index(conv2)] = helper.make_node("Block", ["r1q", "w2"], ["c2"], name="block", domain="local")
    fn = helper.make_function("local", "Block", ["a", "w"], ["y"], [helper.make_node("Conv", ["a", "w"], ["y"])],
                              [helper.make_opsetid("", 13)])
    model = g.model()
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(fn)
    report = check_qdq(model)
    assert [(f.rule, f.tensor) for f in report.findings] == [("unquantized-weight", "w2")]


def test_fp16_request_flags_float32_tensors() -> None:
    report = check_qdq(clean_graph().model(), fp16=True)
    fp32 = {f.tensor: f for f in report.by_rule("fp32-tensor")}
    assert fp32["r1"].node == "relu1" and fp32["r1"].severity == "error"
    assert {"c1", "r2", "add", "b1", "b3"} <= set(fp32)
    # opset-13 Q inputs / DQ outputs are necessarily float32, scales always are: not errors
    assert not {"x", "xq", "cat", "w1", "x_in.scale"} & set(fp32)
    assert {f.tensor for f in report.by_rule("fp32-io")} == {"x", "out"}
    assert report.by_rule("fp16-qdq-boundary")


def test_fp16_model_with_opset_19_qdq_passes() -> None:
    g = G(opset=19, dtype=TensorProto.FLOAT16, out_shape=(1, 4, 6, 6))
    for name, value in (("s", 0.05), ("ws", 0.01)):
        g.init(name, np.array(value, np.float16))
    g.init("zp", np.array(0, np.int8))
    g.node("QuantizeLinear", ["x", "s", "zp"], ["xq8"], "Q")
    g.node("DequantizeLinear", ["xq8", "s", "zp"], ["xq"], "DQ")
    g.init("w8", RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8))
    g.node("DequantizeLinear", ["w8", "ws", "zp"], ["wq"], "W.DQ")
    g.node("Conv", ["xq", "wq"], ["out"], "conv")
    model = g.model()
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    report = check_qdq(model, fp16=True)
    assert report.ok and not report.warnings, str(report)


def test_report_formats_and_cli(tmp_path, capsys) -> None:
    bad = clean_graph()
    bad.find("conv1").input[0] = "x"
    good_path, bad_path = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(clean_graph().model(), good_path)
    onnx.save(bad.model(), bad_path)
    report = check_qdq(bad_path)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is False and d["errors"][0]["rule"] == "unquantized-activation" and d["errors"][0]["node"] == "conv1"
    assert "unquantized-activation" in str(report) and "conv1" in str(report)
    assert check_main([str(good_path)]) == 0
    assert check_main([str(bad_path)]) == 1
    assert "conv1" in capsys.readouterr().out
    assert check_main([str(tmp_path / "missing.onnx")]) == 2
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf \xff\xff")
    assert check_main([str(tmp_path / "junk.onnx")]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err
