"""Calibration state on disk (JSON or safetensors, never pickle) and a readable summary of all quantizers."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Union

from torch import nn

from ..atomic import atomic_output, atomic_write_text
from ..nn import CalibrationError, TensorQuantizer
from .control import named_quantizers
from ..errors import UsageError

FORMAT = "qdqtorch.calibration"
VERSION = 1


def _describe(q: TensorQuantizer) -> dict:
    return {"num_bits": q.num_bits, "axis": q.axis, "unsigned": q.unsigned, "narrow_range": q.narrow_range,
            "enabled": q.is_enabled, "zero_point": q.zero_point}


def save_calibration(model: nn.Module, path: Union[str, Path]) -> Path:
    """Write every quantizer's amax and settings to `.json` or `.safetensors`."""
    path = Path(path)
    quantizers = dict(named_quantizers(model))
    meta = {name: _describe(q) for name, q in quantizers.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        tensors = {name: q.amax.detach().float().cpu().contiguous() for name, q in quantizers.items()
                   if q.amax is not None}
        with atomic_output(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION),
                                                   "quantizers": json.dumps(meta)})
    elif path.suffix == ".json":
        for name, q in quantizers.items():
            meta[name]["amax"] = None if q.amax is None else q.amax.detach().cpu().tolist()
        atomic_write_text(path, json.dumps({"format": FORMAT, "version": VERSION, "quantizers": meta}, indent=1))
    else:
        raise UsageError(f"save_calibration: {path}: use a .json or .safetensors file name")
    return path


def _read(path: Path) -> Dict[str, dict]:
    if not path.is_file():
        raise FileNotFoundError(f"load_calibration: no such file: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise UsageError(f"load_calibration: {path} is not a qdqtorch calibration file")
            entries = json.loads(meta["quantizers"])
            for name in fh.keys():
                entries[name]["amax"] = fh.get_tensor(name)
        return entries
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UsageError(f"load_calibration: {path}: invalid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UsageError(f"load_calibration: {path} is not a qdqtorch calibration file (no format: {FORMAT})")
        return data["quantizers"]
    raise UsageError(f"load_calibration: {path}: expected a .json or .safetensors file")


def check_saved_format(q: TensorQuantizer, name: str, entry: Dict, where: str) -> None:
    """A saved quantizer entry (calibration or QAT checkpoint) must have the model quantizer's num_bits and axis."""
    for key in ("num_bits", "axis"):
        if entry.get(key) != getattr(q, key):
            raise CalibrationError(f"{where}: quantizer {name} was saved with {key}={entry.get(key)} but the "
                                   f"model's has {key}={getattr(q, key)}")


def load_calibration(model: nn.Module, path: Union[str, Path], strict: bool = True) -> int:
    """Load amax values saved by `save_calibration` into a quantized model (on whatever device it lives).

    strict: every quantizer of the model must be in the file and vice versa, with the same bits and axis.
    Returns the number of quantizers loaded.
    """
    path = Path(path)
    entries = _read(path)
    quantizers = dict(named_quantizers(model))
    if strict:
        missing = sorted(set(quantizers) - set(entries))
        extra = sorted(set(entries) - set(quantizers))
        if missing or extra:
            raise CalibrationError(f"load_calibration: {path} does not match the model: missing in file {missing[:10]}"
                                   f"{'...' if len(missing) > 10 else ''}, not in model {extra[:10]}"
                                   f"{'...' if len(extra) > 10 else ''}. Quantize the model with the same config "
                                   "(ignore list, module types) as when it was saved, or pass strict=False.")
    loaded = 0
    for name, entry in entries.items():
        q = quantizers.get(name)
        if q is None:
            continue
        check_saved_format(q, name, entry, f"load_calibration: {path}")
        if entry.get("amax") is not None:
            try:
                q.amax = entry["amax"]
                q.zero_point = int(entry.get("zero_point", 0))  # files written before shifted grids: 0
            except (CalibrationError, TypeError, ValueError) as exc:
                raise CalibrationError(f"load_calibration: {path}: quantizer {name}: {exc}") from None
            loaded += 1
    return loaded


@dataclass
class QuantSummary:
    """Table of every quantizer: name, enabled, bits, axis, amax range, zero point, calibrator. `str()` renders it."""

    rows: List[dict]

    def __str__(self) -> str:
        header = ("quantizer", "enabled", "bits", "axis", "amax min", "amax max", "zero point", "calibrator")
        body = [(r["name"], "yes" if r["enabled"] else "no", str(r["bits"]), str(r["axis"]),
                 "-" if r["amax_min"] is None else f"{r['amax_min']:.4g}",
                 "-" if r["amax_max"] is None else f"{r['amax_max']:.4g}", str(r["zero_point"]), r["calibrator"])
                for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body]
        enabled = sum(r["enabled"] for r in self.rows)
        lines.append(f"{len(self.rows)} quantizers, {enabled} enabled")
        return "\n".join(lines)


def quant_summary(model: nn.Module) -> QuantSummary:
    """A table of all quantizers in the model (print it)."""
    rows = []
    for name, q in named_quantizers(model):
        amax = q.amax
        rows.append({"name": name, "enabled": q.is_enabled, "bits": q.num_bits, "axis": q.axis,
                     "amax_min": None if amax is None else float(amax.min()),
                     "amax_max": None if amax is None else float(amax.max()), "zero_point": q.zero_point,
                     "calibrator": type(q.calibrator).__name__ if q.calibrator is not None else "-"})
    return QuantSummary(rows)
