"""Where to put a new quantization point: a hook on the module that makes a tensor (its output) or on the module
that reads it (its input), found from the traced module calls."""
from __future__ import annotations

import functools
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

from torch import nn

from ..nn import TensorQuantizer
from . import ops
from .analysis import Plan
from .tied import input_attr, output_attr, quantize_input, quantize_output
from .trace import Graph, ModuleCall

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, TensorQuantizer)
Placement = Tuple[str, ModuleCall, Optional[int]]  # ("output" | "input", module call, tuple index / argument)


class Placer:
    """Finds module hooks that quantize a tensor: on the output of the module that makes it (all consumers see it),
    or on the input of the module that uses it."""

    def __init__(self, g: Graph, plan: Plan) -> None:
        self.g, self.plan = g, plan
        self.returned_by: Dict[int, List[Tuple[ModuleCall, Tuple[int, ...]]]] = defaultdict(list)
        self.passed_to: Dict[int, List[Tuple[ModuleCall, Tuple[int, ...]]]] = defaultdict(list)
        self.calls_of: Dict[int, List[ModuleCall]] = defaultdict(list)
        for call in g.calls:  # calls end innermost first
            self.calls_of[call.module_id].append(call)
            for pos, vid in call.outputs:
                self.returned_by[vid].append((call, pos))
            for pos, vid in call.args:
                self.passed_to[vid].append((call, pos))

    def _same_class_every_call(self, call: ModuleCall, pos: Tuple[int, ...], value: int, outputs: bool) -> bool:
        """A hook fires on every call of the module: each call's tensor at `pos` must be in the value's class."""
        cls = self.plan.cls(value)
        for other in self.calls_of[call.module_id]:
            found = [vid for p, vid in (other.outputs if outputs else other.args) if p == pos]
            if not other.simple or not found or self.plan.cls(found[0]) != cls:
                return False
        return True

    def _output_ok(self, call: ModuleCall, pos: Tuple[int, ...], value: int) -> bool:
        module = self.g.modules[call.module_id]
        producer = self.g.values[value].producer
        if isinstance(module, _CONTAINERS) or not call.simple or producer is None:
            return False
        if not call.start <= producer < call.end:  # returned an outside tensor (Identity, in-place helpers)
            return False
        if any(c < call.end for c in self.g.values[value].consumers):  # used inside the module before returning
            return False
        return self._same_class_every_call(call, pos, value, outputs=True)

    def at_output(self, value: int) -> Optional[List[Placement]]:
        """Hook the innermost module that makes `value` and returns it."""
        for call, pos in self.returned_by.get(value, []):
            if self._output_ok(call, pos, value):
                return [("output", call, pos[0] if pos else None)]
        return None

    def at_input(self, value: int, consumer: Optional[int]) -> Optional[List[Placement]]:
        """Hook the innermost module that receives `value` as a positional argument and runs `consumer`."""
        if consumer is None:
            return None
        candidates = [(call, pos) for call, pos in self.passed_to.get(value, [])
                      if call.start <= consumer < call.end and len(pos) == 1]
        for call, pos in sorted(candidates, key=lambda cp: -cp[0].start):
            module = self.g.modules[call.module_id]
            if isinstance(module, _CONTAINERS):
                continue
            # every call must pass a tensor of this class there; arguments are recorded only as top-level items
            if all(any(p == pos and self.plan.cls(v) == self.plan.cls(value) for p, v in other.args)
                   for other in self.calls_of[call.module_id]):
                return [("input", call, pos[0])]
        return None

    def upstream(self, value: int, depth: int = 0) -> Optional[List[Placement]]:
        """Quantize what `value` is sliced/pooled/concatenated from (then `value` is on the same grid)."""
        found = self.at_output(value)
        if found is not None:
            return found
        node = self.g.producer(value)
        if node is None or node.kind != "op" or depth > 32:
            return None
        if node.target in ops.SCALE_PRESERVING:
            return self.upstream(node.inputs[0], depth + 1)
        if node.target in ops.CONCAT:
            found = []
            for v in node.inputs:
                sub = self.upstream(v, depth + 1)
                if sub is None:
                    return None
                found += sub
            return found
        return None

    def place(self, value: int, consumer: Optional[int], exact: bool) -> Optional[List[Placement]]:
        """Where to quantize `value`; `exact` (residual shortcuts) prefers the consuming module's input over an
        upstream tensor, so that the consumer reads a DequantizeLinear output directly."""
        order = (self.at_output, lambda v: self.at_input(v, consumer), self.upstream) if exact else (
            self.at_output, self.upstream, lambda v: self.at_input(v, consumer))
        for attempt in order:
            found = attempt(value)
            if found is not None:
                return found
        return None


def add_hook(host: nn.Module, kind: str, index: Optional[int], shared: TensorQuantizer,
          hooked: Dict[Tuple[int, str, Optional[int]], TensorQuantizer]) -> Optional[bool]:
    """Store `shared` on `host` and register the hook applying it; True when added, False when this group already
    hooked it, None when another quantizer is there."""
    key = (id(host), kind, index)
    if key in hooked:
        return False if hooked[key] is shared else None
    attr = output_attr(index) if kind == "output" else input_attr(index)
    existing = host._modules.get(attr)
    if existing is not None and existing is not shared:
        return None
    setattr(host, attr, shared)
    if existing is None:
        if kind == "output":
            host.register_forward_hook(functools.partial(quantize_output, index=index))
        else:
            host.register_forward_pre_hook(functools.partial(quantize_input, index=index))
    hooked[key] = shared
    return True
