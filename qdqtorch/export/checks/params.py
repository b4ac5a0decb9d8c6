"""Rules on each QuantizeLinear/DequantizeLinear: int8 zero point 0, positive finite constant scales,
per-channel weights on the output-channel axis, and Q->DQ pairs that agree."""
from __future__ import annotations

import numpy as np
import onnx

from .graph import GraphIndex, get_attr
from .findings import ERROR, WARNING, QdqReport

_INT8 = onnx.TensorProto.INT8
_AXIS_PRESERVING = frozenset({"Identity", "Cast"})


def _type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type) if elem_type else "unknown"


def output_channel_axis(op: onnx.NodeProto, weight_rank: int | None) -> int | None:
    """Axis of the weight input holding output channels: Conv 0, ConvTranspose 1, Gemm by transB, MatMul last."""
    if op.op_type == "Conv":
        return 0
    if op.op_type == "ConvTranspose":
        return 1
    if op.op_type == "Gemm":
        return 0 if get_attr(op, "transB", 0) else 1
    if op.op_type == "MatMul" and weight_rank:
        return weight_rank - 1
    return None


def _zero_point_type(g: GraphIndex, node: onnx.NodeProto) -> int:
    """Element type of the quantized side of a Q/DQ node (its zero point, or what ONNX defaults to without one)."""
    if len(node.input) > 2 and node.input[2]:
        return g.elem_type.get(node.input[2], 0)
    if node.op_type == "QuantizeLinear":
        return get_attr(node, "output_dtype", 0) or onnx.TensorProto.UINT8  # the ONNX default without a zero point
    producer = g.producer.get(node.input[0])
    if producer is not None and producer.op_type == "QuantizeLinear":
        return 0  # the type comes from that QuantizeLinear, which is checked (and reported) itself
    return g.elem_type.get(node.input[0], 0)


def check_params(g: GraphIndex, report: QdqReport) -> None:
    """Check zero points, scales and Q->DQ agreement of every Q/DQ node."""
    for node in g.nodes:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        name = g.name(node)
        scale_name = node.input[1] if len(node.input) > 1 else ""
        scale = g.const(scale_name)
        if scale is None:
            report.add("scale-not-constant", ERROR, name, scale_name,
                       "scale is not a constant (initializer/Constant); TensorRT needs build-time scales")
        else:
            s = np.asarray(scale, dtype=np.float64)
            if not np.all(np.isfinite(s)):
                report.add("scale-non-finite", ERROR, name, scale_name,
                           f"scale has {int(np.sum(~np.isfinite(s)))} NaN/inf value(s); recalibrate (amax is broken)")
            elif np.any(s <= 0):
                report.add("scale-non-positive", ERROR, name, scale_name,
                           f"scale has {int(np.sum(s <= 0))} value(s) <= 0 (min {s.min():.3g}); an amax of 0 "
                           f"(dead channel?) must be clamped to a small positive value")

        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp_type = _zero_point_type(g, node)
        if zp_type and zp_type != _INT8:
            why = "" if zp_name else " (no zero point given, so ONNX defaults to uint8)"
            report.add("zero-point-type", ERROR, name, zp_name,
                       f"quantized type is {_type_name(zp_type)}{why}; TensorRT needs symmetric int8")
        if zp_name:
            zp = g.const(zp_name)
            if zp is None:
                report.add("zero-point-not-constant", ERROR, name, zp_name, "zero point is not a constant")
            elif np.any(np.asarray(zp) != 0):
                example = np.asarray(zp).flat[np.flatnonzero(zp)[0]]
                report.add("zero-point-nonzero", ERROR, name, zp_name,
                           f"zero point has {int(np.count_nonzero(zp))} non-zero value(s) (e.g. {example}); "
                           f"TensorRT needs symmetric zero point 0")
        if node.op_type == "DequantizeLinear":
            _check_pair(g, report, node, scale)
    _check_weight_axes(g, report)
    _check_activation_per_channel(g, report)


def _check_pair(g: GraphIndex, report: QdqReport, dq: onnx.NodeProto, dq_scale: np.ndarray | None) -> None:
    q = g.producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return
    q_scale = g.const(q.input[1])
    mismatch = []
    if q_scale is not None and dq_scale is not None and (
            q_scale.shape != dq_scale.shape or not np.allclose(q_scale, dq_scale, rtol=1e-6, atol=0, equal_nan=True)):
        mismatch.append("scale")
    per_channel = q_scale is not None and q_scale.size > 1
    if per_channel and get_attr(q, "axis", 1) != get_attr(dq, "axis", 1):
        mismatch.append("axis")
    if mismatch:
        report.add("qdq-pair-mismatch", ERROR, g.name(dq), dq.input[0],
                   f"{' and '.join(mismatch)} differ from its QuantizeLinear {g.name(q)}")


def _check_weight_axes(g: GraphIndex, report: QdqReport) -> None:
    for op in g.nodes:
        if op.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(op.input) < 2:
            continue
        dq, passed = g.trace_back(op.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or any(p not in _AXIS_PRESERVING for p in passed):
            continue  # missing DQ is another rule's finding; reshaped weights make the axis ambiguous
        scale = g.const(dq.input[1])
        if scale is None or scale.size <= 1:
            continue
        wshape = _weight_shape(g, dq)
        rank = len(wshape) if wshape is not None else None
        if op.op_type == "MatMul" and not g.from_constant(dq.input[0]):
            continue  # activation x activation MatMul: handled by the activation rule
        expected = output_channel_axis(op, rank)
        axis = get_attr(dq, "axis", 1)
        if rank is not None and axis < 0:
            axis += rank
        name = g.name(dq)
        if expected is not None and axis != expected:
            report.add("per-channel-axis", ERROR, name, dq.input[0],
                       f"per-channel weight of {op.op_type} {g.name(op)} quantized on axis {axis}; output channels "
                       f"are on axis {expected}")
        elif expected is not None and wshape is not None and wshape[expected] not in (None, scale.size):
            report.add("per-channel-size", ERROR, name, dq.input[1],
                       f"{scale.size} scales for {wshape[expected]} output channels of {g.name(op)}")


def _weight_shape(g: GraphIndex, dq: onnx.NodeProto) -> tuple[int | None, ...] | None:
    q = g.producer.get(dq.input[0])
    candidates = [dq.input[0], dq.output[0]] + ([q.input[0]] if q is not None and q.op_type == "QuantizeLinear" else [])
    for tensor in candidates:
        shape = g.shape(tensor)
        if shape is not None:
            return shape
    return None


def _check_activation_per_channel(g: GraphIndex, report: QdqReport) -> None:
    for node in g.nodes:
        if node.op_type != "DequantizeLinear" or g.from_constant(node.input[0]):
            continue
        scale = g.const(node.input[1])
        if scale is not None and scale.size > 1:
            report.add("per-channel-activation", WARNING, g.name(node), node.input[0],
                       f"activation quantized per channel ({scale.size} scales); TensorRT supports per-tensor "
                       f"activation scales only")
