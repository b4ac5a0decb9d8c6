"""Prefix reuse: when one unit changes, every module that finishes before its first quantizer runs produces exactly
the output of a reference pass, so that output is replayed from a cache instead of recomputed.

The cached modules are the blocks (children of one container: YOLOv5's `model.model`, a Sequential's layers) and,
one level at a time, their submodules, so a job that changes the last conv of a C3 block still replays the
block's first branches. A reference pass (all quantized for disable-one, float for enable-one) records, in its first
forward, the order in which modules finish and quantizers first run, and each module's time; a submodule is kept
only if some quantizer first runs after it finishes but before its parent does (otherwise the parent is replayed
whenever it is, and it never is otherwise). Every kept module's output is cloned per batch. While evaluating a job,
each module that finished before the first call of any quantizer the job changes returns its recorded output for
that batch. Causality makes this exact for models whose forward has no hidden state and calls each cached module
once; modules called more often are not cached, and the model's input is checked against the recorded one (shape
and checksum) so a metric that feeds different batches fails loudly instead of reusing the wrong activations.

Replayed tensors are shared, not copied, unless the reference pass saw later code modify that module's output in
place (those are replayed as clones); a modification seen after a job disables reuse rather than risk a wrong
result. If the cache would exceed `limit_bytes`, the outputs that save the least time per byte are dropped until
it fits (replaying fewer modules stays exact); if nothing fits, evaluation falls back to full forwards.
"""
from __future__ import annotations

import bisect
import contextlib
import os
import time
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from ..nn import TensorQuantizer
from ._nested import clone_nested
from ..errors import UsageError


