"""Prefix reuse: when one unit changes, the blocks that finish before its first quantizer runs produce exactly the
outputs of a reference pass, so their outputs are replayed from a cache instead of recomputed.

The blocks are the children of one container module (YOLOv5's `model.model`, a Sequential's layers), each called
once per forward. A reference pass (all quantized for disable-one, float for enable-one) records every block's
output per batch (cloned) and the order in which blocks finish and quantizers first run. While evaluating a job,
every block that finished before the first call of any quantizer the job changes returns a clone of its recorded
output for that batch. Causality makes this exact for models whose forward has no hidden state; the first replayed
block checks that it sees the recorded input (same shape and checksum), so a metric that feeds different batches
fails loudly instead of silently reusing the wrong activations. If the cache would exceed `limit_bytes`, the
blocks that finish last are dropped from it until it fits (replaying only the early blocks is still exact: later
blocks are recomputed from the replayed outputs); if nothing fits, evaluation falls back to full forwards.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from ..nn import TensorQuantizer
from ._nested import clone_nested


def default_limit_bytes(device: torch.device) -> int:
    """Half of the free GPU memory, or a quarter of the available host memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.25)
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


def _signature(args: Tuple[Any, ...]) -> Optional[Tuple[Tuple[int, ...], float]]:
    first = args[0] if args else None
    if not isinstance(first, torch.Tensor):
        return None
    return tuple(first.shape), float(first.detach().reshape(-1)[::97].double().sum())


def container_of(model: nn.Module, block_names: Sequence[str]) -> Tuple[str, nn.Module]:
    """The module whose children are the blocks (their common parent)."""
    parents = {name.rsplit(".", 1)[0] if "." in name else "" for name in block_names}
    if len(parents) != 1:
        raise ValueError(f"blocks {list(block_names)[:3]}... have different parents {sorted(parents)[:3]}")
    parent = parents.pop()
    return parent, (model.get_submodule(parent) if parent else model)


class PrefixCache:
    """Records block outputs during a reference evaluation and replays them for later jobs."""

    def __init__(self, model: nn.Module, container: str, limit_bytes: Optional[int] = None) -> None:
        self.model = model
        parent = model.get_submodule(container) if container else model
        prefix = f"{container}." if container else ""
        self.blocks: Dict[str, nn.Module] = {prefix + n: m for n, m in parent.named_children()}
        self.quantizers = {n: q for n, q in model.named_modules() if isinstance(q, TensorQuantizer)}
        self.limit = limit_bytes
        self.reference: Optional[str] = None
        self.outputs: Dict[str, List[Any]] = {}
        self.finish_order: Dict[str, int] = {}  # block -> event index at which it finished (first forward)
        self.first_call: Dict[str, int] = {}  # quantizer -> event index of its first call (first forward)
        self.signature: Optional[Tuple[str, List[Any]]] = None
        self.bytes = 0
        self.stats = {"replayed_blocks": 0, "recorded_batches": 0}

    @property
    def ready(self) -> bool:
        """True after a successful recording."""
        return self.reference is not None

    # ---- recording ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def recording(self, reference: str) -> Iterator[None]:
        """Record while the caller runs the reference evaluation inside this context."""
        self.clear()
        events = [0]
        calls: Dict[str, int] = {}
        dropped: Set[str] = set()
        inputs: Dict[str, List[Any]] = {}
        device = next(iter(self.model.parameters()), torch.zeros(())).device
        limit = self.limit if self.limit is not None else default_limit_bytes(device)
        handles = []

        def block_pre(name: str):
            def fn(module, args):
                calls[name] = calls.get(name, 0) + 1
                if not self.finish_order and not inputs:
                    inputs[name] = []
                if name in inputs:
                    inputs[name].append(_signature(args))
            return fn

        def block_post(name: str):
            def fn(module, args, output):
                events[0] += 1
                self.finish_order.setdefault(name, events[0])  # the first forward's order
                if name in dropped:
                    return
                self.bytes += _nbytes(output)
                self.outputs.setdefault(name, []).append(clone_nested(output))
                while self.bytes > limit and self.outputs:  # drop the block that finishes last
                    last = max(self.outputs, key=lambda b: self.finish_order[b])
                    self.bytes -= sum(_nbytes(o) for o in self.outputs.pop(last))
                    dropped.add(last)
            return fn

        def quant_pre(name: str):
            def fn(module, args):
                events[0] += 1
                self.first_call.setdefault(name, events[0])
            return fn

        for name, block in self.blocks.items():
            handles.append(block.register_forward_pre_hook(block_pre(name)))
            handles.append(block.register_forward_hook(block_post(name)))
        for name, q in self.quantizers.items():
            handles.append(q.register_forward_pre_hook(quant_pre(name)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        batches = {len(v) for v in self.outputs.values()}
        if dropped:
            kept = len(self.outputs)
            warnings.warn(f"prefix reuse: the block outputs exceed the cache limit of {limit / 2**30:.1f} GiB; caching "
                          f"only the first {kept} of {len(self.finish_order)} blocks (fewer or smaller evaluation "
                          "images, or more memory, make the sweep faster)", stacklevel=3)
        self.stats["cached_blocks"] = len(self.outputs)
        if not self.outputs or len(batches) != 1 or any(calls[n] != len(self.outputs[n]) for n in self.outputs):
            self.clear()  # nothing fits, blocks called more than once per forward, or nothing ran: no reuse
        else:
            self.reference = reference
            self.signature = next(iter(inputs.items())) if inputs else None
            self.stats["recorded_batches"] = batches.pop()

    def clear(self) -> None:
        """Forget the recording."""
        self.outputs, self.finish_order, self.first_call = {}, {}, {}
        self.reference, self.signature, self.bytes = None, None, 0

    # ---- replay --------------------------------------------------------------------------------------------------
    def safe_blocks(self, changed_quantizers: Set[str]) -> List[str]:
        """Blocks that finish before any of `changed_quantizers` first runs (so their outputs do not change)."""
        if not self.ready:
            return []
        calls = [self.first_call[q] for q in changed_quantizers if q in self.first_call]
        if len(calls) != len(changed_quantizers):
            return []  # a changed quantizer never ran in the reference pass: be conservative
        cut = min(calls, default=None)
        if cut is None:
            return []
        return [b for b, end in self.finish_order.items() if end < cut and b in self.outputs]

    @contextlib.contextmanager
    def replaying(self, blocks: Sequence[str]) -> Iterator[None]:
        """Inside this context the given blocks return their recorded outputs, batch by batch."""
        if not blocks:
            yield
            return
        counters = {b: 0 for b in blocks}
        check_name = self.signature[0] if self.signature else None
        patched = []

        def make(name: str, module: nn.Module):
            def forward(*args, **kwargs):
                i = counters[name]
                counters[name] = i + 1
                outs = self.outputs[name]
                if i >= len(outs):
                    raise RuntimeError(f"prefix reuse: block {name} was called {i + 1} times but the reference pass "
                                       f"recorded {len(outs)} batches; the metric must evaluate the same batches "
                                       "every time (or disable prefix reuse)")
                if name == check_name and _signature(args) != self.signature[1][i]:
                    raise RuntimeError(f"prefix reuse: block {name} got a different input in batch {i} than in the "
                                       "reference pass; the metric must evaluate the same batches every time (or "
                                       "disable prefix reuse)")
                return clone_nested(outs[i])
            return forward

        for name in blocks:
            module = self.blocks[name]
            module.forward = make(name, module)
            patched.append(module)
        self.stats["replayed_blocks"] += len(blocks)
        try:
            yield
        finally:
            for module in patched:
                del module.forward  # back to the class's forward
