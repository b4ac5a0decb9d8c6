"""run_sensitivity: the whole analysis on a calibrated quantized model (proxy pass, sweep, budget, outputs), resumable,
shardable and torchrun-aware; merge_outputs: combine shard folders."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from torch import nn
from tqdm.auto import tqdm

from . import distributed as D
from .budget import parse_budget, select_within_budget
from .fingerprint import json_fingerprint, model_fingerprint
from .jobs import (FLOAT, MODES, QUANTIZED, Job, baseline_jobs, enabled_quantizers, float_set_job, shard_of,
                   unit_jobs)
from .lock import sweep_lock
from .journal import FingerprintMismatch, Journal, discard, journal_paths, load_results, read_journal
from .metric import Metric, as_metric, check_value
from .noise import NOISE_KEY, estimate_noise
from .proxy import proxy_markdown, proxy_pass
from ..host_memory import reuse_freed_memory
from ..atomic import atomic_write_text
from .sweep_report import write_outputs
from .result import build_result
from .sweep import Evaluator
from .units import Unit, find_units
from ..errors import UsageError


@dataclass
class SweepSettings:
    """How to sweep. `budget`: absolute ("0.003") or relative ("1%") metric drop allowed against float.
    `shard`: (K, N) with 0 <= K < N. `prefilter`: sweep only the K worst units by proxy."""

    mode: str = "disable-one"
    unit: str = "layer"
    block_depth: Optional[int] = None
    reference: Optional[str] = None
    topk: int = 20
    prefilter: Optional[int] = None
    budget: Optional[str] = None
    budget_max_units: int = 10
    budget_candidates: int = 1
    recommend: int = 3
    shard: Optional[Tuple[int, int]] = None
    overlap: bool = True
    prefix_reuse: bool = True
    cache_mib: Optional[float] = None  # prefix-reuse memory limit (default: half the free GPU / a quarter of RAM)
    chart: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"mode {self.mode!r}: choose one of {MODES}")
        if self.reference not in (None, "float", "quantized"):
            raise UsageError(f"reference {self.reference!r}: choose 'float' or 'quantized'")
        if self.prefilter is not None and self.prefilter < 1:
            raise UsageError(f"prefilter must be >= 1, got {self.prefilter}")
        if self.budget is not None:
            self.budget = str(self.budget)
            parse_budget(self.budget)
            if self.shard is not None and self.shard[1] > 1:
                raise UsageError("--budget needs every unit's result: run the shards without it, merge them, then "
                                 "rerun the same command with --budget in the merged folder")


def _identity(model: nn.Module, metric: Metric, units: Sequence[Unit], settings: SweepSettings) -> dict:
    """What results depend on (the fingerprint): model incl. amax, the metric and its data, mode, units."""
    return {"model": model_fingerprint(model), "data": metric.describe(), "metric": metric.name,
            "higher_is_better": metric.higher_is_better, "mode": settings.mode, "unit": settings.unit,
            "units": [[u.name, list(u.quantizers)] for u in units]}


def journal_name(shard: Optional[Tuple[int, int]] = None, rank: int = 0, world: int = 1) -> str:
    """The journal a sweep (or one shard / torchrun rank of it) appends to; its lock is taken on that name."""
    if world > 1:
        return f"journal.rank-{rank}-of-{world}.jsonl"
    if shard is not None and shard[1] > 1:
        return f"journal.shard-{shard[0]}-of-{shard[1]}.jsonl"
    return "journal.jsonl"


@reuse_freed_memory()
def run_sensitivity(model: nn.Module, metric: Union[Metric, Callable[[nn.Module], float], str],
                    out_dir: Union[str, Path], settings: Optional[SweepSettings] = None, *,
                    proxy_data: Optional[Iterable] = None, proxy_preprocess: Optional[Callable] = None,
                    base_config: Optional[dict] = None, model_info: Optional[dict] = None,
                    extra_settings: Optional[dict] = None,
                    verify_factory: Optional[Callable[[List[Unit]], nn.Module]] = None,
                    fresh: bool = False, progress: bool = True) -> Optional[dict]:
    """Sensitivity analysis of a calibrated, quantized `model` under `metric` (a callable model -> float).

    Evaluates the float and all-quantized baselines, then one job per unit (`settings.mode`), persisting each
    result in a journal in `out_dir` so a rerun resumes; optional proxy pass (`proxy_data`: a few batches) with
    prefilter; optional accuracy budget. Under torchrun (an initialised process group) units are split across ranks
    and rank 0 writes the outputs; with `settings.shard` only that shard is evaluated (merge with `merge_outputs`).
    `base_config` ({"kind": "ptq" | "quant", "data": dict}) is what the recommended config file extends.
    `verify_factory(float_units)` may build a fresh model quantized with the recommended ignore list for the
    budget's verification. Returns the sensitivity.json dict (a partial one for a shard), None on ranks > 0.
    Runs under `reuse_freed_memory` (the repeated evaluations reuse host memory instead of page-faulting).
    """
    settings = settings or SweepSettings()
    rank, world = D.rank_and_world()
    if world > 1 and settings.shard is not None and settings.shard[1] > 1:
        raise UsageError("use either --shard or torchrun, not both")
    with sweep_lock(out_dir, journal_name(settings.shard, rank, world)):
        return _run_locked(model, metric, Path(out_dir), settings, rank, world, proxy_data=proxy_data,
                           proxy_preprocess=proxy_preprocess, base_config=base_config, model_info=model_info,
                           extra_settings=extra_settings, verify_factory=verify_factory, fresh=fresh,
                           progress=progress)


def _run_locked(model: nn.Module, metric: Union[Metric, Callable[[nn.Module], float], str], out_dir: Path,
                settings: SweepSettings, rank: int, world: int, *, proxy_data: Optional[Iterable],
                proxy_preprocess: Optional[Callable], base_config: Optional[dict], model_info: Optional[dict],
                extra_settings: Optional[dict], verify_factory: Optional[Callable[[List[Unit]], nn.Module]],
                fresh: bool, progress: bool) -> Optional[dict]:
    """run_sensitivity's body, under the output folder's sweep lock."""
    metric = as_metric(metric)
    started = time.perf_counter()
    model.eval()
    units = find_units(model, settings.unit, settings.block_depth)
    identity = _identity(model, metric, units, settings)
    fingerprint = json_fingerprint(identity)
    if fresh and rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        discard(out_dir)
    if world > 1:
        D.broadcast_object(None)  # ranks wait for rank 0's --fresh cleanup
    proxy = None
    if proxy_data is not None:
        proxy = proxy_pass(model, proxy_data, units, preprocess=proxy_preprocess, progress=progress and rank == 0)
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / "sensitivity_proxy.md", proxy_markdown(proxy))
    elif settings.prefilter is not None:
        raise UsageError("--prefilter needs the proxy pass: give proxy data (--proxy-images > 0)")
    selected = units
    if settings.prefilter is not None and proxy is not None:
        worst = set(proxy.ranking[:settings.prefilter])
        selected = [u for u in units if u.name in worst]
    meta = {"model": {**(model_info or {}), "fingerprint": identity["model"],
                      "num_quantizers": sum(len(u.quantizers) for u in units)},
            "data": metric.describe(),
            "settings": {**asdict(settings), **(extra_settings or {}), "metric": metric.name,
                         "higher_is_better": metric.higher_is_better, "block_depth": settings.block_depth},
            "units": [u.to_dict() for u in units], "selected_units": [u.name for u in selected],
            "base_config": base_config, "proxy": None if proxy is None else proxy.to_dict()}
    meta["settings"]["shard"] = None if settings.shard is None else list(settings.shard)
    _, cached = load_results(out_dir, fingerprint) if out_dir.exists() else (None, {})
    journal = Journal(out_dir / journal_name(settings.shard, rank, world), fingerprint, meta)
    evaluator = Evaluator(model, metric, units, settings.mode, journal, cached, prefix_reuse=settings.prefix_reuse,
                          cache_limit_bytes=None if settings.cache_mib is None else int(settings.cache_mib * 2**20))
    jobs = baseline_jobs() + unit_jobs(selected)
    mine = jobs
    if world > 1:
        mine = shard_of(jobs, rank, world)
    elif settings.shard is not None:
        mine = shard_of(jobs, *settings.shard)
    done_before = sum(j.key in cached for j in mine)
    if done_before and rank == 0:
        print(f"resuming: {done_before} of {len(mine)} evaluations already done (journal in {out_dir}); "
              f"{len(mine) - done_before} to go", file=sys.stderr)
    label = f"sensitivity [{settings.mode}, {settings.unit}]" + (f" rank {rank}/{world}" if world > 1 else "") + \
        (f" shard {settings.shard[0]}/{settings.shard[1]}" if settings.shard else "")
    evaluator.run(mine, progress=progress, desc=label, overlap=settings.overlap)
    records = evaluator.results
    if world > 1:
        gathered = D.gather_to_rank0(records)
        if rank != 0:
            return None
        records = D.merge_dicts(gathered)
        evaluator.results = dict(records)
    timing = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "evaluations_this_run": len(mine) - done_before, "resumed_from_journal": done_before,
              "world_size": world, "prefix_reuse": None if evaluator.prefix is None else {
                  **evaluator.prefix.stats, "cache_mib": round(evaluator.prefix.bytes / 2**20, 1)}}
    if settings.shard is not None and settings.shard[1] > 1:
        if settings.shard[0] == 0 and NOISE_KEY not in evaluator.results:
            _measure_noise(evaluator, journal)
        timing["total_s"] = round(time.perf_counter() - started, 3)
        return build_result(meta, fingerprint, records, proxy=meta["proxy"], recommend=settings.recommend,
                            timing=timing)
    if NOISE_KEY not in evaluator.results and (settings.shard is None or settings.shard[0] == 0):
        _measure_noise(evaluator, journal)
    budget = None
    if settings.budget is not None:
        budget = _run_budget(evaluator, units, records, settings, verify_factory, progress)
    timing["total_s"] = round(time.perf_counter() - started, 3)
    result = build_result(meta, fingerprint, evaluator.results, proxy=meta["proxy"], recommend=settings.recommend,
                          budget=budget, timing=timing)
    result["output_dir"] = str(out_dir)
    write_outputs(result, out_dir, settings.topk, settings.chart)
    return result


def _measure_noise(evaluator: "Evaluator", journal: Journal) -> None:
    """Bootstrap the metric on the all-quantized model once and journal its std (resumes and merges keep it)."""
    started = time.perf_counter()
    evaluator.switch.set_enabled(enabled_quantizers(Job(QUANTIZED, "baseline"), evaluator.units, evaluator.mode))
    try:
        noise = estimate_noise(evaluator.metric, evaluator.model)
    finally:
        evaluator.switch.restore()
    if noise is not None:
        evaluator.results[NOISE_KEY] = journal.append(NOISE_KEY, float(noise["std"]), time.perf_counter() - started)


def _run_budget(evaluator: "Evaluator", units: Sequence[Unit], records: Dict[str, dict], settings: SweepSettings,
                verify_factory: Optional[Callable[[List[Unit]], nn.Module]], progress: bool) -> dict:
    """Greedy keep-float search over the sweep's ranking, each step journaled, then a fresh verification."""
    if FLOAT not in records or QUANTIZED not in records:
        raise UsageError("the accuracy budget needs both baselines; merge all shards first")
    value, relative = parse_budget(settings.budget)
    order = [u.name for u in units]
    by_name = {u.name: u for u in units}
    probe = build_result({"settings": {"mode": settings.mode,
                                       "higher_is_better": evaluator.metric.higher_is_better},
                          "units": [u.to_dict() for u in units]}, "", records)
    ranking = [e["unit"] for e in probe["entries"] if e["impact"] is not None and e["impact"] > 0
               and e["significant"] is not False]

    bar = tqdm(desc="budget search", unit="eval", disable=not progress, dynamic_ncols=True)

    def evaluate(names: Sequence[str]) -> float:
        value = evaluator.evaluate(float_set_job(names, order, reuse_unit_keys=settings.mode == "disable-one"))
        bar.update(1)
        bar.set_postfix_str(f"{len(names)} float: {value:.4f}", refresh=False)
        return value

    def verify(names: Sequence[str]) -> float:
        if verify_factory is not None:
            fresh = verify_factory([by_name[n] for n in names])
            fresh.eval()
            return check_value(evaluator.metric(fresh), evaluator.metric, "budget verification")
        job = float_set_job(names, order, reuse_unit_keys=False)
        evaluator.switch.set_enabled(enabled_quantizers(job, evaluator.units, settings.mode))
        try:
            return check_value(evaluator.metric(evaluator.model), evaluator.metric, "budget verification")
        finally:
            evaluator.switch.restore()

    try:
        return select_within_budget(evaluate, ranking, records[FLOAT]["metric"], records[QUANTIZED]["metric"],
                                    value, relative=relative, higher_is_better=evaluator.metric.higher_is_better,
                                    max_units=settings.budget_max_units, candidates=settings.budget_candidates,
                                    verify=verify,
                                    verify_method="fresh model quantized with the recommended ignore list"
                                    if verify_factory is not None else "in-place re-evaluation (not from the journal)")
    finally:
        bar.close()


