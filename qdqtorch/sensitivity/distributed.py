"""torch.distributed helpers for the sweep: process-group setup under torchrun and gathering results on rank 0.
Distributed calibration lives in `qdqtorch.quantize.distributed`; its names are re-exported here."""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from ..quantize.distributed import (all_reduce_calibrators, broadcast_amax, broadcast_object, distributed_calibrate,
                                    rank_and_world)

__all__ = ["rank_and_world", "init_from_env", "shutdown", "gather_to_rank0", "broadcast_object", "merge_dicts",
           "all_reduce_calibrators", "broadcast_amax", "distributed_calibrate"]


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


def merge_dicts(parts: Optional[List[Dict[str, Any]]]) -> Dict[str, Any]:
    """Union of gathered dicts, earlier ranks winning on duplicate keys."""
    merged: Dict[str, Any] = {}
    for part in parts or []:
        for key, value in part.items():
            merged.setdefault(key, value)
    return merged
