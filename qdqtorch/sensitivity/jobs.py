"""Evaluation jobs of a sweep: the two baselines, one job per unit, and keep-float sets of the budget search.

A job is identified by a string key (stored in journals): `baseline/float`, `baseline/quantized`, `unit/<name>`
and `float/<name>,<name>...` (all quantized except the listed units, sorted by sweep order).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Sequence, Set, Tuple

from .units import Unit
from ..errors import UsageError

MODES = ("disable-one", "enable-one")
FLOAT = "baseline/float"
QUANTIZED = "baseline/quantized"


@dataclass(frozen=True)
class Job:
    """One evaluation: which swept quantizers are on is decided by `enabled_quantizers`."""

    key: str
    kind: str  # "baseline", "unit" or "float-set"
    units: Tuple[str, ...] = ()


def baseline_jobs() -> List[Job]:
    """Float first, then everything quantized."""
    return [Job(FLOAT, "baseline"), Job(QUANTIZED, "baseline")]


def unit_jobs(units: Sequence[Unit]) -> List[Job]:
    """One job per unit, in sweep order."""
    return [Job(f"unit/{u.name}", "unit", (u.name,)) for u in units]


def float_set_job(names: Iterable[str], order: Sequence[str], reuse_unit_keys: bool = True) -> Job:
    """All quantized except `names` (kept float). The same evaluation as the quantized baseline, or (disable-one
    sweeps: `reuse_unit_keys`) as a unit job, gets that job's key so its journal entry is reused."""
    chosen = set(names)
    ordered = tuple(n for n in order if n in chosen)
    if len(ordered) != len(chosen):
        raise UsageError(f"unknown unit(s) {sorted(chosen - set(order))[:5]}")
    if not ordered:
        return Job(QUANTIZED, "baseline")
    if len(ordered) == 1 and reuse_unit_keys:
        return Job(f"unit/{ordered[0]}", "unit", ordered)
    return Job("float/" + ",".join(ordered), "float-set", ordered)


def enabled_quantizers(job: Job, units: Dict[str, Unit], mode: str) -> Set[str]:
    """The swept quantizers that are on while evaluating `job`."""
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; choose one of {MODES}")
    everything = {q for u in units.values() for q in u.quantizers}
    if job.key == FLOAT:
        return set()
    if job.key == QUANTIZED:
        return everything
    picked: FrozenSet[str] = frozenset(q for n in job.units for q in units[n].quantizers)
    if job.kind == "unit" and mode == "enable-one":
        return set(picked)
    return everything - picked


def shard_of(jobs: Sequence[Job], index: int, count: int) -> List[Job]:
    """Round-robin share `index` (0-based) of `count` (baselines go to the first shards)."""
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"shard {index}/{count}: need 0 <= K < N (shards are numbered from 0, like Slurm array "
                         "task ids and torchrun ranks)")
    return [job for i, job in enumerate(jobs) if i % count == index]


def parse_shard(text: str) -> Tuple[int, int]:
    """'K/N' -> (K, N), 0 <= K < N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected K/N, e.g. 0/4 (shards are numbered 0..N-1)") from None
    shard_of([], k, n)  # validates
    return k, n