def merge_outputs(inputs: Sequence[Union[str, Path]], out_dir: Union[str, Path], *, topk: int = 20,
                  recommend: int = 3, chart: bool = True) -> dict:
    """Combine the journals of shard runs (folders or journal files) into one sensitivity.json/.md/.png.

    Refuses inputs of different fingerprints. The merged journal is written to `out_dir` (unless it is one of
    the inputs), so rerunning the same command there with --budget continues from the merged results.
    """
    out_dir = Path(out_dir)
    files: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = journal_paths(path)
            if not found:
                raise FileNotFoundError(f"merge: no journal*.jsonl in {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"merge: no such file or folder: {path}")
    header, records = None, {}
    for path in files:
        h, recs = read_journal(path)
        if h is None:
            continue
        if header is not None and h["fingerprint"] != header["fingerprint"]:
            raise FingerprintMismatch(f"merge: {path} was made for another model, data or settings than "
                                      f"{files[0]} (fingerprints {h['fingerprint'][:12]} vs "
                                      f"{header['fingerprint'][:12]}); merge only shards of one sweep")
        header = header or h
        for key, rec in recs.items():
            records.setdefault(key, rec)
    if header is None:
        raise UsageError("merge: the journals hold no header; nothing to merge")
    meta = {**header["meta"], "settings": {**header["meta"]["settings"], "shard": None}}
    if out_dir.resolve() not in {f.parent.resolve() for f in files}:
        journal = Journal(out_dir / "journal.merged.jsonl", header["fingerprint"], meta)
        _, present = read_journal(journal.path)
        for key, rec in records.items():
            if key not in present:
                journal.append(key, rec["metric"], rec.get("time_s") or 0.0)
    result = build_result(meta, header["fingerprint"], records, proxy=meta.get("proxy"), recommend=recommend,
                          timing={"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                  "merged_from": [str(f) for f in files]})
    result["output_dir"] = str(out_dir)
    write_outputs(result, out_dir, topk, chart)
    return result

