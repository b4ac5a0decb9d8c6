"""qdqtorch.rules: TensorRT placement rules (ties, residual shortcuts, float tails) on toy models and real YOLOs."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from conftest import YOLOV5_REPO_FIXTURE
from qdqtorch.calib import HistogramCalibrator
from qdqtorch.nn import QuantAdd
from qdqtorch.quantize import (calibrate, collect_stats, compute_amax, load_calibration, named_quantizers,
                               quantize_model, save_calibration)
from qdqtorch.rules import (PLACEMENTS, RulesReport, TensorRTPlacement, TiedQuantizer, apply_placement,
                            apply_tensorrt_rules, placement_from_name)

X = torch.zeros(1, 3, 16, 16)


class ConvAct(nn.Module):
    def __init__(self, c1: int, c2: int, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, 3, s, 1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = ConvAct(c, c), ConvAct(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x))


class Cat(nn.Module):
    def forward(self, xs: list) -> torch.Tensor:
        return torch.cat(xs, 1)


class Toy(nn.Module):
    """stem -> residual -> [itself, maxpool, down+upsample] -> concat -> conv -> head conv -> sigmoid tail."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvAct(3, 8)
        self.res = Residual(8)
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.down = ConvAct(8, 8, 2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.cat = Cat()
        self.fuse = ConvAct(24, 8)
        self.head = nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.res(self.stem(x))
        y = self.fuse(self.cat([r, self.pool(r), self.up(self.down(r))]))
        return self.head(y).sigmoid() * 2.0


def _toy(seed: int = 0, modules=None) -> Toy:
    torch.manual_seed(seed)
    model = Toy().eval()
    quantize_model(model, None if modules is None else {"modules": modules})
    return model


def _data(n: int = 3, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 16, 16, generator=g) * 2 for _ in range(n)]


@pytest.fixture()
def toy_tied() -> tuple:
    model = _toy(modules=["Conv2d", "MaxPool2d"])
    return model, apply_tensorrt_rules(model, X, residual="int8")


def test_toy_gets_the_expected_ties(toy_tied) -> None:
    model, report = toy_tied
    assert isinstance(report, RulesReport) and not report.skipped, str(report)
    cat = report.group_of("fuse.conv._input_quantizer")
    assert cat is not None
    # concat inputs r, pool(r), up(down(r)) and the concat reader share one quantizer; r is also read by `down` and
    # `pool`, so their input quantizers join; r and the upsample output get new quantization points
    assert {"fuse.conv._input_quantizer", "down.conv._input_quantizer", "pool._input_quantizer", "res:output",
            "up:output"} == set(cat.sites)
    assert {"concat", "maxpool", "resize"} <= set(cat.reasons)
    q = model.fuse.conv._input_quantizer
    assert isinstance(q, TiedQuantizer)
    assert q is model.down.conv._input_quantizer is model.pool._input_quantizer is model.res._rules_output_quantizer
    assert model.up._rules_output_quantizer is q
    # residual: the shortcut (stem output) is quantized with the quantizer of its other reader; b's branch is fused
    res = report.group_of("res.a.conv._input_quantizer")
    assert set(res.sites) == {"res.a.conv._input_quantizer", "stem.act:output"} and "residual" in res.reasons
    assert report.residual_adds == [{"add": "add@res", "quantized": res.name, "fused": "conv2d@res.b.conv"}]
    # the head conv keeps its own quantizer, the sigmoid tail gets none
    assert report.group_of("head._input_quantizer") is None
    assert not isinstance(model.head._input_quantizer, TiedQuantizer)
    assert len(report.tied_groups) == 2 and "2 tied groups" in str(report)
    assert report.to_dict()["groups"][0]["sites"]


