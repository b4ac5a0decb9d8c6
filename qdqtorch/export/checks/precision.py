"""Rule for FP16 deployments: float tensors (between Q/DQ pairs and in unquantized regions) should be float16."""
from __future__ import annotations

import onnx

from .graph import GraphIndex
from .findings import ERROR, WARNING, QdqReport

_FLOAT = onnx.TensorProto.FLOAT
# (op type, input index) slots that ONNX types as float32 whatever the model precision.
_FP32_SLOTS = frozenset({("QuantizeLinear", 1), ("DequantizeLinear", 1), ("Resize", 2), ("Upsample", 1)})
_FP16_QDQ_OPSET = 19  # QuantizeLinear input / DequantizeLinear output may be float16 from this opset on


def check_precision(g: GraphIndex, report: QdqReport) -> None:
    """Report float32 tensors of a model that was meant to be FP16."""
    boundary = 0
    tensors = list(dict.fromkeys([*g.graph_inputs, *(o for n in g.nodes for o in n.output if o),
                                  *(t for t in g.initializers if g.consumers.get(t))]))
    for tensor in tensors:
        if g.elem_type.get(tensor) != _FLOAT:
            continue
        uses = g.consumers.get(tensor, [])
        if uses and all((c.op_type, k) in _FP32_SLOTS for c, k in uses):
            continue
        if tensor in g.graph_inputs or tensor in g.graph_outputs:
            report.add("fp32-io", WARNING, "graph input" if tensor in g.graph_inputs else "graph output", tensor,
                       "model input/output is float32 though FP16 was requested")
            continue
        producer = g.producer.get(tensor)
        if g.opset < _FP16_QDQ_OPSET and (
                (producer is not None and producer.op_type == "DequantizeLinear")
                or (uses and all(c.op_type == "QuantizeLinear" and k == 0 for c, k in uses))):
            boundary += 1
            continue
        where = g.name(producer) if producer is not None else "initializer"
        report.add("fp32-tensor", ERROR, where, tensor,
                   "float32 tensor in a model meant to be FP16 (export with half weights/inputs, or convert)")
    if boundary:
        report.add("fp16-qdq-boundary", WARNING, "model", "",
                   f"opset {g.opset} < {_FP16_QDQ_OPSET}: {boundary} QuantizeLinear input(s)/DequantizeLinear "
                   f"output(s) are necessarily float32; use opset >= {_FP16_QDQ_OPSET} for float16 Q/DQ")
