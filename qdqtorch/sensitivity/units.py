"""Sweep units (one quantizer, one layer, or one block of layers) and switching their quantizers in place."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from torch import nn

from ..nn import TensorQuantizer
from ..quantize import named_quantizers, uncalibrated_quantizers
from ..errors import UsageError

UNIT_KINDS = ("quantizer", "layer", "block")


@dataclass(frozen=True)
class Unit:
    """What one sweep step switches: `quantizers` (dotted names) owned by `layers` (dotted module names)."""

    name: str
    kind: str
    quantizers: Tuple[str, ...]
    layers: Tuple[str, ...]

    def to_dict(self) -> dict:
        """JSON form (kept in journals and in sensitivity.json)."""
        return {"name": self.name, "kind": self.kind, "quantizers": list(self.quantizers), "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, data: dict) -> "Unit":
        """Inverse of `to_dict`."""
        return cls(data["name"], data["kind"], tuple(data["quantizers"]), tuple(data["layers"]))

    def ignore_regexes(self) -> List[str]:
        """Regexes for `QuantConfig.ignore` (re.match on module paths) that keep this unit's layers float.

        QuantConfig ignores whole layers, so a quantizer unit maps to the regex of the layer that owns it.
        """
        if self.kind == "block":
            return [f"^{re.escape(self.name)}(\\..+)?$"]
        return [f"^{re.escape(layer)}$" for layer in self.layers]


def owner_of(quantizer_name: str) -> str:
    """The module holding a quantizer (`model.3.conv._input_quantizer` -> `model.3.conv`)."""
    return quantizer_name.rsplit(".", 1)[0] if "." in quantizer_name else quantizer_name


def auto_block_depth(layer_names: Sequence[str]) -> int:
    """The shallowest prefix depth that splits the layers into more than one block (`model.{i}` for YOLO)."""
    longest = max((len(n.split(".")) for n in layer_names), default=1)
    for depth in range(1, longest + 1):
        if len({".".join(n.split(".")[:depth]) for n in layer_names}) > 1:
            return depth
    return longest


def find_units(model: nn.Module, unit: str = "layer", block_depth: Optional[int] = None) -> List[Unit]:
    """Every sweep unit of a quantized model, in module order.

    Only quantizers enabled now are swept (a quantizer the config disabled stays disabled throughout).
    unit: "quantizer" (each TensorQuantizer), "layer" (a module with its input and weight quantizers, default) or
    "block" (all layers under a module-path prefix of `block_depth` components; None picks the shallowest depth
    that gives more than one block, `model.{i}` for YOLOv5).
    """
    if unit not in UNIT_KINDS:
        raise UsageError(f"unknown unit {unit!r}; choose one of {UNIT_KINDS}")
    enabled = [(n, q) for n, q in named_quantizers(model) if q.is_enabled]
    if not enabled:
        raise UsageError("the model has no enabled quantizer to sweep: quantize it first (qdqtorch.quantize_model) "
                         "and check that the config does not ignore every layer")
    uncalibrated = uncalibrated_quantizers(model)
    if uncalibrated:
        raise UsageError(f"{len(uncalibrated)} enabled quantizer(s) have no amax, e.g. {uncalibrated[:3]}: calibrate "
                         "the model (qdqtorch.calibrate) or load a calibration before the sensitivity sweep")
    if unit == "quantizer":
        return [Unit(n, "quantizer", (n,), (owner_of(n),)) for n, _ in enabled]
    groups: Dict[str, List[str]] = {}
    for name, _ in enabled:
        groups.setdefault(owner_of(name), []).append(name)
    if unit == "layer":
        return [Unit(layer, "layer", tuple(qs), (layer,)) for layer, qs in groups.items()]
    depth = block_depth if block_depth is not None else auto_block_depth(list(groups))
    if depth < 1:
        raise UsageError(f"block depth must be >= 1, got {depth}")
    blocks: Dict[str, Tuple[List[str], List[str]]] = {}
    for layer, qs in groups.items():
        prefix = ".".join(layer.split(".")[:depth])
        quantizers, layers = blocks.setdefault(prefix, ([], []))
        quantizers.extend(qs)
        layers.append(layer)
    return [Unit(p, "block", tuple(qs), tuple(ls)) for p, (qs, ls) in blocks.items()]


class QuantizerSwitch:
    """Sets which of the swept quantizers are on, in place, and restores the starting states on `restore()`/exit.

    Quantizers not in any unit are never touched.
    """

    def __init__(self, model: nn.Module, units: Iterable[Unit]) -> None:
        wanted = {q for u in units for q in u.quantizers}
        self._quantizers: Dict[str, TensorQuantizer] = {n: q for n, q in named_quantizers(model) if n in wanted}
        missing = sorted(wanted - set(self._quantizers))
        if missing:
            raise UsageError(f"units name quantizers the model does not have: {missing[:5]}")
        self._saved = {n: q.snapshot() for n, q in self._quantizers.items()}

    @property
    def names(self) -> List[str]:
        """Names of every switched quantizer."""
        return list(self._quantizers)

    def set_enabled(self, enabled: Iterable[str]) -> None:
        """Enable exactly `enabled` among the swept quantizers and disable the others."""
        on = set(enabled)
        unknown = on - set(self._quantizers)
        if unknown:
            raise UsageError(f"not swept quantizer(s): {sorted(unknown)[:5]}")
        for name, q in self._quantizers.items():
            q.set_mode(enabled=name in on)

    def restore(self) -> None:
        """Back to the states found at construction."""
        for name, q in self._quantizers.items():
            q.restore(self._saved[name])

    def __enter__(self) -> "QuantizerSwitch":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
