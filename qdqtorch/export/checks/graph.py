"""Read-only index over an ONNX graph: producers, consumers, constant values and element types of tensors."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
from onnx import numpy_helper

from ...errors import UsageError

# Ops that move or re-view a tensor without changing its values; a weight or activation may reach its
# weighted op through them and still count as coming from a DequantizeLinear.
TRIVIAL_OPS = frozenset({"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Cast"})
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def load_onnx_graph(path_or_model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Load an ONNX model (or take one as given) and return it with a display name; clear errors for bad files."""
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, path_or_model.graph.name or "<in-memory model>"
    if not isinstance(path_or_model, (str, Path)):
        raise TypeError(f"check_qdq expects a path or an onnx.ModelProto, got {type(path_or_model).__name__}")
    path = Path(path_or_model)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError / OSError variants; all mean "not a readable model"
        raise UsageError(f"{path} is not a readable ONNX model: {exc}") from exc
    return model, str(path)


def get_attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """Value of a node attribute, or default when absent."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


class GraphIndex:
    """Producer/consumer maps, constants (initializers and Constant nodes) and element types of one graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        if model.functions:
            # Exporters may wrap modules in model-local functions; inline them so every op is visible.
            model = onnx.inliner.inline_local_functions(model)
        self.model = model
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.nodes = list(self.graph.node)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        self._names: dict[int, str] = {}
        for i, node in enumerate(self.nodes):
            self._names[id(node)] = node.name or f"{node.op_type}#{i}({node.output[0] if node.output else ''})"
            for out in node.output:
                if out:
                    self.producer[out] = node
            for k, inp in enumerate(node.input):
                if inp:
                    self.consumers[inp].append((node, k))
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.graph_inputs = {v.name for v in self.graph.input} - set(self.initializers)
        self.graph_outputs = {v.name for v in self.graph.output}
        self._const_cache: dict[str, np.ndarray | None] = {}
        self._shapes: dict[str, tuple[int | None, ...]] = {}
        self.elem_type = self._collect_elem_types(model)

    # -- naming -----------------------------------------------------------------------------------------------
    def name(self, node: onnx.NodeProto) -> str:
        """The node's name, or a stable 'OpType#index(output)' stand-in when the exporter left it empty."""
        return self._names[id(node)]

    # -- constants --------------------------------------------------------------------------------------------
    def const(self, tensor: str) -> np.ndarray | None:
        """Value of a tensor when it is a compile-time constant (initializer, Constant node, through Identity)."""
        if not tensor:
            return None
        if tensor not in self._const_cache:
            self._const_cache[tensor] = self._resolve_const(tensor)
        return self._const_cache[tensor]

    def _resolve_const(self, tensor: str) -> np.ndarray | None:
        if tensor in self.initializers:
            if tensor in self.graph_inputs:
                return None
            return numpy_helper.to_array(self.initializers[tensor])
        node = self.producer.get(tensor)
        if node is None:
            return None
        if node.op_type == "Constant":
            return _constant_node_value(node)
        if node.op_type == "Identity":
            return self.const(node.input[0])
        return None

    def is_const(self, tensor: str) -> bool:
        """True for initializers, Constant outputs and Identity of those."""
        return self.const(tensor) is not None

    # -- tracing ----------------------------------------------------------------------------------------------
    def trace_back(self, tensor: str, through: frozenset[str] = TRIVIAL_OPS) -> tuple[onnx.NodeProto | None, list[str]]:
        """Walk up from a tensor through `through` ops (first input only); return the first other producer
        (None at a graph input/initializer) and the op types passed on the way."""
        passed: list[str] = []
        seen: set[str] = set()
        while tensor and tensor not in seen:
            seen.add(tensor)
            node = self.producer.get(tensor)
            if node is None or node.op_type not in through:
                return node, passed
            passed.append(node.op_type)
            tensor = node.input[0] if node.input else ""
        return None, passed

    def dq_producer(self, tensor: str, through: frozenset[str] = TRIVIAL_OPS) -> onnx.NodeProto | None:
        """The DequantizeLinear feeding `tensor` (through trivial ops), or None."""
        node, _ = self.trace_back(tensor, through)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def from_constant(self, tensor: str) -> bool:
        """True when a tensor is a constant (a weight), possibly through trivial ops and Q/DQ nodes."""
        seen: set[str] = set()
        while tensor and tensor not in seen:
            seen.add(tensor)
            if self.is_const(tensor):
                return True
            node = self.producer.get(tensor)
            if node is None or (node.op_type not in TRIVIAL_OPS and node.op_type not in QDQ_OPS):
                return False
            tensor = node.input[0]
        return False

    def shape(self, tensor: str) -> tuple[int | None, ...] | None:
        """Static shape of a tensor when known (constant value or inferred value_info), dims None when symbolic."""
        value = self.const(tensor)
        if value is not None:
            return tuple(value.shape)
        return self._shapes.get(tensor)

    # -- types ------------------------------------------------------------------------------------------------
    def _collect_elem_types(self, model: onnx.ModelProto) -> dict[str, int]:
        """Element types of all typed tensors (after shape inference); also fills the static shapes."""
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # inference is best effort (custom ops, >2 GB models); fall back to stored value_info
            inferred = model
        types: dict[str, int] = {}
        g = inferred.graph
        for vi in [*g.input, *g.output, *g.value_info]:
            tt = vi.type.tensor_type
            if tt.elem_type:
                types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self._shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        for t in g.initializer:
            types[t.name] = t.data_type
        for node in g.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        types[node.output[0]] = a.t.data_type
                    elif a.name in ("value_float", "value_floats"):
                        types[node.output[0]] = onnx.TensorProto.FLOAT
        return types