def test_tied_amax_is_max_over_members(toy_tied) -> None:
    """Max calibration of a tied group == max over what each member would calibrate alone (and over the tensors)."""
    model, report = toy_tied
    untied = _toy(modules=["Conv2d", "MaxPool2d"])
    data = _data()
    calibrate(model, data, progress=False)
    calibrate(untied, data, progress=False)
    members = [untied.fuse.conv._input_quantizer, untied.down.conv._input_quantizer, untied.pool._input_quantizer]
    tied = model.fuse.conv._input_quantizer.amax
    assert float(tied) == max(float(m.amax) for m in members)
    # brute-force reference from the float model's tensors: concat output covers r, pool(r), up(down(r))
    float_model = copy.deepcopy(untied)
    seen = []
    float_model.fuse.register_forward_pre_hook(lambda m, a: seen.append(a[0].abs().max()))
    with torch.no_grad(), warnings.catch_warnings():
        for q in [q for _, q in named_quantizers(float_model)]:
            q.disable()
        for x in data:
            float_model(x)
    assert float(tied) == pytest.approx(float(max(seen)), rel=1e-6)
    # every site reads the same amax; the untouched residual group is separate
    assert model.up._rules_output_quantizer.amax is tied
    assert float(model.res.a.conv._input_quantizer.amax) != float(tied)


def test_histogram_calibration_unions_statistics_once_per_tensor(toy_tied) -> None:
    model, _ = toy_tied
    data = _data(2)
    calibrate(model, data, method="percentile", percentile=99.9, progress=False)
    calib = model.fuse.conv._input_quantizer._calibrator
    assert isinstance(calib, HistogramCalibrator)
    # sites: res output (also read by pool and down: the same tensor, counted once), up output, concat output
    per_batch = 2 * 8 * 16 * 16 + 2 * 8 * 16 * 16 + 2 * 24 * 16 * 16
    assert int(calib.counts.sum()) + calib._pending_zeros == per_batch * len(data)
    assert calib.num_collected == 3 * len(data)


def test_same_tensor_is_quantized_once_and_output_matches(toy_tied, tmp_path) -> None:
    model, _ = toy_tied
    calibrate(model, _data(), progress=False)
    from qdqtorch.export import check_qdq, export_onnx
    path = export_onnx(model, X, tmp_path / "toy.onnx")
    proto = onnx.load(str(path))
    readers = {}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear":
            readers[node.input[0]] = readers.get(node.input[0], 0) + 1
    assert max(readers.values()) == 1  # one Q/DQ per tensor, however many quantized consumers it has
    report = check_qdq(path)
    assert report.ok and not report.findings, str(report)
    import onnxruntime as ort
    x = _data(1)[0][:1]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() < 1e-4


def test_untied_toy_shows_violations(tmp_path) -> None:
    from qdqtorch.export import check_qdq, export_onnx
    model = _toy(modules=["Conv2d", "MaxPool2d"])
    with torch.no_grad():
        model.down.conv.weight *= 4  # the upsampled branch then dominates the concat's range
    calibrate(model, _data(), progress=False)
    rules = {f.rule for f in check_qdq(export_onnx(model, X, tmp_path / "untied.onnx")).findings}
    assert {"residual-add-unquantized", "scale-mismatch"} <= rules


def test_rules_again_change_nothing_and_calibration_state_round_trips(toy_tied, tmp_path) -> None:
    model, _ = toy_tied
    before = {n: id(q) for n, q in named_quantizers(model)}
    again = apply_tensorrt_rules(model, X, residual="int8")
    assert not again.groups and not again.skipped
    assert {n: id(q) for n, q in named_quantizers(model)} == before
    calibrate(model, _data(), progress=False)
    path = save_calibration(model, tmp_path / "calib.json")
    fresh = _toy(modules=["Conv2d", "MaxPool2d"])
    apply_tensorrt_rules(fresh, X, residual="int8")
    assert load_calibration(fresh, path) == len(before)
    x = _data(1, seed=5)[0]
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    clone = copy.deepcopy(model)  # hooks use the module they fire on, so the copy uses its own quantizers
    clone.fuse.conv._input_quantizer.amax = 123.0
    assert float(clone.up._rules_output_quantizer.amax) == 123.0
    assert float(model.up._rules_output_quantizer.amax) != 123.0


