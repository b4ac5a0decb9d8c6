"""torch.distributed helpers: process-group setup under torchrun, gathering results on rank 0, and calibration
whose statistics are all-reduced so every rank holds the same amax."""
from __future__ import annotations

import itertools
import os
from datetime import timedelta
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn

from ..calib import HistogramCalibrator, MaxCalibrator
from ..quantize import collect_stats, compute_amax, named_quantizers, use_histogram_calibrators


def rank_and_world() -> Tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(backend: Optional[str] = None, timeout_s: float = 7200.0) -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); gloo on CPU, NCCL on CUDA.

    Returns True when this call initialised it (so the caller should `shutdown()` it).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    """Leave the process group if one is active."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_to_rank0(obj: Any) -> Optional[List[Any]]:
    """Every rank's `obj` (picklable) as a list on rank 0, None elsewhere; `[obj]` without a process group."""
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out: Optional[List[Any]] = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (identity without a process group)."""
    _, world = rank_and_world()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _hist_state(c: HistogramCalibrator) -> Optional[dict]:
    return {"counts": None if c.counts is None else c.counts.cpu(), "bin_width": c.bin_width,
            "max_value": c.max_value, "pending": c._pending_zeros, "n": c.num_collected}


def _hist_from_state(c: HistogramCalibrator, state: dict) -> HistogramCalibrator:
    other = HistogramCalibrator(c.num_bits, None, c.unsigned, num_bins=c.num_bins, max_bins=c.max_bins)
    other.counts, other.bin_width = state["counts"], state["bin_width"]
    other.max_value, other._pending_zeros, other.num_collected = state["max_value"], state["pending"], state["n"]
    return other


def all_reduce_calibrators(model: nn.Module) -> int:
    """Combine every rank's calibration statistics so that all ranks hold the same ones.

    Max calibrators: element-wise max all-reduced (exactly the statistics of all ranks' data together).
    Histogram calibrators: all gathered, then merged in rank order on every rank with `merge_` (identical on all
    ranks; bins are re-binned by their centres where widths differ). Returns the number of calibrators combined.
    """
    _, world = rank_and_world()
    calibrators = [(n, q._calibrator) for n, q in named_quantizers(model) if q._calibrator is not None]
    if world == 1:
        return len(calibrators)
    maxes = [(n, c) for n, c in calibrators if isinstance(c, MaxCalibrator)]
    if maxes:
        mine = [(None if c._amax is None else tuple(c._amax.shape), c.num_collected) for _, c in maxes]
        gathered: List[Any] = [None] * world
        dist.all_gather_object(gathered, mine)
        shapes = []
        for i, (name, _) in enumerate(maxes):
            seen = {part[i][0] for part in gathered if part[i][0] is not None}
            if len(seen) > 1:
                raise RuntimeError(f"{name}: ranks collected amax of different shapes {sorted(seen)}")
            shapes.append(seen.pop() if seen else None)
        sizes = [0 if s is None else int(torch.Size(s).numel()) for s in shapes]
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else \
            torch.device("cpu")
        flat = torch.zeros(sum(sizes), dtype=torch.float32, device=device)  # amax >= 0: 0 is neutral for max
        offset = 0
        for (_, c), size in zip(maxes, sizes):
            if c._amax is not None:
                flat[offset:offset + size] = c._amax.reshape(-1).to(device, torch.float32)
            offset += size
        dist.all_reduce(flat, op=dist.ReduceOp.MAX)
        offset = 0
        for i, ((_, c), size, shape) in enumerate(zip(maxes, sizes, shapes)):
            if shape is not None:
                target = c._amax.device if c._amax is not None else torch.device("cpu")
                c._amax = flat[offset:offset + size].reshape(shape).to(target).clone()
                c.num_collected = sum(part[i][1] for part in gathered)
            offset += size
    hists = [(n, c) for n, c in calibrators if isinstance(c, HistogramCalibrator)]
    if hists:
        states: List[Any] = [None] * world
        dist.all_gather_object(states, [_hist_state(c) for _, c in hists])
        for i, (_, c) in enumerate(hists):
            device = c.counts.device if c.counts is not None else torch.device("cpu")
            c.reset()
            for rank_states in states:
                part = _hist_from_state(c, rank_states[i])
                if part.counts is not None:
                    part.counts = part.counts.to(device)
                c.merge_(part)
    return len(calibrators)


def broadcast_amax(model: nn.Module, src: int = 0) -> int:
    """Copy every quantizer's amax from rank `src` to all ranks (bitwise-identical calibration)."""
    _, world = rank_and_world()
    amax = {n: (None if q.amax is None else q.amax.detach().cpu()) for n, q in named_quantizers(model)}
    if world == 1:
        return len(amax)
    amax = broadcast_object(amax, src)
    for name, q in named_quantizers(model):
        if amax.get(name) is not None:
            q.amax = amax[name]
    return len(amax)


def distributed_calibrate(model: nn.Module, data: Iterable, num_batches: Optional[int] = None, *,
                          method: str = "max", weight_method: str = "max",
                          device: Union[str, torch.device, None] = None, preprocess: Optional[Callable] = None,
                          progress: bool = True, **kwargs: Any) -> None:
    """Like `qdqtorch.calibrate`, but rank r feeds batches r, r+W, r+2W, ... of the first `num_batches`, the
    statistics are all-reduced, and rank 0's amax is broadcast, so every rank ends with the same calibration."""
    rank, world = rank_and_world()
    if method != "max":
        use_histogram_calibrators(model)
    for _, q in named_quantizers(model):
        if q._calibrator is not None:
            q._calibrator.reset()
    mine = itertools.islice(data, rank, num_batches, world)
    total = None if num_batches is None else len(range(rank, num_batches, world))
    if total != 0:  # a rank without batches still joins the all-reduce
        collect_stats(model, _Sized(mine, total), total, device=device, preprocess=preprocess,
                      progress=progress and rank == 0)
    all_reduce_calibrators(model)
    compute_amax(model, method, weight_method=weight_method, progress=progress and rank == 0, **kwargs)
    broadcast_amax(model, 0)


class _Sized:
    """An iterator with a known length (for the progress bar)."""

    def __init__(self, it: Iterable, n: Optional[int]) -> None:
        self._it, self._n = it, n

    def __iter__(self):
        return iter(self._it)

    def __len__(self) -> int:
        return self._n or 0


def split_round_robin(items: List[Any]) -> List[Any]:
    """This rank's share of `items` (i % world == rank)."""
    rank, world = rank_and_world()
    return items[rank::world]


def merge_dicts(parts: Optional[List[Dict[str, Any]]]) -> Dict[str, Any]:
    """Union of gathered dicts, earlier ranks winning on duplicate keys."""
    merged: Dict[str, Any] = {}
    for part in parts or []:
        for key, value in part.items():
            merged.setdefault(key, value)
    return merged