def default_limit_bytes(device: torch.device) -> int:
    """Half of the free GPU memory, or a quarter of the available host memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.25)
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def _tensors(value: Any) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _nbytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(value))


def _versions(value: Any) -> Tuple[int, ...]:
    return tuple(t._version for t in _tensors(value))


def _new_containers(value: Any) -> Any:
    """Fresh lists/tuples/dicts around the same tensors, so a caller that edits the container edits only its own."""
    if isinstance(value, (list, tuple)):
        return type(value)(_new_containers(v) for v in value)
    if isinstance(value, dict):
        return {k: _new_containers(v) for k, v in value.items()}
    return value


def _signature(args: Tuple[Any, ...]) -> Optional[Tuple[Tuple[int, ...], float]]:
    first = args[0] if args else None
    if not isinstance(first, torch.Tensor):
        return None
    return tuple(first.shape), float(first.detach().reshape(-1)[::97].double().sum())


def container_of(model: nn.Module, block_names: Sequence[str]) -> Tuple[str, nn.Module]:
    """The module whose children are the blocks (their common parent)."""
    parents = {name.rsplit(".", 1)[0] if "." in name else "" for name in block_names}
    if len(parents) != 1:
        raise UsageError(f"blocks {list(block_names)[:3]}... have different parents {sorted(parents)[:3]}")
    parent = parents.pop()
    return parent, (model.get_submodule(parent) if parent else model)


class PrefixCache:
    """Records module outputs during a reference evaluation and replays them for later jobs."""

    def __init__(self, model: nn.Module, container: str, limit_bytes: Optional[int] = None,
                 nested: bool = True) -> None:
        self.model = model
        parent = model.get_submodule(container) if container else model
        prefix = f"{container}." if container else ""
        self.parent_of: Dict[str, Optional[str]] = {}  # cached candidate -> its candidate parent (None: a block)
        self.modules: Dict[str, nn.Module] = {}
        for name, block in parent.named_children():
            self._add(prefix + name, block, None, nested)
        self.quantizers = {n: q for n, q in model.named_modules() if isinstance(q, TensorQuantizer)}
        self.limit = limit_bytes
        self.reference: Optional[str] = None
        self.outputs: Dict[str, List[Any]] = {}
        self.versions: Dict[str, List[Tuple[int, ...]]] = {}
        self.copy_on_replay: Set[str] = set()  # outputs that later code modifies in place
        self.finish_order: Dict[str, int] = {}  # module -> event index at which it finished (first forward)
        self.first_call: Dict[str, int] = {}  # quantizer -> event index of its first call (first forward)
        self.inputs: List[Any] = []  # the model input's signature per forward
        self.bytes = 0
        self.stats = {"replayed_modules": 0, "recorded_batches": 0}

    def _add(self, name: str, module: nn.Module, parent: Optional[str], nested: bool) -> None:
        if isinstance(module, TensorQuantizer):
            return
        self.modules[name] = module
        self.parent_of[name] = parent
        if nested:
            for child_name, child in module.named_children():
                self._add(f"{name}.{child_name}", child, name, nested)

    @property
    def ready(self) -> bool:
        """True after a successful recording."""
        return self.reference is not None

    # ---- recording ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def recording(self, reference: str) -> Iterator[None]:
        """Record while the caller runs the reference evaluation inside this context."""
        self.clear()
        events, forwards = [0], [0]
        calls: Dict[str, int] = {}
        starts: Dict[str, float] = {}
        seconds: Dict[str, float] = {}
        tentative: Dict[str, Any] = {}  # first forward: outputs waiting for their parent's verdict
        originals: Dict[str, Tuple[Any, Tuple[int, ...]]] = {}  # first forward: to see later in-place edits
        children: Dict[str, List[str]] = {}
        for name, parent in self.parent_of.items():
            children.setdefault(parent, []).append(name)
        score: Dict[str, float] = {}
        dropped: Set[str] = set()
        device = next(iter(self.model.parameters()), torch.zeros(())).device
        limit = self.limit if self.limit is not None else default_limit_bytes(device)
        handles = []

        def quantizer_events_between(lo: int, hi: float) -> int:
            calls_sorted = sorted(self.first_call.values())
            return bisect.bisect_right(calls_sorted, hi) - bisect.bisect_right(calls_sorted, lo)

        def keep(name: str, parent_end: float) -> None:
            """Keep a first-forward output if some quantizer first runs after it and before its parent ends."""
            value = tentative.pop(name)
            n = quantizer_events_between(self.finish_order[name], parent_end)
            if n and calls.get(name) == 1:
                self.outputs[name] = [value]
                self.versions[name] = [_versions(value)]
                self.bytes += _nbytes(value)
                score[name] = seconds[name] * n / max(_nbytes(value), 1)

        def fit() -> None:
            while self.bytes > limit and self.outputs:  # drop what saves the least time per byte
                victim = min(self.outputs, key=lambda m: score[m])
                self.bytes -= sum(_nbytes(o) for o in self.outputs.pop(victim))
                self.versions.pop(victim)
                dropped.add(victim)

        def module_pre(name: str):
            def fn(module, args):
                if forwards[0] == 0:
                    calls[name] = calls.get(name, 0) + 1
                    starts[name] = time.perf_counter()
            return fn

        def module_post(name: str):
            def fn(module, args, output):
                if forwards[0] > 0:
                    if name in self.outputs:
                        value = clone_nested(output)
                        self.outputs[name].append(value)
                        self.versions[name].append(_versions(value))
                        self.bytes += _nbytes(value)
                        fit()
                    return
                events[0] += 1
                if name in self.finish_order:  # a second call in one forward: not cacheable
                    return
                self.finish_order[name] = events[0]
                seconds[name] = time.perf_counter() - starts[name]
                tentative[name] = clone_nested(output)
                originals[name] = (output, _versions(output))
                for child in children.get(name, []):
                    if child in tentative:
                        keep(child, events[0])
            return fn

        def quant_pre(name: str):
            def fn(module, args):
                if forwards[0] == 0:
                    events[0] += 1
                    self.first_call.setdefault(name, events[0])
            return fn

        def model_pre(module, args):
            self.inputs.append(_signature(args))

        def model_post(module, args, output):
            if forwards[0] == 0:
                for block in children.get(None, []):
                    if block in tentative:
                        keep(block, float("inf"))
                tentative.clear()
                self.copy_on_replay = {n for n, (out, v) in originals.items() if _versions(out) != v}
                originals.clear()
                fit()
            forwards[0] += 1

        handles.append(self.model.register_forward_pre_hook(model_pre))
        handles.append(self.model.register_forward_hook(model_post))
        for name, module in self.modules.items():
            handles.append(module.register_forward_pre_hook(module_pre(name)))
            handles.append(module.register_forward_hook(module_post(name)))
        for name, q in self.quantizers.items():
            handles.append(q.register_forward_pre_hook(quant_pre(name)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        for name in [n for n, v in self.outputs.items() if len(v) != forwards[0]]:  # not called once per forward
            self.bytes -= sum(_nbytes(o) for o in self.outputs.pop(name))
            self.versions.pop(name)
        if dropped:
            warnings.warn(f"prefix reuse: the module outputs exceed the cache limit of {limit / 2**30:.2f} GiB; "
                          f"caching {len(self.outputs)} of {len(self.outputs) + len(dropped)} (fewer or smaller "
                          "evaluation images, or more memory, make the sweep faster)", stacklevel=3)
        self.stats["cached_modules"] = len(self.outputs)
        if not self.outputs or forwards[0] == 0:
            self.clear()  # nothing fits or nothing ran: no reuse
        else:
            self.reference = reference
            self.stats["recorded_batches"] = forwards[0]

    def clear(self) -> None:
        """Forget the recording."""
        self.outputs, self.versions, self.finish_order, self.first_call = {}, {}, {}, {}
        self.inputs, self.copy_on_replay = [], set()
        self.reference, self.bytes = None, 0

    # ---- replay --------------------------------------------------------------------------------------------------
    def safe_modules(self, changed_quantizers: Set[str]) -> List[str]:
        """The outermost cached modules that finish before any of `changed_quantizers` first runs (so their
        outputs do not change)."""
        if not self.ready:
            return []
        calls = [self.first_call[q] for q in changed_quantizers if q in self.first_call]
        if len(calls) != len(changed_quantizers):
            return []  # a changed quantizer never ran in the reference pass: be conservative
        cut = min(calls, default=None)
        if cut is None:
            return []
        safe = {m for m, end in self.finish_order.items() if end < cut and m in self.outputs}

        def outermost(name: str) -> bool:
            parent = self.parent_of[name]
            while parent is not None:
                if parent in safe:
                    return False
                parent = self.parent_of[parent]
            return True

        return [m for m in self.finish_order if m in safe and outermost(m)]

    @contextlib.contextmanager
    def replaying(self, modules: Sequence[str]) -> Iterator[None]:
        """Inside this context the given modules return their recorded outputs, batch by batch."""
        if not modules:
            yield
            return
        counters = {m: 0 for m in modules}
        forwards = [0]
        patched = []

        def check_input(module, args):
            i = forwards[0]
            forwards[0] += 1
            if i >= len(self.inputs) or _signature(args) != self.inputs[i]:
                raise RuntimeError(f"prefix reuse: forward {i + 1} got a different input than in the reference pass "
                                   f"({len(self.inputs)} batches); the metric must evaluate the same batches every "
                                   "time (or disable prefix reuse)")

        def make(name: str):
            def forward(*args, **kwargs):
                i = counters[name]
                counters[name] = i + 1
                outs = self.outputs[name]
                if i >= len(outs):
                    raise RuntimeError(f"prefix reuse: module {name} was called {i + 1} times but the reference pass "
                                       f"recorded {len(outs)} batches; the metric must evaluate the same batches "
                                       "every time (or disable prefix reuse)")
                return clone_nested(outs[i]) if name in self.copy_on_replay else _new_containers(outs[i])
            return forward

        handle = self.model.register_forward_pre_hook(check_input)
        for name in modules:
            module = self.modules[name]
            module.forward = make(name)
            patched.append(module)
        self.stats["replayed_modules"] += len(modules)
        try:
            yield
        finally:
            handle.remove()
            for module in patched:
                del module.forward  # back to the class's forward
            self._check_unmodified(counters)

    def _check_unmodified(self, counters: Dict[str, int]) -> None:
        """Shared replayed tensors must come back untouched; if not, stop reusing (the finished job was exact)."""
        for name, used in counters.items():
            if name in self.copy_on_replay:
                continue
            for i in range(min(used, len(self.outputs[name]))):
                if _versions(self.outputs[name][i]) != self.versions[name][i]:
                    warnings.warn(f"prefix reuse: the output of {name} was modified in place by later code; prefix "
                                  "reuse is off for the rest of this sweep", stacklevel=4)
                    self.clear()
                    return