def test_collect_then_compute_with_tied_quantizers() -> None:
    model = _toy()
    apply_tensorrt_rules(model, X)
    collect_stats(model, _data(), progress=False)
    compute_amax(model, "max", progress=False)
    q = model.fuse.conv._input_quantizer
    assert q is model.down.conv._input_quantizer and q.amax is not None and float(q.amax) > 0


class DFL(nn.Module):
    """Stand-in for Ultralytics' distribution focal loss integral: a fixed 1x1 conv over a softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.softmax(1))


class TailHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = ConvAct(3, 4)
        self.pred = nn.Conv2d(4, 4, 1)
        self.dfl = DFL()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pred(self.body(x))
        return torch.cat([self.dfl(p), self.pool(p.sigmoid()).repeat_interleave(2, -1).repeat_interleave(2, -2)], 1)


def test_head_decoding_dfl_and_tails_stay_float() -> None:
    torch.manual_seed(0)
    model = TailHead().eval()
    quantize_model(model, {"modules": ["Conv2d", "MaxPool2d"]})
    report = apply_tensorrt_rules(model, X)
    disabled = dict(report.disabled)
    assert "dfl.conv._input_quantizer" in disabled and "dfl.conv._weight_quantizer" in disabled
    assert "pool._input_quantizer" in disabled and "decoding" in disabled["pool._input_quantizer"]
    assert not model.dfl.conv._input_quantizer.is_enabled and not model.pool._input_quantizer.is_enabled
    assert model.pred._input_quantizer.is_enabled  # the head's own conv stays quantized
    assert not report.groups  # the tail concat is not tied, and pred's output is not quantized
    assert not any(n.startswith("pred._rules") for n, _ in named_quantizers(model))


class FusedInputsAdd(nn.Module):
    """A QuantAdd with both inputs quantized after two convs: the rule turns off the one TensorRT fuses."""

    def __init__(self) -> None:
        super().__init__()
        self.a = ConvAct(3, 4)
        self.b = ConvAct(4, 4)
        self.add = QuantAdd()
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.out(self.add(y, self.b(y)))


def test_quant_add_fused_input_is_disabled_and_shortcut_shared() -> None:
    torch.manual_seed(0)
    model = FusedInputsAdd().eval()
    quantize_model(model)
    report = apply_tensorrt_rules(model, X, residual="int8")
    assert not model.add._input1_quantizer.is_enabled
    assert "fused" in dict(report.disabled)["add._input1_quantizer"]
    assert model.add._input0_quantizer is model.b.conv._input_quantizer  # the shortcut is read by b as well
    assert report.residual_adds[0]["fused"] == "conv2d@b.conv"


class SharedShortcut(nn.Module):
    """y feeds a residual shortcut and two quantized convs (res.a, c)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.res, self.c = ConvAct(3, 4), Residual(4), ConvAct(4, 4)
        self.cat = Cat()
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.out(self.cat([self.res(y), self.c(y)]))


@pytest.mark.parametrize("residual", ["float", "int8"])
def test_residual_shortcut_float_or_int8(residual, tmp_path) -> None:
    """residual='float' (default): the Add reads the stem output unquantized while a and c still share one scale;
    'int8': the stem output is quantized once where it is made, for a, c and the Add alike."""
    from qdqtorch.export import check_qdq, export_onnx
    torch.manual_seed(0)
    model = SharedShortcut().eval()
    quantize_model(model)
    report = apply_tensorrt_rules(model, X, residual=residual) if residual == "int8" else apply_tensorrt_rules(
        model, X)
    assert not report.skipped, str(report)
    assert model.res.a.conv._input_quantizer is model.c.conv._input_quantizer
    calibrate(model, _data(), progress=False)
    seen = []
    model.stem.register_forward_hook(lambda m, a, out: seen.append(out))  # runs after the rules' output hook
    x = _data(1, seed=3)[0]
    with torch.no_grad():
        model(x)
        raw = torch.nn.functional.silu(model.stem.conv(x))  # stem.act would run the rules' hook
    findings = {f.rule for f in check_qdq(export_onnx(model, X, tmp_path / "m.onnx")).findings}
    if residual == "float":
        assert torch.equal(seen[0], raw)  # the shortcut is the float tensor
        assert report.residual_adds[0]["quantized"] == "none (shortcut float)"
        assert findings == {"residual-add-unquantized"}
    else:
        q = model.c.conv._input_quantizer
        assert torch.equal(seen[0], q(raw)) and not torch.equal(seen[0], raw)
        assert report.residual_adds[0]["quantized"] == q.name
        assert not findings


class FunctionalResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = ConvAct(3, 4), ConvAct(4, 4), ConvAct(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        z = y + self.b(y)  # made and consumed by plain ops in this forward: no module boundary to hook
        return self.c(torch.cat([z, z], 1))


def test_unplaceable_tensor_is_reported_not_silently_skipped() -> None:
    model = FunctionalResidual().eval()
    quantize_model(model)
    report = apply_tensorrt_rules(model, X)
    assert any(what == "add@<model>" and "wrap" in why for what, why in report.skipped), str(report)
    assert "WARNING skipped add@<model>" in str(report)


def test_bad_calls_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="run quantize_model first"):
        apply_tensorrt_rules(Toy(), X)
    model = _toy()
    with pytest.raises(RuntimeError, match="example input of shape"):
        apply_tensorrt_rules(model, torch.zeros(1, 5, 16, 16))
    assert all(q.is_enabled for _, q in named_quantizers(model))  # states restored after the failed trace


def test_rules_after_calibration_warn_and_take_the_largest_amax() -> None:
    model = _toy()
    calibrate(model, _data(), progress=False)
    amaxes = [float(model.fuse.conv._input_quantizer.amax), float(model.down.conv._input_quantizer.amax)]
    with pytest.warns(UserWarning, match="already calibrated"):
        apply_tensorrt_rules(model, X)
    assert float(model.fuse.conv._input_quantizer.amax) == pytest.approx(max(amaxes))


# ---- real models ---------------------------------------------------------------------------------------------

def _coco_batch(coco128_dir, n: int, size: int) -> torch.Tensor:
    import cv2
    files = sorted((coco128_dir / "images" / "val2017").glob("*.jpg"))[:n]
    imgs = [cv2.resize(cv2.imread(str(f))[:, :, ::-1], (size, size)) for f in files]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def yolov5n_exports(yolov5n_path, coco128_dir, tmp_path_factory):
    from qdqtorch.export import check_qdq, export_onnx
    from qdqtorch.models import load_model
    base = load_model(yolov5n_path, repo=YOLOV5_REPO_FIXTURE).model
    batch = _coco_batch(coco128_dir, 4, 64)
    out = {}
    for rules in (False, True, "float"):
        model = copy.deepcopy(base)
        quantize_model(model)
        residual = "float" if rules == "float" else "int8"
        report = apply_tensorrt_rules(model, batch[:1], residual=residual) if rules else None
        # percentile amax: untied quantizers of a concat's input and output then differ (with max calibration
        # they can coincide when one input holds the concat's maximum)
        calibrate(model, [batch[:2], batch[2:]], method="percentile", percentile=99.9, progress=False)
        path = export_onnx(model, batch[:1], tmp_path_factory.mktemp("y5") / f"rules_{rules}.onnx")
        out[rules] = (model, report, check_qdq(path), path, batch)
    return out


def test_yolov5n_export_is_clean_with_rules(yolov5n_exports) -> None:
    model, report, check, _, _ = yolov5n_exports[True]
    assert check.ok and not check.findings, str(check)
    assert not report.skipped and len(report.residual_adds) == 7, str(report)
    # SPPF: cv1 output, its three max-pools and the concat share cv2's input quantizer
    sppf = report.group_of("model.9.cv2.conv._input_quantizer")
    assert {"concat", "maxpool"} <= set(sppf.reasons) and "model.9.cv1.act:output" in sppf.sites
    # neck: backbone P4 output, upsampled lateral and the PAN concat are one scale
    neck = report.group_of("model.7.conv._input_quantizer")
    assert {"concat", "resize"} <= set(neck.reasons) and "model.23.cv1.conv._input_quantizer" in neck.sites
    assert model.model[7].conv._input_quantizer is model.model[23].cv1.conv._input_quantizer


