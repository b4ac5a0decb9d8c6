"""Fast proxy ranking: per-layer SNR / MSE / cosine of quantized against float layer outputs (PPQ/xquant style).

Two views, from forward hooks over a few batches:
- all quantized: every swept quantizer on, so each layer's error includes everything upstream;
- single: only that layer's (or unit's) quantizers on, recomputed from the layer's captured float inputs, so the
  cost is one layer forward per layer instead of one model forward.
A unit's proxy score is the lowest single-view SNR (dB) among its layers: the lower, the more sensitive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from ..quantize import run_batch
from .units import QuantizerSwitch, Unit, owner_of
from ._nested import clone_nested
from ..errors import UsageError

HIST_BINS = 12
_SAMPLES_PER_CALL = 4096
_SPARK = " ▁▂▃▄▅▆▇█"


def _tensors(value: Any) -> List[torch.Tensor]:
    """Floating tensors inside a layer output, flattened in order."""
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _flat(value: Any) -> Optional[torch.Tensor]:
    parts = [t.detach().reshape(-1).float() for t in _tensors(value)]
    return torch.cat(parts) if parts else None


@dataclass
class ErrorStats:
    """Accumulated comparison of quantized (Q) against float (F) outputs of one layer."""

    signal: float = 0.0  # sum F^2
    noise: float = 0.0  # sum (Q - F)^2
    dot: float = 0.0  # sum F * Q
    q_energy: float = 0.0  # sum Q^2
    count: int = 0
    f_min: float = math.inf
    f_max: float = -math.inf
    q_min: float = math.inf
    q_max: float = -math.inf
    samples: List[torch.Tensor] = field(default_factory=list)

    def add(self, f: torch.Tensor, q: torch.Tensor) -> None:
        """Fold one (float, quantized) pair of flattened outputs in (sums accumulated in float64)."""
        if f.shape != q.shape:
            raise UsageError(f"float and quantized outputs differ in size ({f.numel()} vs {q.numel()})")
        d = torch.float64
        self.signal += float((f * f).sum(dtype=d))
        self.noise += float(((q - f) ** 2).sum(dtype=d))
        self.dot += float((f * q).sum(dtype=d))
        self.q_energy += float((q * q).sum(dtype=d))
        self.count += f.numel()
        if f.numel():
            self.f_min, self.f_max = min(self.f_min, float(f.min())), max(self.f_max, float(f.max()))
            self.q_min, self.q_max = min(self.q_min, float(q.min())), max(self.q_max, float(q.max()))
            step = max(1, f.numel() // _SAMPLES_PER_CALL)
            self.samples.append(f[::step].float().cpu())

    @property
    def snr_db(self) -> float:
        """10 log10(signal / noise); 200 dB stands for no noise at all."""
        if self.noise <= 0:
            return 200.0
        return min(200.0, 10 * math.log10(max(self.signal, 1e-300) / self.noise))

    @property
    def mse(self) -> float:
        """Mean squared error."""
        return self.noise / max(self.count, 1)

    @property
    def cosine(self) -> float:
        """Cosine similarity of the flattened outputs (1 when both are zero)."""
        denom = math.sqrt(self.signal * self.q_energy)
        return 1.0 if denom == 0 else self.dot / denom

    def histogram(self, bins: int = HIST_BINS) -> List[int]:
        """Counts of sampled float values over [F.min, F.max]."""
        if not self.samples:
            return []
        values = torch.cat(self.samples)
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            return [int(values.numel())] + [0] * (bins - 1)
        return torch.histc(values, bins=bins, min=lo, max=hi).long().tolist()

    def row(self) -> dict:
        """JSON-able summary."""
        return {"snr_db": self.snr_db, "mse": self.mse, "cosine": self.cosine,
                "q_min": self.q_min, "q_max": self.q_max, "f_min": self.f_min, "f_max": self.f_max,
                "f_hist": self.histogram()}


def sparkline(counts: Sequence[int]) -> str:
    """Unicode bar per bin, log-scaled so thin tails stay visible."""
    if not counts or max(counts) == 0:
        return ""
    top = math.log1p(max(counts))
    return "".join(_SPARK[0 if c == 0 else max(1, round(math.log1p(c) / top * (len(_SPARK) - 1)))] for c in counts)


@dataclass
class ProxyResult:
    """Per-layer rows of both views, per-unit scores and the unit ranking (most sensitive first)."""

    layers: Dict[str, str]  # layer -> op (module class)
    all_quantized: Dict[str, dict]
    single: Dict[str, dict]
    unit_scores: Dict[str, float]
    num_batches: int
    score: str = "snr_db (single), lower = more sensitive"

    @property
    def ranking(self) -> List[str]:
        """Unit names, lowest score first (ties keep sweep order)."""
        order = {n: i for i, n in enumerate(self.unit_scores)}
        return sorted(self.unit_scores, key=lambda n: (self.unit_scores[n], order[n]))

    def to_dict(self) -> dict:
        """JSON form (inside sensitivity.json under `proxy`)."""
        return {"score": self.score, "num_batches": self.num_batches, "layers": self.layers,
                "all_quantized": self.all_quantized, "single": self.single, "unit_scores": self.unit_scores,
                "ranking": self.ranking}

    @classmethod
    def from_dict(cls, data: dict) -> "ProxyResult":
        """Inverse of `to_dict`."""
        return cls(data["layers"], data["all_quantized"], data["single"], data["unit_scores"], data["num_batches"],
                   data.get("score", cls.score))


def _probes(units: Sequence[Unit]) -> Tuple[Dict[str, Tuple[set, List[str]]], Dict[str, List[str]]]:
    """Single-view probes: key -> (quantizers on, layers recomputed), and unit -> probe keys it scores from."""
    layer_q: Dict[str, set] = {}
    for u in units:
        for q in u.quantizers:
            layer_q.setdefault(owner_of(q), set()).add(q)
    probes = {f"layer:{layer}": (qs, [layer]) for layer, qs in layer_q.items()}
    unit_probes: Dict[str, List[str]] = {}
    for u in units:
        if u.kind == "quantizer":
            key = f"quantizer:{u.name}"
            probes[key] = ({u.name}, [owner_of(u.name)])
            unit_probes[u.name] = [key]
        else:
            unit_probes[u.name] = [f"layer:{layer}" for layer in u.layers]
    return probes, unit_probes


@torch.no_grad()
def proxy_pass(model: nn.Module, batches: Iterable, units: Sequence[Unit], *,
               device: Optional[torch.device] = None, preprocess: Optional[Callable] = None,
               progress: bool = True) -> ProxyResult:
    """Compare quantized with float layer outputs on `batches` (a few images are enough) and rank the units."""
    modules = dict(model.named_modules())
    layers = list(dict.fromkeys(owner_of(q) for u in units for q in u.quantizers))
    missing = [name for name in layers if name not in modules]
    if missing:
        raise UsageError(f"proxy pass: layers not found in the model: {missing[:5]}")
    if device is None:
        device = next(iter(model.parameters()), torch.zeros(())).device
    probes, unit_probes = _probes(units)
    all_stats = {name: ErrorStats() for name in layers}
    single_stats = {key: ErrorStats() for key in probes}
    switch = QuantizerSwitch(model, units)
    everything = set(switch.names)
    captured: Dict[str, List[Tuple[Any, Any, Any]]] = {}
    phase = {"now": "float"}
    calls_seen: Dict[str, int] = {}

    def hook(name: str):
        def fn(module, args, kwargs, output):
            if phase["now"] == "float":
                captured.setdefault(name, []).append((clone_nested(args), clone_nested(kwargs), _flat(output)))
            else:
                calls = captured.get(name, [])
                index = calls_seen.get(name, 0)
                calls_seen[name] = index + 1
                q = _flat(output)
                if index < len(calls) and q is not None and calls[index][2] is not None:
                    all_stats[name].add(calls[index][2], q)
        return fn

    handles = [modules[name].register_forward_hook(hook(name), with_kwargs=True) for name in layers]
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in tqdm(batches, desc="proxy pass", unit="batch", disable=not progress):
            captured.clear()
            calls_seen.clear()
            phase["now"] = "float"
            switch.set_enabled(set())
            run_batch(model, batch, device, preprocess)
            phase["now"] = "quantized"
            switch.set_enabled(everything)
            run_batch(model, batch, device, preprocess)
            for key, (on, probe_layers) in probes.items():
                switch.set_enabled(on)
                for name in probe_layers:
                    for args, kwargs, f in captured.get(name, []):
                        q = _flat(modules[name](*args, **kwargs))
                        if f is not None and q is not None:
                            single_stats[key].add(f, q)
            count += 1
    finally:
        for handle in handles:
            handle.remove()
        switch.restore()
        model.train(was_training)
    if count == 0:
        raise UsageError("proxy pass: the data yielded no batch")
    single_rows = {key: s.row() for key, s in single_stats.items()}
    unit_scores = {u: min(single_rows[k]["snr_db"] for k in keys) for u, keys in unit_probes.items()}
    return ProxyResult(layers={name: type(modules[name]).__name__ for name in layers},
                       all_quantized={name: s.row() for name, s in all_stats.items()},
                       single={k: r for k, r in single_rows.items()}, unit_scores=unit_scores, num_batches=count)


def _fmt_range(lo: float, hi: float) -> str:
    if not math.isfinite(lo):
        return "-"
    return f"[{lo:.3g}, {hi:.3g}]"


def proxy_markdown(result: ProxyResult, flag_snr_db: float = 20.0, flag_cosine: float = 0.99) -> str:
    """xquant-like report: Op | Var | SNR | MSE | Cosine | Q.MinMax | F.MinMax | F.Hist, flagged rows marked."""
    lines = ["# Quantization error per layer (proxy)", "",
             f"{result.num_batches} batch(es). SNR = 10·log10(ΣF² / Σ(Q−F)²) in dB (higher is better), MSE and "
             "cosine of the layer output Q against float F. F.Hist: float output histogram over F.MinMax (log "
             f"scale). ⚠ marks rows with SNR < {flag_snr_db:g} dB or cosine < {flag_cosine:g}.", ""]
    views = (("Only this layer quantized", {k.split(":", 1)[1]: r for k, r in result.single.items()
                                            if k.startswith("layer:")}),
             ("Everything quantized (error accumulated from upstream)", result.all_quantized))
    for title, rows in views:
        flagged = 0
        body = []
        for name, row in rows.items():
            bad = row["snr_db"] < flag_snr_db or row["cosine"] < flag_cosine
            flagged += bad
            mark = "⚠ " if bad else ""
            snr = f"**{row['snr_db']:.2f}**" if bad else f"{row['snr_db']:.2f}"
            cos = f"**{row['cosine']:.5f}**" if bad else f"{row['cosine']:.5f}"
            body.append(f"| {mark}{result.layers.get(name, '?')} | {name} | {snr} | {row['mse']:.3e} | {cos} | "
                        f"{_fmt_range(row['q_min'], row['q_max'])} | {_fmt_range(row['f_min'], row['f_max'])} | "
                        f"`{sparkline(row['f_hist'])}` |")
        lines += [f"## {title}: {flagged} flagged of {len(rows)}", "",
                  "| Op | Var | SNR (dB) | MSE | Cosine | Q.MinMax | F.MinMax | F.Hist |",
                  "|---|---|---:|---:|---:|---|---|---|"] + body + [""]
    ranking = result.ranking
    lines += ["## Units by proxy score (most sensitive first)", "",
              ", ".join(f"{n} ({result.unit_scores[n]:.1f} dB)" for n in ranking[:20])
              + (" ..." if len(ranking) > 20 else ""), ""]
    return "\n".join(lines)
