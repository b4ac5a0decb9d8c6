"""Calibration across torch.distributed ranks: each rank feeds its share of the batches, the statistics are
all-reduced and rank 0's amax is broadcast, so every rank holds the same calibration."""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn

from ..calib import HistogramCalibrator, MaxCalibrator
from .calibrate import check_grid, collect_stats, compute_amax, prepare_calibrators
from .control import named_quantizers


def rank_and_world() -> Tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (identity without a process group)."""
    _, world = rank_and_world()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_calibrators(model: nn.Module) -> int:
    """Combine every rank's calibration statistics so that all ranks hold the same ones.

    Max calibrators: element-wise max all-reduced (exactly the statistics of all ranks' data together).
    Histogram calibrators: all gathered, then merged in rank order on every rank with `merge_` (identical on all
    ranks; bins are re-binned by their centres where widths differ). Returns the number of calibrators combined.
    """
    _, world = rank_and_world()
    calibrators = [(n, q.calibrator) for n, q in named_quantizers(model) if q.calibrator is not None]
    if world == 1:
        return len(calibrators)
    maxes = [(n, c) for n, c in calibrators if isinstance(c, MaxCalibrator)]
    if maxes:
        max_states = [c.state() for _, c in maxes]
        mine = [(None if st["max"] is None else tuple(st["max"].shape), st["n"], st["min"]) for st in max_states]
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
        for st, size in zip(max_states, sizes):
            if st["max"] is not None:
                flat[offset:offset + size] = st["max"].reshape(-1).to(device, torch.float32)
            offset += size
        dist.all_reduce(flat, op=dist.ReduceOp.MAX)
        offset = 0
        for i, ((_, c), size, shape) in enumerate(zip(maxes, sizes, shapes)):
            if shape is not None:
                target = c.device if c.device is not None else torch.device("cpu")
                lows = [part[i][2] for part in gathered if part[i][2] is not None]
                c.load_state({"max": flat[offset:offset + size].reshape(shape),
                              "n": sum(part[i][1] for part in gathered), "min": min(lows) if lows else None}, target)
            offset += size
    hists = [(n, c) for n, c in calibrators if isinstance(c, HistogramCalibrator)]
    if hists:
        states: List[Any] = [None] * world
        dist.all_gather_object(states, [h.state() for _, h in hists])
        for i, (_, h) in enumerate(hists):
            device = h.counts.device if h.counts is not None else torch.device("cpu")
            h.reset()
            for rank_states in states:
                part = HistogramCalibrator(h.num_bits, None, h.unsigned, num_bins=h.num_bins, max_bins=h.max_bins)
                part.load_state(rank_states[i], device)
                h.merge_(part)
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
                          progress: bool = True, grid: str = "symmetric", **kwargs: Any) -> None:
    """Like `qdqtorch.calibrate`, but rank r feeds batches r, r+W, r+2W, ... of the first `num_batches`, the
    statistics are all-reduced, and rank 0's amax is broadcast, so every rank ends with the same calibration."""
    rank, world = rank_and_world()
    check_grid(grid, "distributed_calibrate")
    prepare_calibrators(model, method, "distributed_calibrate")
    mine = itertools.islice(data, rank, num_batches, world)
    total = None if num_batches is None else len(range(rank, num_batches, world))
    if total != 0:  # a rank without batches still joins the all-reduce
        collect_stats(model, _Sized(mine, total), total, device=device, preprocess=preprocess,
                      progress=progress and rank == 0)
    all_reduce_calibrators(model)
    compute_amax(model, method, weight_method=weight_method, progress=progress and rank == 0, grid=grid, **kwargs)
    broadcast_amax(model, 0)


class _Sized:
    """An iterator with a known length (for the progress bar)."""

    def __init__(self, it: Iterable, n: Optional[int]) -> None:
        self._it, self._n = it, n

    def __iter__(self):
        return iter(self._it)

    def __len__(self) -> int:
        return self._n or 0