def test_yolov5n_float_shortcuts_leave_only_the_residual_adds_unfused(yolov5n_exports) -> None:
    _, report, check, _, _ = yolov5n_exports["float"]
    assert check.ok and {f.rule for f in check.findings} == {"residual-add-unquantized"}, str(check)
    assert len(check.findings) == len(report.residual_adds) == 7
    assert all(r["quantized"] == "none (shortcut float)" for r in report.residual_adds)


def test_yolov5n_export_without_rules_lists_concrete_violations(yolov5n_exports) -> None:
    _, _, check, _, _ = yolov5n_exports[False]
    found = {(f.rule, f.node) for f in check.findings}
    assert ("residual-add-unquantized", "/model.2/m/m.0/Add") in found
    neck = {"/model.12/Concat", "/model.16/Concat", "/model.19/Concat", "/model.22/Concat"}
    assert any(rule == "scale-mismatch" and node in neck for rule, node in found), found


def test_ultralytics_yolov8n_clean_except_float_dfl(tmp_path) -> None:
    from qdqtorch.export import check_qdq, export_onnx
    from qdqtorch.models import load_model
    loaded = load_model("yolov8n.yaml")
    model = loaded.model
    quantize_model(model, {"ignore": loaded.default_ignore})
    x = torch.rand(1, 3, 64, 64)
    report = apply_tensorrt_rules(model, x, residual="int8")
    assert not report.skipped and len(report.residual_adds) == 6, str(report)
    # C2f: the chunked cv1 output reaches the first bottleneck's shortcut through a module-input quantizer
    assert "model.2.m.0:input[0]" in report.group_of("model.2.cv1:output").sites
    calibrate(model, [torch.rand(1, 3, 64, 64) for _ in range(2)], progress=False)
    check = check_qdq(export_onnx(model, x, tmp_path / "v8.onnx"), allow_float=["/model.22/dfl/*"])
    assert check.ok and all(f.node.startswith("/model.22/dfl/") for f in check.findings), str(check)


# ---- FP16 float regions ----------------------------------------------------------------------------------------

def _shape_only(proto: onnx.ModelProto) -> set:
    """Tensors computed from shapes (Shape/Size outputs onward, and constants only they read): TensorRT folds these
    while building, so float32 there costs nothing. Independent of the converter's own bookkeeping."""
    consumers = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    data = {i.name for i in proto.graph.input}
    shape = set()
    for n in proto.graph.node:
        if n.op_type in ("Shape", "Size") or (not data & set(n.input) and shape & set(n.input)):
            shape.update(n.output)
        elif data & set(n.input):
            data.update(n.output)
    consts = {n.output[0] for n in proto.graph.node if n.op_type == "Constant"}
    consts |= {t.name for t in proto.graph.initializer}
    return shape | {c for c in consts if consumers.get(c) and all(set(m.output) <= shape for m in consumers[c])}


def _fp16_findings_ok(report, proto: onnx.ModelProto) -> bool:
    shape = _shape_only(proto)
    return all(f.rule == "fp32-tensor" and f.tensor in shape for f in report.errors)


@pytest.fixture()
def toy_onnx(tmp_path) -> tuple:
    from qdqtorch.export import export_onnx
    model = _toy()
    apply_tensorrt_rules(model, X)
    calibrate(model, _data(), progress=False)
    return model, {opset: export_onnx(model, X, tmp_path / f"toy{opset}.onnx", opset=opset) for opset in (13, 19)}


