"""TensorRT placement analysis on a traced graph: which tensors must share one scale, which need a new quantization
point, which quantizers must be off. Pure graph work; `apply.py` changes the model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from . import ops
from .trace import Graph, Node
from ..errors import UsageError

_FUSE_DEPTH = 8


class _UnionFind:
    def __init__(self) -> None:
        self.parent: Dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the earliest value is the root


RESIDUAL_MODES = ("float", "int8")


@dataclass
class Residual:
    """A residual Add: the input fused into its conv (None when neither can fuse) and the inputs to quantize."""

    node: Node
    fused: Optional[int]
    quantize: List[int]
    conv: Optional[int] = None  # the weighted op the fused input comes from


@dataclass
class Plan:
    """What the rules want: tensor classes that share one scale, quantization points to add, quantizers to switch
    off. Values and nodes refer to the traced graph."""

    graph: Graph
    uf: _UnionFind
    tail: Set[int]  # indices of nodes after the last quantized weighted op (head decoding)
    members: Dict[int, List[Node]] = field(default_factory=dict)  # class -> enabled activation quantizer calls
    insert: Dict[int, List[int]] = field(default_factory=dict)  # class -> values to quantize (not yet quantized)
    ops: Dict[int, List[Node]] = field(default_factory=dict)  # class -> concat / scale-preserving op nodes
    residual_values: Set[int] = field(default_factory=set)  # values quantized as residual shortcuts
    optional: Set[int] = field(default_factory=set)  # inserted only so several consumers share one Q/DQ
    consumer: Dict[int, int] = field(default_factory=dict)  # value to insert -> the node that needs it quantized
    residuals: List[Residual] = field(default_factory=list)
    disable: List[Tuple[Node, str]] = field(default_factory=list)

    def cls(self, value: int) -> int:
        """The class (root value) of a value."""
        return self.uf.find(value)


def _is_activation_quant(node: Node, weight_ids: Set[int]) -> bool:
    return node.kind == "quant" and id(node.quantizer) not in weight_ids


def _tail(g: Graph, compute: Set[int]) -> Set[int]:
    """Nodes from which no quantized weighted op can be reached."""
    reaches: Dict[int, bool] = {}
    for node in reversed(g.nodes):
        reaches[node.index] = node.index in compute or any(
            reaches.get(c, False) for v in node.outputs for c in g.values[v].consumers)
    return {i for i, r in reaches.items() if not r}


def _fused_chain(g: Graph, value: int, add: Node) -> Optional[Set[int]]:
    """Nodes from a weighted op to `value` through fusable pointwise ops (and quantizer calls), when every tensor
    on the way feeds only that chain or the add; None when `value` cannot be fused into a conv."""
    chain: Set[int] = set()
    frontier = [value]
    found = False
    for _ in range(_FUSE_DEPTH):
        nxt = []
        for v in frontier:
            node = g.producer(v)
            if node is None or node.index in chain:
                continue
            if node.kind == "op" and node.target in ops.WEIGHTED:
                chain.add(node.index)
                found = True
            elif node.kind == "quant" or node.target in ops.FUSABLE_POINTWISE:
                chain.add(node.index)
                nxt.extend(i for i in node.inputs if g.values[i].producer is not None)
        frontier = nxt
    if not found:
        return None
    for index in chain:
        for v in g.nodes[index].outputs:
            if any(c not in chain and c != add.index for c in g.values[v].consumers):
                return None
    return chain


def _comes_from_weighted(g: Graph, value: int) -> bool:
    """Loose test (as the ONNX checker does): a weighted op within a few pointwise ops upstream."""
    frontier = [value]
    for _ in range(_FUSE_DEPTH):
        nxt = []
        for v in frontier:
            node = g.producer(v)
            if node is None:
                continue
            if node.kind == "op" and node.target in ops.WEIGHTED:
                return True
            if node.kind == "quant" or node.target in ops.FUSABLE_POINTWISE:
                nxt.extend(i for i in node.inputs if g.values[i].producer is not None)
        frontier = nxt
    return False


def _residuals(g: Graph, tail: Set[int]) -> List[Residual]:
    found = []
    for node in g.nodes:
        if node.kind != "op" or node.target not in ops.ADD or node.index in tail or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        va, vb = g.values[a], g.values[b]
        if va.producer is None or vb.producer is None or va.shape != vb.shape or a == b:
            continue  # bias-like or broadcasting add, not a residual
        chains = {v: _fused_chain(g, v, node) for v in (a, b)}
        fusable = [v for v in (a, b) if chains[v] is not None]
        if fusable:
            # TensorRT fuses the add into the conv that runs last; the other input is read as int8
            fused = max(fusable, key=lambda v: max(chains[v]))
            conv = max(i for i in chains[fused] if g.nodes[i].target in ops.WEIGHTED)
            found.append(Residual(node, fused, [v for v in (a, b) if v != fused], conv))
        elif _comes_from_weighted(g, a) or _comes_from_weighted(g, b):
            found.append(Residual(node, None, [a, b]))
    return found


def analyze(g: Graph, weight_ids: Set[int], residual: str = "float") -> Plan:
    """Apply the TensorRT placement rules to a traced graph (see `apply_tensorrt_rules`); `residual` is "float"
    (residual Adds read their shortcut in float) or "int8" (the shortcut comes from a Q/DQ, as Conv+Add fusion
    needs)."""
    if residual not in RESIDUAL_MODES:
        raise UsageError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
    act_quant = [n for n in g.nodes if _is_activation_quant(n, weight_ids)]
    enabled_out = {n.outputs[0]: n for n in act_quant if n.enabled}
    compute = {n.index for n in g.nodes if n.kind == "op" and n.target in ops.WEIGHTED and n.inputs
               and n.inputs[0] in enabled_out}
    tail = _tail(g, compute)
    plan = Plan(g, _UnionFind(), tail)

    residuals = _residuals(g, tail)
    plan.residuals = residuals
    for r in residuals:
        if r.fused is not None:
            node = g.producer(r.fused)
            if node is not None and node.kind == "quant" and node.enabled:
                plan.disable.append((node, f"residual add at {r.node.module or '<model>'}: this input is fused into "
                                           "its conv by TensorRT, so it stays unquantized"))
    float_shortcuts = {v for r in residuals for v in r.quantize} if residual == "float" else set()
    for n in act_quant:
        if n.enabled and n.index in tail:
            plan.disable.append((n, "after the last quantized weighted op (detection-head decoding / output tail)"))
    off = {n.index for n, _ in plan.disable}
    live = [n for n in act_quant if n.enabled and n.index not in off]

    # tensors that must share one scale
    uf = plan.uf
    for n in g.nodes:
        if n.index in tail or n.kind != "op":
            continue
        if n.target in ops.CONCAT:
            for v in [*n.inputs, *n.outputs]:
                uf.union(n.inputs[0], v)
        elif n.target in ops.SCALE_PRESERVING and n.inputs and g.values[n.inputs[0]].origin != "parameter":
            for v in n.outputs:
                uf.union(n.inputs[0], v)
    by_quantizer: Dict[int, int] = {}
    for n in live:
        uf.union(n.inputs[0], n.outputs[0])
        first = by_quantizer.setdefault(id(n.quantizer), n.inputs[0])
        uf.union(first, n.inputs[0])  # one quantizer object used on several tensors ties them

    # tensors that must be quantized: concat inputs and residual shortcuts
    wanted: Set[int] = set()
    for n in g.nodes:
        if n.kind == "op" and n.target in ops.CONCAT and n.index not in tail:
            wanted.update(n.inputs)
            for v in n.inputs:
                plan.consumer.setdefault(v, n.index)
    for r in residuals if residual == "int8" else ():
        wanted.update(r.quantize)
        for v in r.quantize:
            plan.consumer[v] = r.node.index
        plan.residual_values.update(r.quantize)
    # a tensor read by several quantizers: quantize it once where it is produced (one Q/DQ for all readers)
    readers: Dict[int, int] = {}
    for n in live:
        readers[n.inputs[0]] = readers.get(n.inputs[0], 0) + 1
    for v, count in readers.items():
        # a float shortcut is quantized at each quantizer reading it instead, so the Add still reads it in float
        if count > 1 and v not in wanted and v not in float_shortcuts and g.values[v].producer is not None and all(
                c not in tail for c in g.values[v].consumers):
            wanted.add(v)
            plan.optional.add(v)
    live_out = {n.outputs[0] for n in live}
    quantized: Dict[int, bool] = {}

    def is_quantized(v: int) -> bool:
        if v not in quantized:
            node = g.producer(v)
            if v in live_out:
                quantized[v] = True
            elif node is None or node.index in tail or node.kind != "op":
                quantized[v] = False
            elif node.target in ops.SCALE_PRESERVING:
                quantized[v] = is_quantized(node.inputs[0])
            elif node.target in ops.CONCAT:
                quantized[v] = all(is_quantized(i) for i in node.inputs)
            else:
                quantized[v] = False
        return quantized[v]

    for v in sorted(wanted):  # production order: an upstream insertion covers what is derived from it
        # a residual shortcut must come straight from a Q/DQ (TensorRT's Conv+Add fusion reads it as int8);
        # concat inputs may also be derived from a quantized tensor by slicing/pooling
        done = v in live_out if v in plan.residual_values else is_quantized(v)
        if not done:
            plan.insert.setdefault(uf.find(v), []).append(v)
            quantized[v] = True
            for later in [k for k in quantized if k > v]:
                del quantized[later]  # re-derive downstream values with this insertion known

    for n in live:
        plan.members.setdefault(uf.find(n.inputs[0]), []).append(n)
    for n in g.nodes:
        if n.kind == "op" and n.index not in tail and (n.target in ops.CONCAT or n.target in ops.MAXPOOL
                                                       or n.target in ops.RESIZE):
            plan.ops.setdefault(uf.find(n.inputs[0]), []).append(n)
    return plan
