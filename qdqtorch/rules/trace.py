"""Dataflow trace of one forward pass: every torch op and quantizer call, the tensors between them, module calls.

Placement rules need the graph of an arbitrary model. torch.fx fails on YOLO models (their forward loops over
`self.model` with `m.f` indices) and a TorchScript/ONNX graph loses the link to module instances, so the model is
run once on an example input under a TorchFunctionMode that records each op, while forward hooks on every module
record which module called what and returned which tensor. Quantizers are recorded as single nodes (run disabled,
their output cloned so each call yields a distinct tensor) and their internals are not traced.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ..nn import TensorQuantizer


@dataclass
class Value:
    """One tensor version: produced by node `producer` (None: model input, parameter or other outside tensor)."""

    id: int
    producer: Optional[int]
    consumers: List[int] = field(default_factory=list)
    shape: Tuple[int, ...] = ()
    origin: str = ""  # for outside tensors: "input", "parameter" or "tensor"


@dataclass
class Node:
    """One op call ("op", target = torch function name) or one quantizer call ("quant")."""

    index: int
    kind: str
    target: str
    module: str  # dotted path of the innermost module running the call ("" = the model; a quantizer's caller)
    inputs: List[int]
    outputs: List[int]
    quantizer: Optional[TensorQuantizer] = None
    enabled: bool = False  # quantizer was enabled before tracing
    meta: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ModuleCall:
    """One call of a module: nodes [start, end) ran inside it; outputs are (position, value id), position () for a
    lone tensor or (k,) for item k of a tuple/list; `simple` is False for other output structures."""

    path: str
    module_id: int
    start: int
    end: int = -1
    args: List[Tuple[Tuple[int, ...], int]] = field(default_factory=list)
    outputs: List[Tuple[Tuple[int, ...], int]] = field(default_factory=list)
    simple: bool = True


@dataclass
class Graph:
    """The traced dataflow graph (nodes in execution order, hence topologically sorted)."""

    nodes: List[Node] = field(default_factory=list)
    values: Dict[int, Value] = field(default_factory=dict)
    calls: List[ModuleCall] = field(default_factory=list)
    modules: Dict[int, nn.Module] = field(default_factory=dict)  # id -> module
    paths: Dict[int, str] = field(default_factory=dict)  # id(module) -> first dotted path

    def producer(self, value: int) -> Optional[Node]:
        """The node producing a value, None for outside tensors."""
        p = self.values[value].producer
        return None if p is None else self.nodes[p]

    def consumers(self, value: int) -> List[Node]:
        """Nodes reading a value, in execution order."""
        return [self.nodes[i] for i in self.values[value].consumers]

    def calls_of(self, module_id: int) -> List[ModuleCall]:
        """Every call of one module instance."""
        return [c for c in self.calls if c.module_id == module_id]


def _structure(obj: Any) -> Tuple[List[Tuple[Tuple[int, ...], torch.Tensor]], bool]:
    """Tensors of a module output/argument list with their positions; False when nested deeper than one level."""
    if isinstance(obj, torch.Tensor):
        return [((), obj)], True
    if isinstance(obj, (tuple, list)):
        items, simple = [], True
        for k, item in enumerate(obj):
            if isinstance(item, torch.Tensor):
                items.append(((k,), item))
            elif isinstance(item, (tuple, list, dict)):
                simple = False
        return items, simple
    return [], not isinstance(obj, dict)


class _Recorder(TorchFunctionMode):
    """Records torch function calls into a Graph; module hooks feed it the module stack and quantizer calls."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.g = graph
        self._by_obj: Dict[int, Tuple[torch.Tensor, int]] = {}  # id(tensor) -> (tensor kept alive, value id)
        self._stack: List[Tuple[nn.Module, ModuleCall]] = []
        self.suspended = 0
        self.enabled: Dict[int, bool] = {}

    # ---- values --------------------------------------------------------------------------------------------
    def _new_value(self, t: torch.Tensor, producer: Optional[int], origin: str = "") -> int:
        vid = len(self.g.values)
        self.g.values[vid] = Value(vid, producer, shape=tuple(t.shape), origin=origin)
        self._by_obj[id(t)] = (t, vid)
        return vid

    def value_of(self, t: torch.Tensor) -> int:
        """The current value of a tensor object; outside tensors get a producer-less value on first sight."""
        entry = self._by_obj.get(id(t))
        if entry is not None and entry[0] is t:
            return entry[1]
        return self._new_value(t, None, "parameter" if isinstance(t, nn.Parameter) else "tensor")

    def add_input(self, t: torch.Tensor) -> None:
        """Register a model input."""
        self._new_value(t, None, "input")

    # ---- nodes ---------------------------------------------------------------------------------------------
    def _module_path(self) -> str:
        return self._stack[-1][1].path if self._stack else ""

    def add_node(self, kind: str, target: str, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor],
                 **extra: Any) -> Node:
        """Append a node reading `inputs` and producing new values for `outputs`."""
        index = len(self.g.nodes)
        in_ids = [self.value_of(t) for t in inputs]
        node = Node(index, kind, target, self._module_path(), in_ids, [], **extra)
        self.g.nodes.append(node)
        for vid in dict.fromkeys(in_ids):
            self.g.values[vid].consumers.append(index)
        node.outputs = [self._new_value(t, index) for t in outputs]
        return node

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.suspended:
            return func(*args, **kwargs)
        inputs = [x for x in tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        versions = [x._version for x in inputs]
        out = func(*args, **kwargs)
        outputs = [x for x in tree_leaves(out) if isinstance(x, torch.Tensor)]
        out_ids = {id(x) for x in outputs}
        # in-place ops (silu_, __setitem__, add_) change an input: its object now holds a new value
        mutated = [x for x, v in zip(inputs, versions) if x._version != v and id(x) not in out_ids]
        if outputs or mutated:
            meta = {}
            name = getattr(func, "__name__", str(func))
            if name == "interpolate":
                meta["mode"] = kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
            self.add_node("op", name, inputs, [*outputs, *dict((id(m), m) for m in mutated).values()], meta=meta)
        return out

    # ---- module hooks --------------------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if isinstance(module, TensorQuantizer):
            self._stack.append((module, ModuleCall(self.g.paths[id(module)], id(module), len(self.g.nodes))))
            self.suspended += 1
            return
        if self.suspended:
            return
        call = ModuleCall(self.g.paths.get(id(module), "?"), id(module), len(self.g.nodes))
        items, _ = _structure(list(args))
        call.args = [(pos, self.value_of(t)) for pos, t in items]
        self._stack.append((module, call))

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if isinstance(module, TensorQuantizer):
            self._stack.pop()
            self.suspended -= 1
            if self.suspended or not args or not isinstance(args[0], torch.Tensor):
                return None
            self.suspended += 1
            try:
                fresh = output.clone()  # a distinct tensor per quantizer call, even when the quantizer is identity
            finally:
                self.suspended -= 1
            self.add_node("quant", "quantizer", [args[0]], [fresh], quantizer=module,
                          enabled=self.enabled.get(id(module), False), meta={"path": self.g.paths[id(module)]})
            return fresh
        if self.suspended:
            return None
        _, call = self._stack.pop()
        call.end = len(self.g.nodes)
        items, call.simple = _structure(output)
        call.outputs = [(pos, self.value_of(t)) for pos, t in items]
        self.g.calls.append(call)
        return None


def trace_graph(model: nn.Module, example_input: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Graph:
    """Run `model` once on `example_input` (eval mode, no grad, quantizers as identity) and record its dataflow.

    The model's modes and quantizer states are restored afterwards, also on error.
    """
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("trace_graph: example_input must be a tensor or a sequence of tensors (the model's inputs), "
                        f"got {type(example_input).__name__}")
    graph = Graph()
    recorder = _Recorder(graph)
    handles = []
    saved_modes = {id(m): m.training for m in model.modules()}
    quantizers = [m for m in model.modules() if isinstance(m, TensorQuantizer)]
    saved_q = [(q, q.snapshot()) for q in quantizers]
    for name, module in model.named_modules():
        graph.modules[id(module)] = module
        graph.paths[id(module)] = name
        handles.append(module.register_forward_pre_hook(recorder.pre_hook, with_kwargs=True))
        handles.append(module.register_forward_hook(recorder.post_hook, with_kwargs=True))
    try:
        for q in quantizers:
            recorder.enabled[id(q)] = q.is_enabled
            q.disable()
        model.eval()
        for t in inputs:
            recorder.add_input(t)
        with torch.no_grad(), recorder:
            try:
                model(*inputs)
            except Exception as exc:
                shapes = [tuple(t.shape) for t in inputs]
                raise RuntimeError(f"tracing {type(model).__name__} for placement rules failed on an example input "
                                   f"of shape {shapes}: {type(exc).__name__}: {exc}. Pass an input the model "
                                   "accepts (e.g. torch.zeros(1, 3, 640, 640) for a detector).") from exc
    finally:
        for h in handles:
            h.remove()
        for q, snapshot in saved_q:
            q.restore(snapshot)
        for m in model.modules():
            m.training = saved_modes.get(id(m), m.training)
    return graph