def _ort(path, x: np.ndarray, basic: bool = False) -> np.ndarray:
    import onnxruntime as ort
    options = ort.SessionOptions()
    if basic:  # ORT's int8 fusions do not take float16 Q/DQ
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_fp16_regions_opset13_casts_around_qdq_and_runs_in_onnxruntime(toy_onnx, tmp_path) -> None:
    from qdqtorch.export import check_qdq
    from qdqtorch.rules.fp16_regions import float_regions_to_fp16
    _, paths = toy_onnx
    out = tmp_path / "toy_fp16.onnx"
    proto = float_regions_to_fp16(paths[13], out)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*proto.graph.input, *proto.graph.output,
                                                                 *proto.graph.value_info]}
    conv_inputs = [n.input[0] for n in proto.graph.node if n.op_type == "Conv"]
    assert all(types[t] == onnx.TensorProto.FLOAT16 for t in conv_inputs)  # convs run in fp16 on cast DQ outputs
    q_inputs = [n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert all(types.get(t, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for t in q_inputs)  # opset 13 Q
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    report = check_qdq(out, fp16=True)
    assert _fp16_findings_ok(report, proto), str(report)
    assert {f.rule for f in report.warnings} <= {"fp16-qdq-boundary", "residual-add-unquantized"}  # float shortcut
    x = _data(1)[0][:1].numpy()
    want = _ort(paths[13], x)
    got = _ort(out, x.astype(np.float16))
    assert got.dtype == np.float16 and np.abs(got.astype(np.float32) - want).max() < 0.02  # sigmoid outputs


def test_fp16_regions_opset19_types_qdq_in_fp16(toy_onnx, tmp_path) -> None:
    from qdqtorch.export import check_qdq
    from qdqtorch.rules.fp16_regions import float_regions_to_fp16
    _, paths = toy_onnx
    proto = float_regions_to_fp16(paths[19], tmp_path / "toy19_fp16.onnx", fp16_io=False)
    qdq_inputs = {i for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in n.input}
    casts = [n for n in proto.graph.node if n.op_type == "Cast" and n.output[0] in qdq_inputs]
    assert [n.input[0] for n in casts] == ["images"]  # only the float32 graph input is cast (fp16_io=False)
    scales = {t.name: t for t in proto.graph.initializer}
    dq_scales = [n.input[1] for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert dq_scales and all(scales[s].data_type == onnx.TensorProto.FLOAT16 for s in dq_scales)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp16_io=False
    report = check_qdq(proto, fp16=True)
    assert _fp16_findings_ok(report, proto) and not any(f.rule == "fp16-qdq-boundary" for f in report.warnings)
    x = _data(1)[0][:1].numpy()
    got = _ort(tmp_path / "toy19_fp16.onnx", x, basic=True)
    assert got.dtype == np.float32 and np.abs(got - _ort(paths[19], x)).max() < 0.02


def test_fp16_regions_reject_constants_beyond_fp16(tmp_path) -> None:
    from onnx import helper
    from qdqtorch.rules.fp16_regions import Fp16ConversionError, float_regions_to_fp16
    big = onnx.numpy_helper.from_array(np.array([1e6], dtype=np.float32), "big")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "big"], ["y"], name="scale_up")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])], [big])
    with pytest.raises(Fp16ConversionError, match="constant big.*float16"):
        float_regions_to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        float_regions_to_fp16(tmp_path / "nope.onnx")


def test_yolov5n_fp16_regions_run_in_onnxruntime_close_to_fp32(yolov5n_exports, tmp_path) -> None:
    from qdqtorch.export import check_qdq
    from qdqtorch.rules.fp16_regions import float_regions_to_fp16
    _, _, _, path, batch = yolov5n_exports[True]
    proto = float_regions_to_fp16(path, tmp_path / "y5_fp16.onnx")
    report = check_qdq(tmp_path / "y5_fp16.onnx", fp16=True)
    assert _fp16_findings_ok(report, proto), str(report)
    x = batch.numpy()
    want = np.concatenate([_ort(path, x[i:i + 1]) for i in range(len(x))])
    got = np.concatenate([_ort(tmp_path / "y5_fp16.onnx", x[i:i + 1].astype(np.float16))
                          for i in range(len(x))]).astype(np.float32)
    # fp16 rounding moves values across int8 rounding boundaries here and there (TensorRT's fp16 regions do the
    # same); the benchmark measures the mAP effect, this checks the outputs stay close on average
    conf_diff = np.abs(got[..., 4] - want[..., 4])
    assert conf_diff.mean() < 0.01 and np.percentile(conf_diff, 99) < 0.1
    sure = want[..., 4] > 0.1
    assert sure.any() and np.abs(got[sure][:, :4] - want[sure][:, :4]).mean() < 1.0  # pixels at 64 px


