"""fold_zero_points: rewrite per-tensor Q/DQ pairs with a non-zero zero point into the zero-point-0 form.

Why: a shifted activation grid (codes ``clamp(round(x/s) + zp)``, values ``(code - zp) * s``) exports as
QuantizeLinear/DequantizeLinear with an int8 zero point zp != 0. ONNX Runtime runs that, but TensorRT only accepts
symmetric quantization (zero point 0) and rejects the graph.

Math, with c = zp * s: ``Q(x; s, zp) = Q(x + c; s, 0)`` and ``DQ(q; s, zp) = DQ(q; s, 0) - c``. So an ``Add(x, c)``
goes before the QuantizeLinear, both zero points become 0, and the DequantizeLinear output is the true tensor plus
c ("shifted by c"). The shift travels through ops that commute with it (MaxPool, nearest Resize, reshapes, Concat of
equal shifts) and is folded into a Conv that reads it: ``Conv(x + c) = Conv(x) + c * sum(W[co])``, so the bias
becomes ``b - c * sum(W[co])``; a padded Conv gets ``Pad`` with value c (zero padding of the shifted tensor would be
wrong at the borders) followed by the same Q/DQ again (c is code zp of the grid, so that is exact) and pads 0. Every
other consumer gets ``Sub(x, c)``, which is exact. TensorRT then still sees DequantizeLinear -> Conv for every
folded Conv; whether it runs the DQ -> Pad -> Q in int8 could not be checked here (no GPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import QdqtorchError

# ops whose output is their (first) input's values rearranged or selected: a shift on the input carries over unchanged
_SHIFT_THROUGH = frozenset({"Identity", "Reshape", "Flatten", "Transpose", "Slice", "Split", "Squeeze",
                            "Unsqueeze", "MaxPool", "Resize", "Upsample"})
_VALUE_BLIND = frozenset({"Shape", "Size"})  # read only the shape: a shifted input needs no Sub
_REL_TOL = 1e-6  # two shifts closer than this (relative) are the same quantizer's


class ZeroPointError(QdqtorchError, RuntimeError):
    """A Q/DQ node's zero point cannot be folded to 0 (per-channel non-zero zero points, non-constant scale)."""


@dataclass
class _Rewriter:
    """State of one pass over a graph: constants, shifts of tensors, the new node list and fresh names."""

    graph: onnx.GraphProto
    opset: int
    shifts: dict[str, float] = field(default_factory=dict)  # float tensor -> c (tensor = true value + c)
    dtypes: dict[str, np.dtype] = field(default_factory=dict)  # shifted tensor -> its element type
    grids: dict[str, tuple[str, str]] = field(default_factory=dict)  # shifted tensor -> (scale, zero-0) of its grid
    materialized: dict[str, str] = field(default_factory=dict)  # shifted tensor -> its Sub(., c) output
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    zero_names: dict[str, str] = field(default_factory=dict)  # original zero point -> its all-zero replacement
    replaced: set[str] = field(default_factory=set)  # zero points and biases replaced: dropped when unused
    changed_q: set[str] = field(default_factory=set)  # outputs of QuantizeLinear nodes whose zero point was zeroed
    paired_q: set[str] = field(default_factory=set)
    changed_dq: int = 0
    names: set[str] = field(default_factory=set)  # tensor names in use
    node_names: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        """Index initializers, Constant nodes and every name in use."""
        self.inits = {t.name: t for t in self.graph.initializer}
        self.constants = {n.output[0]: n for n in self.graph.node if n.op_type == "Constant" and n.output}
        self.producers = {t: n for n in self.graph.node for t in n.output}
        self.node_names = {n.name for n in self.graph.node}
        self.names = set(self.inits) | {t for n in self.graph.node for t in (*n.input, *n.output)}
        self.names |= {v.name for v in (*self.graph.input, *self.graph.output, *self.graph.value_info)}

    def fresh(self, base: str, node: bool = False) -> str:
        """A tensor (or, with node, a node) name not used in the graph yet."""
        taken = self.node_names if node else self.names
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    def const(self, tensor: str) -> np.ndarray | None:
        """Value of an initializer or Constant-node output (also through Identity), else None."""
        if tensor in self.inits:
            return numpy_helper.to_array(self.inits[tensor])
        producer = self.producers.get(tensor)
        if producer is not None and producer.op_type == "Identity":
            return self.const(producer.input[0])
        node = self.constants.get(tensor)
        if node is None:
            return None
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
            if attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
                return np.asarray(helper.get_attribute_value(attr))
        return None

    def add_init(self, base: str, value: np.ndarray) -> str:
        """Add an initializer under a fresh name; returns the name."""
        name = self.fresh(base)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        self.inits[name] = self.graph.initializer[-1]
        return name

    def emit(self, op: str, inputs: list[str], base: str, **attrs: object) -> str:
        """Append a new single-output node; returns its output name."""
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(base, node=True), **attrs))
        return out

    def scalar(self, base: str, value: float, like: np.ndarray) -> str:
        """A scalar initializer of `like`'s dtype holding `value`."""
        return self.add_init(base, np.array(value, dtype=like.dtype))

    def shift(self, tensor: str, c: float, dtype: np.dtype) -> None:
        """Record that `tensor` holds its true value plus c."""
        self.shifts[tensor], self.dtypes[tensor] = c, dtype

    def shift_value(self, tensor: str) -> np.ndarray:
        """The shift of a tensor as a scalar of the tensor's element type."""
        return np.array(self.shifts[tensor], dtype=self.dtypes[tensor])

    def materialize(self, tensor: str) -> str:
        """The true value of a shifted tensor: Sub(tensor, c), shared by every consumer that needs it."""
        if tensor not in self.materialized:
            c_name = self.add_init(f"{tensor}_shift", self.shift_value(tensor))
            self.materialized[tensor] = self.emit("Sub", [tensor, c_name], f"{tensor}_unshift")
        return self.materialized[tensor]

    def materialize_inputs(self, node: onnx.NodeProto, indices: Iterable[int]) -> None:
        """Replace the shifted inputs at `indices` of `node` by their true values."""
        for i in indices:
            if i < len(node.input) and node.input[i] in self.shifts:
                node.input[i] = self.materialize(node.input[i])

    def zero_point_of(self, node: onnx.NodeProto) -> np.ndarray | None:
        """The constant zero point of a Q/DQ node (None when absent or not constant)."""
        return self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None

    def zero_the_zero_point(self, node: onnx.NodeProto, zp: np.ndarray) -> None:
        """Point the node's zero-point input at an all-zero constant of the same type and shape."""
        old = node.input[2]
        if old not in self.zero_names:
            self.zero_names[old] = self.add_init(f"{old}_zero", np.zeros_like(zp))
        node.input[2] = self.zero_names[old]
        self.replaced.add(old)


