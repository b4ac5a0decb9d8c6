"""Running evaluation jobs: toggle quantizers in place, evaluate, journal each result; overlap scoring when possible."""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .jobs import FLOAT, QUANTIZED, Job, enabled_quantizers
from .journal import Journal
from .metric import Metric, check_value
from .prefix_cache import PrefixCache, container_of
from .units import QuantizerSwitch, Unit, auto_block_depth


class Evaluator:
    """Evaluates jobs on one model whose quantizers are switched in place; results are cached and journaled."""

    def __init__(self, model: nn.Module, metric: Metric, units: Sequence[Unit], mode: str,
                 journal: Optional[Journal] = None, cache: Optional[Dict[str, dict]] = None,
                 prefix_reuse: bool = True, cache_limit_bytes: Optional[int] = None) -> None:
        self.model = model
        self.metric = metric
        self.units = {u.name: u for u in units}
        self.mode = mode
        self.journal = journal
        self.results: Dict[str, dict] = dict(cache or {})
        self.switch = QuantizerSwitch(model, units)
        self.reference = Job(QUANTIZED if mode == "disable-one" else FLOAT, "baseline")
        self.prefix: Optional[PrefixCache] = None
        if prefix_reuse:
            layers = [layer for u in units for layer in u.layers]
            depth = auto_block_depth(layers)
            blocks = sorted({".".join(n.split(".")[:depth]) for n in layers})
            try:
                container, _ = container_of(model, blocks)
                self.prefix = PrefixCache(model, container, cache_limit_bytes)
            except ValueError:
                self.prefix = None
        self._reference_on = enabled_quantizers(self.reference, self.units, mode)
        self._recorded = False  # one recording attempt only (it may be refused for memory)

    def _forward(self):
        return self.metric.infer(self.model) if self.metric.two_phase else self.metric(self.model)

    def _record(self, key: str, value: float, seconds: float) -> dict:
        value = check_value(value, self.metric, key)
        if self.journal is not None:
            rec = self.journal.append(key, value, seconds)
        else:
            rec = {"type": "result", "key": key, "metric": value, "time_s": round(seconds, 4)}
        self.results[key] = rec
        return rec

    @torch.no_grad()
    def _infer(self, job: Job):
        on = enabled_quantizers(job, self.units, self.mode)
        start = time.perf_counter()
        try:
            if self.prefix is None or job.key in (FLOAT, QUANTIZED):
                self.switch.set_enabled(on)
                if self.prefix is not None and job.key == self.reference.key and not self._recorded:
                    self._recorded = True
                    with self.prefix.recording(job.key):
                        return self._forward(), time.perf_counter() - start
                return self._forward(), time.perf_counter() - start
            if not self._recorded:  # the reference result came from a journal: record it once now
                self._recorded = True
                self.switch.set_enabled(self._reference_on)
                with self.prefix.recording(self.reference.key):
                    self._forward()
                start = time.perf_counter()
            self.switch.set_enabled(on)
            with self.prefix.replaying(self.prefix.safe_modules(on ^ self._reference_on)):
                return self._forward(), time.perf_counter() - start
        finally:
            self.switch.restore()

    def evaluate(self, job: Job) -> float:
        """The metric of one job (from the cache if already done)."""
        if job.key not in self.results:
            raw, seconds = self._infer(job)
            if self.metric.two_phase:
                start = time.perf_counter()
                raw = self.metric.score(raw)
                seconds += time.perf_counter() - start
            self._record(job.key, raw, seconds)
        return self.results[job.key]["metric"]

    def run(self, jobs: Sequence[Job], progress: bool = True, desc: str = "sensitivity",
            on_result: Optional[Callable[[Job, dict], None]] = None, overlap: bool = True) -> Dict[str, dict]:
        """Evaluate every job not yet done, in order, with a progress bar (ETA) showing the last result.

        With a two-phase metric and `overlap`, job i is scored on a worker thread while job i+1 runs inference.
        """
        todo = [j for j in jobs if j.key not in self.results]
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="eval", disable=not progress,
                   dynamic_ncols=True)
        pending: Optional[Tuple[Job, Future, float]] = None

        def finish(job: Job, value: float, seconds: float) -> None:
            rec = self._record(job.key, value, seconds)
            bar.update(1)
            bar.set_postfix_str(f"{job.key}: {rec['metric']:.4f}", refresh=False)
            if on_result is not None:
                on_result(job, rec)

        def timed_score(raw):
            start = time.perf_counter()
            return self.metric.score(raw), time.perf_counter() - start

        use_thread = overlap and self.metric.two_phase
        pool = ThreadPoolExecutor(max_workers=1) if use_thread else None
        try:
            for job in todo:
                raw, seconds = self._infer(job)
                if pending is not None:
                    p_job, p_future, p_seconds = pending
                    value, score_s = p_future.result()
                    finish(p_job, value, p_seconds + score_s)
                    pending = None
                if pool is not None:
                    pending = (job, pool.submit(timed_score, raw), seconds)
                elif self.metric.two_phase:
                    value, score_s = timed_score(raw)
                    finish(job, value, seconds + score_s)
                else:
                    finish(job, raw, seconds)
            if pending is not None:
                p_job, p_future, p_seconds = pending
                value, score_s = p_future.result()
                finish(p_job, value, p_seconds + score_s)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            bar.close()
        return {j.key: self.results[j.key] for j in jobs}