def test_placement_names_map_to_configs_and_bad_input_is_refused() -> None:
    assert PLACEMENTS == ("tensorrt", "tensorrt-int8-residual", "none")
    assert placement_from_name("tensorrt") == TensorRTPlacement(residual="float") == TensorRTPlacement()
    assert placement_from_name("tensorrt-int8-residual") == TensorRTPlacement(residual="int8")
    assert placement_from_name("none") is None and placement_from_name(None) is None
    with pytest.raises(ValueError, match="'openvino'.*tensorrt-int8-residual"):
        placement_from_name("openvino")
    with pytest.raises(ValueError, match="residual"):
        TensorRTPlacement(residual="fp16")
    with pytest.raises(ValueError, match="example_input"):
        apply_placement(_toy(), TensorRTPlacement(), None)
    with pytest.raises(TypeError):
        quantize_model(Toy(), None, rules="tensorrt")  # placement is its own step now


@pytest.mark.parametrize("name", ["tensorrt", "tensorrt-int8-residual", "none"])
def test_apply_placement_is_apply_tensorrt_rules_with_the_named_residual_mode(name) -> None:
    """The named placement ties exactly what apply_tensorrt_rules(residual=...) ties; "none" leaves the model as is."""
    model = _toy(modules=["Conv2d", "MaxPool2d"])
    before = {n: id(q) for n, q in named_quantizers(model)}
    report = apply_placement(model, placement_from_name(name), X)
    if name == "none":
        assert report is None and {n: id(q) for n, q in named_quantizers(model)} == before
        return
    reference = _toy(modules=["Conv2d", "MaxPool2d"])
    residual = "int8" if name.endswith("int8-residual") else "float"
    expected = apply_tensorrt_rules(reference, X, residual=residual)
    assert report.to_dict() == expected.to_dict() and report.tied_groups
    quantized_shortcut = [r["quantized"] for r in report.residual_adds]
    assert all(("none" in q) == (residual == "float") for q in quantized_shortcut) and quantized_shortcut


def test_checker_sees_c2f_shortcuts_through_split_as_quantized(tmp_path) -> None:
    """rules 'tensorrt' on YOLOv8n: each C2f shortcut is a tensor already quantized for another consumer (a Split
    chunk of cv1's output, quantized for the Concat; or the previous bottleneck's output, quantized for the next
    cv1), so the graph has all six shortcuts INT8 and the checker, looking through Split/Slice, warns on none."""
    import onnx

    from qdqtorch.export import check_qdq, export_onnx
    from qdqtorch.export.checks.graph import GraphIndex
    from qdqtorch.models import load_model
    loaded = load_model("yolov8n.yaml")
    model = loaded.model
    quantize_model(model, {"ignore": loaded.default_ignore})
    x = torch.rand(1, 3, 64, 64)
    apply_placement(model, TensorRTPlacement(), x)
    calibrate(model, [torch.rand(1, 3, 64, 64) for _ in range(2)], progress=False)
    path = export_onnx(model, x, tmp_path / "v8.onnx")
    g = GraphIndex(onnx.load(str(path)))
    adds = [n for n in g.nodes if n.op_type == "Add" and "/m." in g.name(n)]
    # the reference: walk up by hand from each Add input, through Slice only, to a DequantizeLinear
    via_slice = 0
    for add in adds:
        for tensor in add.input:
            node, hops = g.producer.get(tensor), 0
            while node is not None and node.op_type == "Slice":
                node, hops = g.producer.get(node.input[0]), hops + 1
            if node is not None and node.op_type == "DequantizeLinear":
                via_slice += hops > 0
                break
        else:
            raise AssertionError(f"{g.name(add)} has no quantized input")
    assert len(adds) == 6 and via_slice == 4
    check = check_qdq(path, allow_float=["/model.22/dfl/*"])
    assert not [f for f in check.findings if f.rule == "residual-add-unquantized"], str(check)
