"""Rules on what is quantized: every weighted op's inputs come from DequantizeLinear, and residual Adds
after Convs have a quantized input so TensorRT can fuse them into the Conv."""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Sequence

from .findings import ERROR, WARNING, QdqReport
from .graph import TRIVIAL_OPS, WEIGHTED_OPS, GraphIndex

# Pointwise ops between a Conv and a residual Add that TensorRT can fuse into the Conv (activation, BN, SiLU's Mul).
_POINTWISE = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu", "Softplus",
    "Mish", "Gelu", "Erf", "Mul", "Div", "BatchNormalization", "Identity", "Cast", "QuantizeLinear",
    "DequantizeLinear",
})
_CONV_SEARCH_DEPTH = 6


def check_coverage(g: GraphIndex, report: QdqReport, allow_float: Sequence[str] = ()) -> None:
    """Report weighted ops whose inputs lack a DequantizeLinear, and unquantized residual Adds."""
    quantized = 0
    weighted = 0
    for node in g.nodes:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        weighted += 1
        name = g.name(node)
        allowed = any(fnmatchcase(name, pat) for pat in allow_float)
        severity = WARNING if allowed else ERROR
        hint = " (allowed to stay float by allow_float)" if allowed else ""
        missing = False
        weight_role = "weight" if node.op_type != "MatMul" or g.from_constant(node.input[1]) else "activation"
        for idx, role in ((0, "activation"), (1, weight_role)):
            if g.dq_producer(node.input[idx]) is None:
                missing = True
                report.add(f"unquantized-{role}", severity, name, node.input[idx],
                           f"{node.op_type} {role} input {idx} has no DequantizeLinear producer, so this layer runs "
                           f"in float{hint}")
        quantized += not missing
    report.stats["weighted_ops"] = weighted
    report.stats["quantized_weighted_ops"] = quantized
    _check_residual_adds(g, report)


def _comes_from_conv(g: GraphIndex, tensor: str) -> bool:
    """True when `tensor` is a Conv output, possibly through a few pointwise ops (activation, BN, SiLU)."""
    frontier = [tensor]
    seen: set[str] = set()
    for _ in range(_CONV_SEARCH_DEPTH):
        nxt = []
        for t in frontier:
            if t in seen:
                continue
            seen.add(t)
            node = g.producer.get(t)
            if node is None:
                continue
            if node.op_type in ("Conv", "ConvTranspose"):
                return True
            if node.op_type in _POINTWISE:
                nxt.extend(i for i in node.input if i and not g.is_const(i))
        frontier = nxt
    return False


_THROUGH_SLICES = TRIVIAL_OPS | {"Split", "Slice"}


def _check_residual_adds(g: GraphIndex, report: QdqReport) -> None:
    for node in g.nodes:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        a, b = node.input
        if g.is_const(a) or g.is_const(b):
            continue  # bias-like add, not a residual
        if not (_comes_from_conv(g, a) or _comes_from_conv(g, b)):
            continue
        # a shortcut that is a Split/Slice of a tensor already quantized (C2f/C3k2 chunks feeding a Concat) is
        # quantized too: TensorRT moves the DequantizeLinear past the slice
        if g.dq_producer(a, _THROUGH_SLICES) is None and g.dq_producer(b, _THROUGH_SLICES) is None:
            report.add("residual-add-unquantized", WARNING, g.name(node), f"{a}, {b}",
                       "residual Add after a Conv has no quantized (DequantizeLinear) input: TensorRT runs it as a "
                       "separate higher-precision layer (rules='tensorrt' keeps shortcuts float on purpose, for "
                       "accuracy); quantize the shortcut input (rules='tensorrt-int8-residual') to fuse it into "
                       "the Conv")


def stats_qdq(g: GraphIndex, report: QdqReport) -> None:
    """Count Q/DQ nodes for the report header."""
    report.stats["quantize_linear"] = sum(n.op_type == "QuantizeLinear" for n in g.nodes)
    report.stats["dequantize_linear"] = sum(n.op_type == "DequantizeLinear" for n in g.nodes)