def _same_shift(a: float, b: float) -> bool:
    """True when two shifts are the same value up to float rounding."""
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=0.0)


def _qdq_shift(rw: _Rewriter, node: onnx.NodeProto) -> tuple[np.ndarray, float] | None:
    """(zero point, c = zp * s) of a Q/DQ node with a non-zero int8 zero point; None when there is nothing to fold."""
    zp = rw.zero_point_of(node)
    if zp is None or zp.dtype != np.int8 or not np.any(zp != 0):
        return None  # uint8 grids are left as they are (check_qdq reports them); zero zero points need nothing
    scale = rw.const(node.input[1])
    label = node.name or node.output[0]
    if zp.size != 1:
        raise ZeroPointError(f"fold_zero_points: {node.op_type} {label} is per-channel with non-zero zero points; "
                             "only per-tensor zero points can be folded for TensorRT")
    if scale is None or scale.size != 1:
        raise ZeroPointError(f"fold_zero_points: {node.op_type} {label} has a non-zero zero point but its scale is "
                             "not a constant scalar, so the shift cannot be computed")
    c = np.float32(zp.reshape(()).astype(np.float32) * scale.reshape(()).astype(np.float32))
    return zp, float(c)


def _quantize(rw: _Rewriter, node: onnx.NodeProto) -> None:
    """QuantizeLinear: add c before it (unless its input already carries c) and zero its zero point."""
    found = _qdq_shift(rw, node)
    if found is None:
        rw.materialize_inputs(node, [0])
        rw.nodes.append(node)
        return
    zp, c = found
    x = node.input[0]
    if not (x in rw.shifts and _same_shift(rw.shifts[x], c)):
        x = rw.materialize(x) if x in rw.shifts else x
        scale = rw.const(node.input[1])
        x = rw.emit("Add", [x, rw.scalar(f"{node.output[0]}_shift", c, scale)], f"{node.output[0]}_shifted_input")
        node.input[0] = x
    rw.zero_the_zero_point(node, zp)
    rw.changed_q.add(node.output[0])
    rw.nodes.append(node)


def _dequantize(rw: _Rewriter, node: onnx.NodeProto) -> None:
    """DequantizeLinear: zero its zero point; its output then carries the shift c."""
    found = _qdq_shift(rw, node)
    rw.nodes.append(node)
    if found is None:
        return
    zp, c = found
    rw.zero_the_zero_point(node, zp)
    rw.shift(node.output[0], c, rw.const(node.input[1]).dtype)
    rw.grids[node.output[0]] = (node.input[1], node.input[2])
    rw.changed_dq += 1
    if node.input[0] in rw.changed_q:
        rw.paired_q.add(node.input[0])


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """Value of a node attribute, or default when absent."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value: object) -> None:
    """Set (replace) a node attribute."""
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def _channel_shape(node: onnx.NodeProto, scale: np.ndarray, ndim: int) -> list[int]:
    """Shape that broadcasts a Q/DQ node's scale or zero point over its ndim-D input (per-tensor or along axis)."""
    shape = [1] * ndim
    if scale.size > 1:
        shape[int(_attr(node, "axis", 1)) % ndim] = -1
    return shape


