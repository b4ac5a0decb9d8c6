"""Turn journaled evaluations into the sensitivity.json document (see `schema`): deltas, impacts, ranks,
proxy agreement and the recommended ignore list."""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

from .jobs import FLOAT, QUANTIZED
from .noise import NO_SIGNIFICANT, is_significant, noise_summary, spearman_meaning
from .schema import FORMAT, VERSION
from .units import Unit
from ..errors import UsageError


def average_ranks(values: Sequence[float]) -> List[float]:
    """1-based ranks of `values` ascending, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Spearman rank correlation (Pearson of average ranks); None with fewer than 3 pairs or a constant side."""
    if len(a) != len(b):
        raise UsageError("spearman: sequences differ in length")
    if len(a) < 3:
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / (va * vb) ** 0.5


def impact_of(metric: float, baselines: Dict[str, dict], mode: str, higher_is_better: bool) -> Optional[float]:
    """Accuracy that quantizing the unit costs (positive = harmful); None without the needed baseline."""
    sign = 1.0 if higher_is_better else -1.0
    if mode == "disable-one":
        base = baselines.get("quantized")
        return None if base is None else sign * (metric - base["metric"])
    base = baselines.get("float")
    return None if base is None else sign * (base["metric"] - metric)


def ignore_regexes(units: Sequence[Unit]) -> List[str]:
    """QuantConfig.ignore regexes keeping these units' layers float, deduplicated in order."""
    return list(dict.fromkeys(r for u in units for r in u.ignore_regexes()))


def recommended_config(base: Optional[dict], regexes: Sequence[str]) -> Optional[dict]:
    """The content of the ready config file: `base` is {"kind": "ptq" | "quant", "data": dict} (PTQ settings whose
    `ignore` gets the regexes, or a QuantConfig dict written as a `quant:` section); None if unknown."""
    if base is None:
        return None
    if base.get("kind") not in ("ptq", "quant"):
        raise UsageError(f"unknown base config kind {base.get('kind')!r}")
    config = dict(base["data"])
    ignore = config.get("ignore") or []
    if isinstance(ignore, str):
        ignore = [ignore]
    config["ignore"] = list(dict.fromkeys(list(ignore) + list(regexes)))
    return config if base["kind"] == "ptq" else {"quant": config}


def build_result(meta: dict, fingerprint: str, records: Dict[str, dict], *, proxy: Optional[dict] = None,
                 recommend: int = 3, budget: Optional[dict] = None, timing: Optional[dict] = None) -> dict:
    """The sensitivity.json document from the run's metadata (header of the journals) and its evaluations."""
    settings = meta["settings"]
    mode, higher = settings["mode"], settings.get("higher_is_better", True)
    units = [Unit.from_dict(u) for u in meta["units"]]
    order = {u.name: i for i, u in enumerate(units)}
    baselines = {name: {"metric": records[key]["metric"], "time_s": records[key].get("time_s")}
                 for name, key in (("float", FLOAT), ("quantized", QUANTIZED)) if key in records}
    reference = settings.get("reference") or ("quantized" if mode == "disable-one" else "float")
    selected = set(meta.get("selected_units") or [u.name for u in units])
    proxy_scores = (proxy or {}).get("unit_scores", {})
    proxy_rank = {n: i + 1 for i, n in enumerate((proxy or {}).get("ranking", []))}
    noise = noise_summary(records)
    entries, missing, not_evaluated = [], [], []
    for u in units:
        rec = records.get(f"unit/{u.name}")
        if rec is None:
            if u.name in selected:
                missing.append(u.name)
            else:
                not_evaluated.append({"unit": u.name, "proxy_snr_db": proxy_scores.get(u.name)})
            continue
        ref = baselines.get(reference)
        entry = {"unit": u.name, "kind": u.kind, "layers": list(u.layers), "quantizers": list(u.quantizers),
                 "metric": rec["metric"], "delta": None if ref is None else rec["metric"] - ref["metric"],
                 "impact": impact_of(rec["metric"], baselines, mode, higher), "time_s": rec.get("time_s")}
        entry["significant"] = is_significant(entry["impact"], noise)
        if u.name in proxy_scores:
            entry["proxy_snr_db"] = proxy_scores[u.name]
            entry["proxy_rank"] = proxy_rank.get(u.name)
        entries.append(entry)
    entries.sort(key=lambda e: (-(e["impact"] if e["impact"] is not None else float("-inf")), order[e["unit"]]))
    for rank, entry in enumerate(entries, 1):
        entry["rank"] = rank
    by_name = {u.name: u for u in units}
    if budget is not None and budget.get("selected") is not None:
        rec_units, source = list(budget["selected"]), "budget"
    else:
        rec_units = [e["unit"] for e in entries if e["impact"] is not None and e["impact"] > 0
                     and e["significant"] is not False][:recommend]
        source = "top"
    regexes = ignore_regexes([by_name[n] for n in rec_units])
    for pattern in regexes:
        re.compile(pattern)
    result = {
        "format": FORMAT, "version": VERSION, "fingerprint": fingerprint,
        "model": meta.get("model", {}), "data": meta.get("data", {}), "settings": {**settings, "reference": reference},
        "baselines": baselines, "num_units": len(units), "entries": entries, "not_evaluated": not_evaluated,
        "missing": missing, "complete": not missing and len(baselines) == 2,
        "noise": noise,
        "recommendation": {"source": source, "units": rec_units, "ignore": regexes,
                           "config": recommended_config(meta.get("base_config"), regexes)},
    }
    if noise is not None and entries and not any(e["significant"] for e in entries):
        result["recommendation"]["note"] = (f"{NO_SIGNIFICANT} (bootstrap std {noise['std']:.4f}): nothing to keep "
                                            "float on this evidence; evaluate on more images to resolve smaller "
                                            "impacts")
    if proxy is not None:
        pairs = [(e["proxy_snr_db"], -e["impact"]) for e in entries
                 if e.get("proxy_snr_db") is not None and e["impact"] is not None]
        top_metric = [e["unit"] for e in entries[:5]]
        top_proxy = [n for n in proxy.get("ranking", []) if n in {e["unit"] for e in entries}][:5]
        rho = spearman([p for p, _ in pairs], [m for _, m in pairs])
        result["proxy"] = {**proxy, "rank_correlation": {
            "spearman": rho, "n": len(pairs), "top5_overlap": len(set(top_metric) & set(top_proxy)),
            "meaning": spearman_meaning(rho, len(pairs))}}
    if budget is not None:
        result["budget"] = budget
    if timing is not None:
        result["timing"] = timing
    return result
