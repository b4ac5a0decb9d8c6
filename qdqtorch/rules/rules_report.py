"""RulesReport: what `apply_tensorrt_rules` tied, inserted, switched off and could not do."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..nn import TensorQuantizer


@dataclass
class TiedGroup:
    """One shared quantizer and every place that now uses it.

    `sites`: quantizer attributes now pointing at the shared object ("model.7.conv._input_quantizer") and module
    outputs the rules quantize ("model.6.cv3.act:output"); `reasons`: why these tensors share a scale (concat,
    maxpool, resize, shared-tensor, residual); `ops`: the ops that joined them ("cat@model.12").
    """

    name: str
    sites: List[str]
    reasons: List[str]
    ops: List[str] = field(default_factory=list)
    quantizer: Optional[TensorQuantizer] = field(default=None, repr=False, compare=False)

    @property
    def tied(self) -> bool:
        """True when more than one site shares the quantizer."""
        return len(self.sites) > 1

    def to_dict(self) -> dict:
        """JSON-able form (without the quantizer object)."""
        return {"name": self.name, "sites": list(self.sites), "reasons": list(self.reasons), "ops": list(self.ops)}


@dataclass
class RulesReport:
    """Result of `apply_tensorrt_rules`: every tied group, residual adds (whether TensorRT reads each shortcut as int8,
    and why), quantizers disabled, ops kept float on purpose (attention MatMuls), problems."""

    groups: List[TiedGroup] = field(default_factory=list)
    residual_adds: List[Dict[str, str]] = field(default_factory=list)
    disabled: List[Tuple[str, str]] = field(default_factory=list)  # (quantizer path, reason)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (what, why the rule could not be applied)
    float_ops: List[Tuple[str, str]] = field(default_factory=list)  # (op@module, why it stays float on purpose)
    stats: Dict[str, int] = field(default_factory=dict)

    @property
    def tied_groups(self) -> List[TiedGroup]:
        """Groups with more than one site."""
        return [g for g in self.groups if g.tied]

    def group_of(self, site: str) -> Optional[TiedGroup]:
        """The group holding a site (a quantizer path or "module:output"), None if untouched."""
        return next((g for g in self.groups if site in g.sites), None)

    def to_dict(self) -> dict:
        """JSON-able form for summaries."""
        return {"groups": [g.to_dict() for g in self.groups], "residual_adds": [dict(r) for r in self.residual_adds],
                "disabled": [list(d) for d in self.disabled], "skipped": [list(s) for s in self.skipped],
                "float_ops": [list(f) for f in self.float_ops], "stats": dict(self.stats)}

    def __str__(self) -> str:
        lines = [f"TensorRT rules: {len(self.tied_groups)} tied groups, {len(self.groups)} shared quantizers, "
                 f"{len(self.residual_adds)} residual adds, {len(self.disabled)} quantizers disabled, "
                 f"{len(self.float_ops)} ops kept float, {len(self.skipped)} skipped"]
        for g in self.groups:
            lines.append(f"  group {g.name} [{', '.join(g.reasons)}] ({len(g.sites)} sites): {', '.join(g.sites)}")
        for r in self.residual_adds:
            shortcut = "float" if r.get("shortcut") == "float" else f"{r.get('shortcut')} (by {r['quantized']})"
            lines.append(f"  residual add {r['add']}: shortcut {shortcut}; fused into conv: {r['fused']}; "
                         f"{r.get('why', '')}")
        for path, why in self.disabled:
            lines.append(f"  disabled {path}: {why}")
        for op, why in self.float_ops:
            lines.append(f"  kept float {op}: {why}")
        for what, why in self.skipped:
            lines.append(f"  WARNING skipped {what}: {why}")
        return "\n".join(lines)
