"""FP16 float regions: rewrite an exported Q/DQ ONNX graph so every tensor outside the int8 Q/DQ pairs is float16.

TensorRT 10+ strongly typed networks run each op in the type the graph gives it: an untyped (float32) region between
Q/DQ pairs runs in FP32, slower than the FP16 an implicit-precision build would pick. This pass types those regions
float16. QuantizeLinear/DequantizeLinear take float16 data and scales from opset 19 on (export at opset 19 for a
graph with no float32 left in the data path); below that their data side must be float32, so casts are put around
them. Slots the ONNX schema types float32 (Resize scales) keep float32; ops without float16 support run in float32
between casts; shape subgraphs (Shape -> ... -> Range: YOLO grids, resize sizes) are left alone, TensorRT computes
them while building. ONNX Runtime still runs the result (on CPU it inserts casts where it has no FP16 kernel; with
float16 Q/DQ at opset >= 19 use its basic graph optimizations, its int8 fusions reject them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..atomic import atomic_output
from ..errors import UsageError

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_QDQ_OPSET = 19
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_SHAPE_OPS = ("Shape", "Size")
_FP16_MAX = 65504.0


class Fp16ConversionError(UsageError):
    """The graph holds something this pass cannot type as float16; the message names the node."""


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _pinned_fp32(op: str, slot: int, opset: int) -> bool:
    """Q/DQ input slots that keep float32 below opset 19 (other ops: their schema says, see _schema_types)."""
    if op in _QDQ and opset < FP16_QDQ_OPSET:
        return slot in (0, 1) if op == "QuantizeLinear" else slot == 1
    return False


def _to_fp16_array(array: np.ndarray, where: str) -> np.ndarray:
    finite = array[np.isfinite(array)]
    if finite.size and np.abs(finite).max() > _FP16_MAX:
        raise Fp16ConversionError(f"{where}: constant holds values up to {np.abs(finite).max():.4g}, beyond float16's "
                                  f"{_FP16_MAX:g}; keep this model's float regions in float32")
    return array.astype(np.float16)


class _Converter:
    def __init__(self, model: onnx.ModelProto, fp16_io: bool) -> None:
        self.model, self.g, self.opset, self.fp16_io = model, model.graph, _opset(model), fp16_io
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        self.types: Dict[str, int] = {}
        for vi in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
            if vi.type.tensor_type.elem_type:
                self.types[vi.name] = vi.type.tensor_type.elem_type
        self.inits = {t.name: t for t in self.g.initializer}
        for t in self.g.initializer:
            self.types[t.name] = t.data_type
        self.const_nodes = {n.output[0]: n for n in self.g.node if n.op_type == "Constant"}
        for name, n in self.const_nodes.items():
            value = next((a for a in n.attribute if a.name == "value"), None)
            if value is not None:
                self.types[name] = value.t.data_type
            elif any(a.name in ("value_float", "value_floats") for a in n.attribute):
                self.types[name] = FLOAT
        self.actual: Dict[str, int] = {}  # tensor -> element type after conversion
        self.data: set = set()  # tensors computed from graph inputs or constants (converted)
        self.shape_derived: set = set()  # tensors computed from shapes only (kept as they are)
        self.casts: Dict[Tuple[str, int], str] = {}
        self.new_nodes: List[onnx.NodeProto] = []
        self.new_inits: List[TensorProto] = []
        self.const_copies: Dict[Tuple[str, int], str] = {}

    # -- constants -----------------------------------------------------------------------------------------
    def _constant_as(self, name: str, to: int) -> Optional[str]:
        """A float constant (initializer or Constant node) in the wanted type, as a new initializer if needed."""
        if name in self.inits:
            array = numpy_helper.to_array(self.inits[name])
        elif name in self.const_nodes:
            node = self.const_nodes[name]
            attr = node.attribute[0]
            array = numpy_helper.to_array(attr.t) if attr.name == "value" else np.asarray(
                helper.get_attribute_value(attr), dtype=np.float32)
        else:
            return None
        key = (name, to)
        if key not in self.const_copies:
            new = f"{name}__fp16" if to == FLOAT16 else f"{name}__fp32"
            data = _to_fp16_array(array, f"constant {name}") if to == FLOAT16 else array.astype(np.float32)
            self.new_inits.append(numpy_helper.from_array(data, new))
            self.const_copies[key] = new
        return self.const_copies[key]

    def _cast(self, name: str, to: int) -> str:
        key = (name, to)
        if key not in self.casts:
            out = f"{name}__to_{'fp16' if to == FLOAT16 else 'fp32'}"
            self.new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}_Cast"))
            self.casts[key] = out
        return self.casts[key]

    def _input_as(self, name: str, want: int) -> str:
        """`name` in type `want` (a float constant copy or a Cast), or unchanged when it already is."""
        have = self.actual.get(name, self.types.get(name))
        if have not in (FLOAT, FLOAT16) or have == want:
            return name
        if name in self.inits or name in self.const_nodes:
            return self._constant_as(name, want) or name
        return self._cast(name, want)

    # -- nodes ---------------------------------------------------------------------------------------------
    def _convert_attrs(self, node: onnx.NodeProto) -> None:
        for attr in node.attribute:
            if attr.name == "to" and node.op_type == "Cast" and attr.i == FLOAT:
                attr.i = FLOAT16
            elif attr.name == "dtype" and attr.i == FLOAT:
                attr.i = FLOAT16
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT and node.op_type != "Constant":
                array = numpy_helper.to_array(attr.t)
                attr.t.CopyFrom(numpy_helper.from_array(_to_fp16_array(array, f"node {node.name}"), attr.t.name))

    def _schema_types(self, node: onnx.NodeProto) -> Tuple[bool, set]:
        """(whether the op takes float16 for its float type variables, input slots typed float32 by the schema)."""
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain or "")
        except onnx.defs.SchemaError:
            return False, set()
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        fixed32, ok = set(), True
        for is_input, formals, names in ((True, schema.inputs, node.input), (False, schema.outputs, node.output)):
            for slot, name in enumerate(names):
                if not name or self.types.get(name) != FLOAT or not formals:
                    continue
                type_str = formals[min(slot, len(formals) - 1)].type_str
                if type_str not in allowed:  # a concrete type such as Resize's scales: tensor(float)
                    if is_input:
                        fixed32.add(slot)
                elif "tensor(float16)" not in allowed[type_str]:
                    ok = False
        return ok, fixed32

    def run(self) -> onnx.ModelProto:
        for vi in self.g.input:
            if vi.name in self.inits:
                continue
            self.data.add(vi.name)
            if vi.type.tensor_type.elem_type == FLOAT:
                if self.fp16_io:
                    vi.type.tensor_type.elem_type = FLOAT16
                    self.actual[vi.name] = FLOAT16
                else:
                    self.actual[vi.name] = FLOAT
        for node in self.g.node:
            self.new_nodes.append(node)
            # shape subgraphs (Shape -> Gather -> Cast -> Range: YOLO grids, resize sizes) are computed once by
            # TensorRT while building: they keep float32 and are cast where data reads them
            if node.op_type == "Constant":
                continue  # float ones are read through float16 copies (_input_as); unused ones are dropped
            if node.op_type in _SHAPE_OPS:
                self.shape_derived.update(o for o in node.output if o)
                continue
            if not any(i in self.data for i in node.input) and any(i in self.shape_derived for i in node.input):
                self.shape_derived.update(o for o in node.output if o)
                continue
            self.data.update(o for o in node.output if o)
            qdq = node.op_type in _QDQ
            fp16, fixed32 = (True, set()) if qdq else self._schema_types(node)
            for slot, name in enumerate(node.input):
                if not name or self.types.get(name) not in (FLOAT, FLOAT16):
                    continue
                pinned = _pinned_fp32(node.op_type, slot, self.opset) or not fp16 or slot in fixed32
                node.input[slot] = self._input_as(name, FLOAT if pinned else FLOAT16)
            if not qdq and fp16:
                self._convert_attrs(node)
            for out in node.output:
                if self.types.get(out) == FLOAT:
                    keep32 = not fp16 or (node.op_type == "DequantizeLinear" and self.opset < FP16_QDQ_OPSET)
                    self.actual[out] = FLOAT if keep32 else FLOAT16
        for vi in self.g.output:
            have = self.actual.get(vi.name, self.types.get(vi.name))
            want = FLOAT16 if self.fp16_io else FLOAT
            if have in (FLOAT, FLOAT16) and have != want:
                inner = vi.name + "__pre_cast"
                for n in self.new_nodes:
                    n.input[:] = [inner if x == vi.name else x for x in n.input]
                    n.output[:] = [inner if x == vi.name else x for x in n.output]
                self.new_nodes.append(helper.make_node("Cast", [inner], [vi.name], to=want, name=f"{vi.name}_Cast"))
            if have in (FLOAT, FLOAT16):
                vi.type.tensor_type.elem_type = want if have != want else have
        return self._finish()

    def _finish(self) -> onnx.ModelProto:
        used = {i for n in self.new_nodes for i in n.input} | {o.name for o in self.g.output}
        nodes = [n for n in self.new_nodes if n.op_type != "Constant" or n.output[0] in used]
        inits = [t for t in [*self.g.initializer, *self.new_inits] if t.name in used]
        order = _topological(nodes, {i.name for i in self.g.input} | {t.name for t in inits})
        del self.g.node[:]
        self.g.node.extend(order)
        del self.g.initializer[:]
        self.g.initializer.extend(inits)
        del self.g.value_info[:]
        return self.model


def _topological(nodes: List[onnx.NodeProto], available: set) -> List[onnx.NodeProto]:
    """Nodes in an order where every input is produced first (inserted casts were appended at the end)."""
    produced_by = {o: i for i, n in enumerate(nodes) for o in n.output}
    done, order, visiting = set(), [], set()

    def visit(i: int) -> None:
        if i in done:
            return
        stack = [(i, False)]
        while stack:
            k, expanded = stack.pop()
            if k in done:
                continue
            if expanded:
                done.add(k)
                order.append(nodes[k])
                continue
            visiting.add(k)
            stack.append((k, True))
            for inp in nodes[k].input:
                j = produced_by.get(inp)
                if j is not None and j not in done and inp not in available:
                    stack.append((j, False))

    for i in range(len(nodes)):
        visit(i)
    return order


def float_regions_to_fp16(model: Union[str, Path, onnx.ModelProto], out_path: Union[str, Path, None] = None, *,
                          fp16_io: bool = True) -> onnx.ModelProto:
    """Type every float tensor outside the Q/DQ pairs of an exported Q/DQ model as float16 (see module docstring).

    `fp16_io`: the graph inputs/outputs become float16 too (feed half images); False keeps them float32 with casts
    inside. Returns the converted model and writes it to `out_path` when given (checked with onnx.checker).
    """
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"float_regions_to_fp16: ONNX file not found: {path}")
        model = onnx.load(str(path))
    else:
        model = onnx.ModelProto.FromString(model.SerializeToString())
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    converted = _Converter(model, fp16_io).run()
    try:
        converted = onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    except Exception as exc:
        raise Fp16ConversionError(f"float_regions_to_fp16: the converted graph does not type-check: {exc}") from exc
    onnx.checker.check_model(converted)
    if out_path is not None:
        with atomic_output(out_path) as tmp:
            onnx.save(converted, str(tmp))
    return converted