def _quantized_const(rw: _Rewriter, tensor: str) -> np.ndarray | None:
    """Integer codes of a constant, or of QuantizeLinear of constants (computed as onnxruntime does)."""
    value = rw.const(tensor)
    node = rw.producers.get(tensor)
    if value is not None or node is None or node.op_type != "QuantizeLinear":
        return value
    x, scale = rw.const(node.input[0]), rw.const(node.input[1])
    zp = rw.zero_point_of(node) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    if x is None or scale is None or zp is None:
        return None
    shape = _channel_shape(node, scale, x.ndim)
    info = np.iinfo(zp.dtype)
    codes = np.rint(x / scale.reshape(shape)) + zp.astype(np.float64).reshape(shape)  # rint: half to even, as ONNX
    return np.clip(codes, info.min, info.max).astype(zp.dtype)


def _conv_weight(rw: _Rewriter, tensor: str) -> np.ndarray | None:
    """Float value of a Conv weight: a constant, or DequantizeLinear of constant (or constant-quantized) codes."""
    value = rw.const(tensor)
    if value is not None:
        return value.astype(np.float64)
    dq = rw.producers.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q, scale = _quantized_const(rw, dq.input[0]), rw.const(dq.input[1])
    zp = rw.zero_point_of(dq) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.int8)
    if q is None or scale is None or zp is None:
        return None
    shape = _channel_shape(dq, scale, q.ndim)
    return (q.astype(np.float64) - zp.astype(np.float64).reshape(shape)) * scale.astype(np.float64).reshape(shape)


def _pads(node: onnx.NodeProto, spatial: int) -> list[int] | None:
    """The Conv's explicit pads ([begins..., ends...]); None for SAME_* auto padding, which needs shapes."""
    auto = _attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return None
    if auto == "VALID":
        return [0] * (2 * spatial)
    return list(_attr(node, "pads", [0] * (2 * spatial)))


def _conv(rw: _Rewriter, node: onnx.NodeProto) -> None:
    """Conv reading a shifted X: fold -c * sum(W) into the bias, and pad with c in front when it pads."""
    x = node.input[0]
    rw.materialize_inputs(node, [1, 2])
    weight = _conv_weight(rw, node.input[1]) if x in rw.shifts else None
    bias = rw.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(0, np.float32)
    pads = _pads(node, weight.ndim - 2) if weight is not None else None
    if (weight is None or bias is None or pads is None
            or (any(pads) and (rw.opset < 11 or x not in rw.grids))):
        rw.materialize_inputs(node, [0])
        rw.nodes.append(node)
        return
    c = rw.shifts[x]
    sums = weight.reshape(weight.shape[0], -1).sum(axis=1)
    new_bias = (bias.astype(np.float64) if bias.size else np.zeros_like(sums)) - c * sums
    dtype = bias.dtype if bias.size else rw.dtypes[x]
    bias_name = rw.add_init(f"{node.name or node.output[0]}_bias_folded", new_bias.astype(dtype))
    if len(node.input) > 2:
        rw.replaced.add(node.input[2])
        node.input[2] = bias_name
    else:
        node.input.append(bias_name)
    if any(pads):
        half = len(pads) // 2
        full = [0, 0, *pads[:half], 0, 0, *pads[half:]]
        pad_inputs = [x, rw.add_init(f"{x}_pads", np.array(full, np.int64)),
                      rw.add_init(f"{x}_pad_value", rw.shift_value(x))]
        padded = rw.emit("Pad", pad_inputs, f"{x}_padded", mode="constant")
        # the border value c is code zp of the grid, so quantizing again is exact, and the Conv keeps its
        # DequantizeLinear input (TensorRT's INT8 conv fusion needs DQ -> Conv)
        scale, zero = rw.grids[x]
        codes = rw.emit("QuantizeLinear", [padded, scale, zero], f"{x}_padded_q")
        node.input[0] = rw.emit("DequantizeLinear", [codes, scale, zero], f"{x}_padded_dq")
        _set_attr(node, "pads", [0] * len(pads))
    rw.nodes.append(node)


