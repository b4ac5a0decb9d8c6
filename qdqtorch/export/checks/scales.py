"""Rules on scale agreement: ops that keep values unchanged (Concat, MaxPool, Resize, ...) should see one scale
on all their inputs and outputs, and one tensor should not be quantized with several scales; otherwise TensorRT
keeps the op in float or inserts requantize/reformat layers."""
from __future__ import annotations

import numpy as np
import onnx

from .graph import GraphIndex
from .findings import WARNING, QdqReport

# Op type -> which inputs carry data (None = all inputs); the rest are shapes/indices/scales.
SCALE_PRESERVING: dict[str, tuple[int, ...] | None] = {
    "Concat": None, "MaxPool": (0,), "GlobalMaxPool": (0,), "Resize": (0,), "Upsample": (0,), "Slice": (0,),
    "Split": (0,), "Pad": (0,), "Transpose": (0,), "Reshape": (0,), "Flatten": (0,), "Squeeze": (0,),
    "Unsqueeze": (0,),
}
_RTOL = 1e-5


def _per_tensor_scale(g: GraphIndex, node: onnx.NodeProto) -> float | None:
    scale = g.const(node.input[1]) if len(node.input) > 1 else None
    if scale is None or scale.size != 1:
        return None
    value = float(np.asarray(scale).reshape(()))
    return value if np.isfinite(value) and value > 0 else None  # broken scales are the params rules' findings


def tensor_scales(g: GraphIndex, tensor: str) -> list[tuple[str, float]]:
    """(Q/DQ node name, per-tensor scale) for the DequantizeLinear producing `tensor` and each QuantizeLinear
    consuming it."""
    found = []
    producer = g.producer.get(tensor)
    if producer is not None and producer.op_type == "DequantizeLinear":
        s = _per_tensor_scale(g, producer)
        if s is not None:
            found.append((g.name(producer), s))
    for consumer, idx in g.consumers.get(tensor, []):
        if consumer.op_type == "QuantizeLinear" and idx == 0:
            s = _per_tensor_scale(g, consumer)
            if s is not None:
                found.append((g.name(consumer), s))
    return found


def _distinct(scales: list[float]) -> list[float]:
    out: list[float] = []
    for s in sorted(scales):
        if not out or not np.isclose(s, out[-1], rtol=_RTOL, atol=0):
            out.append(s)
    return out


def check_scales(g: GraphIndex, report: QdqReport) -> None:
    """Report scale-preserving ops with differing scales around them, and tensors quantized with several scales."""
    for node in g.nodes:
        if node.op_type not in SCALE_PRESERVING:
            continue
        idxs = SCALE_PRESERVING[node.op_type]
        inputs = [t for k, t in enumerate(node.input) if t and (idxs is None or k in idxs)]
        around = [(t, s) for t in [*inputs, *node.output] if t for _, s in tensor_scales(g, t)]
        if len(_distinct([s for _, s in around])) > 1:
            listing = ", ".join(f"{t}={s:.6g}" for t, s in around)
            report.add("scale-mismatch", WARNING, g.name(node), ", ".join(dict.fromkeys(t for t, _ in around)),
                       f"{node.op_type} sees different Q/DQ scales ({listing}); give its inputs and output one "
                       f"shared quantizer so TensorRT can run it in int8 without requantizing")
    for tensor, consumers in g.consumers.items():
        qs = [(g.name(c), s) for c, k in consumers if c.op_type == "QuantizeLinear" and k == 0
              for s in [_per_tensor_scale(g, c)] if s is not None]
        if len(_distinct([s for _, s in qs])) > 1:
            producer = g.producer.get(tensor)
            listing = ", ".join(f"{n}={s:.6g}" for n, s in qs)
            report.add("multi-scale-tensor", WARNING, g.name(producer) if producer is not None else tensor, tensor,
                       f"one tensor is quantized with several scales ({listing}); TensorRT has to quantize it "
                       f"once per scale")
