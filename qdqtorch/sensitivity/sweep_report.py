"""Human outputs of a sweep: sensitivity.md (top-k table), sensitivity.png (bar chart) and the ready config file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..atomic import atomic_output, atomic_write_text
from ..optional import require
from .noise import spearman_meaning


def _fmt(value: Optional[float], digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown(result: dict, topk: int = 20) -> str:
    """The top-k table and the recommendation, for humans (the JSON holds everything)."""
    s, base = result["settings"], result["baselines"]
    metric = s.get("metric", "metric")
    lines = ["# Quantization sensitivity", "",
             f"- model: `{result['model'].get('source', '?')}`",
             f"- data: {result['data'].get('summary', json.dumps(result['data'], sort_keys=True)[:200])}",
             f"- sweep: {s['mode']} over {result['num_units']} {s['unit']} unit(s), metric {metric} "
             f"({'higher' if s.get('higher_is_better', True) else 'lower'} is better), delta vs the {s['reference']} "
             "baseline",
             f"- baselines: float {_fmt(base.get('float', {}).get('metric'))}, all quantized "
             f"{_fmt(base.get('quantized', {}).get('metric'))}",
             f"- noise: {noise_line(result.get('noise'))}",
             ""]
    if not result.get("complete", True):
        lines += [f"**Incomplete**: {len(result['missing'])} unit(s) have no result yet (unmerged shards?).", ""]
    impact_doc = ("metric recovered by keeping the unit float" if s["mode"] == "disable-one"
                  else "metric lost by quantizing only this unit")
    lines += [f"## Top {min(topk, len(result['entries']))} units (impact = {impact_doc})", "",
              "| Rank | Unit | Metric | Delta | Impact | Above noise | Proxy SNR (dB) | Time (s) |",
              "|---:|---|---:|---:|---:|:---:|---:|---:|"]
    for e in result["entries"][:topk]:
        above = {True: "yes", False: "no"}.get(e.get("significant"), "-")
        lines.append(f"| {e['rank']} | `{e['unit']}` | {_fmt(e['metric'])} | {_fmt(e['delta'], signed=True)} | "
                     f"{_fmt(e['impact'], signed=True)} | {above} | {_fmt(e.get('proxy_snr_db'), 1)} | "
                     f"{_fmt(e.get('time_s'), 2)} |")
    lines.append("")
    if result["not_evaluated"]:
        lines += [f"{len(result['not_evaluated'])} unit(s) were skipped by the proxy prefilter.", ""]
    proxy = result.get("proxy")
    if proxy is not None:
        rc = proxy["rank_correlation"]
        lines += [f"Proxy (SNR) vs metric ranking: Spearman {_fmt(rc['spearman'], 3)} over {rc['n']} unit(s), "
                  f"top-5 overlap {rc['top5_overlap']}/5. "
                  f"{rc.get('meaning') or spearman_meaning(rc['spearman'], rc['n'])}.", ""]
    budget = result.get("budget")
    if budget is not None:
        lines += ["## Accuracy budget", "",
                  f"Budget {budget['budget']:g}{' (relative)' if budget['relative'] else ''}: reach "
                  f"{_fmt(budget['target'])}.", "", "| Float units | Metric | Gap to float | Kept |",
                  "|---|---:|---:|---|"]
        for step in budget["steps"]:
            lines.append(f"| {', '.join(step['float_units']) or '(none)'} | {_fmt(step['metric'])} | "
                         f"{_fmt(step['gap'], signed=True)} | {'yes' if step['kept'] else 'no'} |")
        v = budget.get("verification")
        if v:
            lines += ["", f"Verification ({v['method']}): {_fmt(v['metric'])}, gap {_fmt(v['gap'], signed=True)}, "
                          f"{'within' if v['within_budget'] else 'NOT within'} budget."]
        lines.append("")
    rec = result["recommendation"]
    how = "budget search" if rec["source"] == "budget" else (
        "top units with positive impact" + (" above the noise" if result.get("noise") else ""))
    lines += ["## Recommendation", "",
              f"Keep {len(rec['units'])} unit(s) float ({how}): "
              + (", ".join(f"`{u}`" for u in rec["units"]) or "none") + ".", ""]
    if rec.get("note"):
        lines += [rec["note"][0].upper() + rec["note"][1:] + ".", ""]
    lines += [
              "`QuantConfig.ignore` regexes:", "", "```yaml", "ignore:"]
    lines += [f"  - '{r}'" for r in rec["ignore"]] or ["  []"]
    lines += ["```", ""]
    if rec.get("config_file"):
        lines += [f"Ready config: `{rec['config_file']}` (`scripts/ptq.py --config {rec['config_file']}`).", ""]
    return "\n".join(lines)


def noise_line(noise: Optional[dict]) -> str:
    """How noisy the metric is, in words."""
    if noise is None:
        return "unknown (the metric gives no bootstrap; every positive impact is taken as real)"
    return f"{noise['std']:.4f} ({noise['method']}); an entry is above noise when its impact exceeds it"


def bar_chart(result: dict, path: Path, topk: int = 40) -> Path:
    """Horizontal bars of the top-k impacts (matplotlib, Agg backend, no display needed)."""
    matplotlib = require("matplotlib", "matplotlib", "plots", "the sensitivity bar chart (or pass --no-chart)")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    entries = [e for e in result["entries"][:topk] if e["impact"] is not None]
    height = max(2.5, 0.28 * len(entries) + 1.2)
    fig, ax = plt.subplots(figsize=(9, height))
    try:
        names = [e["unit"] for e in entries][::-1]
        values = [e["impact"] for e in entries][::-1]
        colors = ["#c0392b" if v > 0 else "#7f8c8d" for v in values]
        ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)))
        ax.set_yticklabels(names, fontsize=7)
        ax.axvline(0, color="black", linewidth=0.6)
        s = result["settings"]
        ax.set_xlabel(f"impact on {s.get('metric', 'metric')} ({s['mode']})")
        base = result["baselines"]
        ax.set_title(f"Quantization sensitivity, top {len(entries)}: float "
                     f"{_fmt(base.get('float', {}).get('metric'))}, quantized "
                     f"{_fmt(base.get('quantized', {}).get('metric'))}", fontsize=9)
        fig.tight_layout()
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def write_config(config: dict, path: Path, note: str) -> Path:
    """The recommended config (PTQ settings, or a `quant:` section) as YAML that `scripts/ptq.py --config` reads."""
    import yaml
    header = "".join(f"# {line}\n" for line in note.splitlines())
    atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=False))
    return path


def write_outputs(result: dict, out_dir: Path, topk: int = 20, chart: bool = True) -> dict:
    """sensitivity.json/.md/.png and sensitivity_config.yaml in `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    rec = result["recommendation"]
    if rec.get("config") is not None:
        note = (f"qdqtorch sensitivity recommendation ({rec['source']}): keeps {len(rec['units'])} unit(s) float: "
                f"{', '.join(rec['units']) or 'none'}" + (f"\n{rec['note']}" if rec.get("note") else ""))
        paths["config"] = write_config(rec["config"], out_dir / "sensitivity_config.yaml", note)
        rec["config_file"] = str(paths["config"])
    paths["json"] = out_dir / "sensitivity.json"
    atomic_write_text(paths["json"], json.dumps(result, indent=1) + "\n")
    paths["md"] = out_dir / "sensitivity.md"
    atomic_write_text(paths["md"], markdown(result, topk))
    if chart:
        paths["png"] = bar_chart(result, out_dir / "sensitivity.png", max(topk, 20))
    return paths