def _shift_through(rw: _Rewriter, node: onnx.NodeProto) -> bool:
    """Carry the shift of a commuting op's data input(s) to its output(s); False when the op does not commute."""
    if node.op_type == "Concat":
        shifts = [rw.shifts.get(t) for t in node.input]
        if shifts[0] is None or not all(s is not None and _same_shift(s, shifts[0]) for s in shifts):
            return False
        c: float = shifts[0]
        dtype = rw.dtypes[node.input[0]]
    else:
        if node.op_type not in _SHIFT_THROUGH or not node.input or node.input[0] not in rw.shifts:
            return False
        if node.op_type in ("Resize", "Upsample"):
            mode = _attr(node, "mode", b"nearest")
            crop = _attr(node, "coordinate_transformation_mode", b"")
            if mode not in (b"nearest", "nearest") or crop in (b"tf_crop_and_resize", "tf_crop_and_resize"):
                return False
        c, dtype = rw.shifts[node.input[0]], rw.dtypes[node.input[0]]
        rw.materialize_inputs(node, range(1, len(node.input)))
    outputs = node.output[:1] if node.op_type == "MaxPool" else node.output  # MaxPool's 2nd output: indices
    grid = rw.grids.get(node.input[0])
    for out in outputs:
        if out:
            rw.shift(out, c, dtype)
            if grid is not None:
                rw.grids[out] = grid
    rw.nodes.append(node)
    return True


def _add(rw: _Rewriter, node: onnx.NodeProto) -> bool:
    """Add with one shifted input (an int8 residual shortcut): subtract c from the other input instead, so the
    shortcut's DequantizeLinear still feeds the Add directly (TensorRT fuses DQ -> Add into the Conv before it).
    False when that does not apply (not an Add, or no or two shifted inputs)."""
    shifted = [i for i, t in enumerate(node.input[:2]) if t in rw.shifts]
    if node.op_type != "Add" or len(node.input) != 2 or len(shifted) != 1:
        return False
    mine, other = shifted[0], 1 - shifted[0]
    x = node.input[mine]
    c_name = rw.add_init(f"{x}_shift", rw.shift_value(x))
    node.input[other] = rw.emit("Sub", [node.input[other], c_name], f"{node.output[0]}_other_unshift")
    rw.nodes.append(node)
    return True


def _rewrite_node(rw: _Rewriter, node: onnx.NodeProto) -> None:
    """Dispatch one node in topological order."""
    if node.op_type == "QuantizeLinear":
        _quantize(rw, node)
    elif node.op_type == "DequantizeLinear":
        _dequantize(rw, node)
    elif node.op_type == "Conv":
        _conv(rw, node)
    elif node.op_type in _VALUE_BLIND:
        rw.nodes.append(node)
    elif not (_add(rw, node) or _shift_through(rw, node)):
        rw.materialize_inputs(node, range(len(node.input)))
        rw.nodes.append(node)


def _fix_graph_outputs(rw: _Rewriter) -> None:
    """A shifted graph output: rename the shifted tensor and compute the output's true value under its name."""
    for output in rw.graph.output:
        name = output.name
        if name not in rw.shifts:
            continue
        shifted = rw.fresh(f"{name}_shifted")
        for node in rw.nodes:
            node.input[:] = [shifted if t == name else t for t in node.input]
            node.output[:] = [shifted if t == name else t for t in node.output]
        c_name = rw.add_init(f"{name}_shift", rw.shift_value(name))
        rw.nodes.append(helper.make_node("Sub", [shifted, c_name], [name], name=rw.fresh(f"{name}_unshift", node=True)))


def _drop_unused(rw: _Rewriter) -> None:
    """Remove the replaced zero points and biases (initializers, Constant nodes) nothing reads any more."""
    used = {t for n in rw.nodes for t in n.input} | {o.name for o in rw.graph.output}
    unused = rw.replaced - used
    kept_inits = [t for t in rw.graph.initializer if t.name not in unused]
    del rw.graph.initializer[:]
    rw.graph.initializer.extend(kept_inits)
    rw.nodes = [n for n in rw.nodes if not (n.op_type == "Constant" and set(n.output) <= unused)]


def _needs_folding(rw: _Rewriter) -> bool:
    """True when some Q/DQ node has a non-zero zero point (raises for the kinds that cannot be folded)."""
    return any(_qdq_shift(rw, n) is not None for n in rw.graph.node
               if n.op_type in ("QuantizeLinear", "DequantizeLinear"))


def _default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def fold_zero_points(model: onnx.ModelProto) -> int:
    """Rewrite every per-tensor Q/DQ with a non-zero zero point to zero point 0 in place; returns the pairs changed."""
    rw = _Rewriter(model.graph, _default_opset(model))
    if not _needs_folding(rw):
        return 0
    for original in model.graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)  # edited freely, then written back as the whole new node list
        _rewrite_node(rw, node)
    _fix_graph_outputs(rw)
    _drop_unused(rw)
    del model.graph.node[:]
    model.graph.node.extend(rw.nodes)
    return rw.changed_dq + len(rw.changed_q - rw.paired_q)
