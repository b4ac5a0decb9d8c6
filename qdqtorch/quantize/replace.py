"""quantize_model: swap float layers for their quantized twins in place and report what happened."""
from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from torch import nn

from ..errors import UsageError
from ..descriptor import QuantDescriptor
from ..nn import TensorQuantizer
from .config import QuantConfig, resolve_config


@dataclass
class QuantReport:
    """What `quantize_model` replaced, what it left float and why, and which patterns matched nothing."""

    replaced: List[Tuple[str, str, str]] = field(default_factory=list)  # (name, float class, twin class)
    ignored: List[Tuple[str, str, str]] = field(default_factory=list)  # (name, class, matching pattern)
    overridden: Dict[str, List[str]] = field(default_factory=dict)  # name -> override patterns applied
    unmatched_ignore: Dict[str, List[str]] = field(default_factory=dict)  # pattern -> nearest module names
    unmatched_overrides: Dict[str, List[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-able form for summaries."""
        return {"replaced": [list(r) for r in self.replaced], "ignored": [list(r) for r in self.ignored],
                "overridden": self.overridden, "unmatched_ignore": self.unmatched_ignore,
                "unmatched_overrides": self.unmatched_overrides}

    def __str__(self) -> str:
        lines = [f"quantized {len(self.replaced)} layers, kept {len(self.ignored)} float"]
        lines += [f"  float: {name} ({cls}) matched {pattern!r}" for name, cls, pattern in self.ignored]
        lines += [f"  override: {name} <- {', '.join(p)}" for name, p in self.overridden.items()]
        for kind, unmatched in (("ignore", self.unmatched_ignore), ("override", self.unmatched_overrides)):
            for pattern, near in unmatched.items():
                lines.append(f"  WARNING {kind} pattern {pattern!r} matched no layer; nearest: {', '.join(near)}")
        return "\n".join(lines)


def _nearest(pattern: str, names: List[str], n: int = 3) -> List[str]:
    literal = re.sub(r"\\(.)", r"\1", pattern).rstrip("$").replace(".*", "")
    return difflib.get_close_matches(literal, names, n=n, cutoff=0.0)


def _descriptors(name: str, config: QuantConfig, twin: type) -> Tuple[QuantDescriptor, QuantDescriptor, List[str]]:
    """Input and weight descriptors for one layer after applying matching overrides in order."""
    input_fields, weight_fields = config.input.to_dict(), config.weight.to_dict()
    if issubclass(twin, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) and config.weight.axis == 0:
        weight_fields["axis"] = 1
    applied = []
    for entry in config.overrides:
        for pattern, fields in entry.items():
            if not re.match(pattern, name):
                continue
            applied.append(pattern)
            for key, value in fields.items():
                if key == "input":
                    input_fields.update(value)
                elif key == "weight":
                    weight_fields.update(value)
                else:
                    input_fields[key] = value
                    weight_fields[key] = value
    where = f"layer {name!r} (after overrides {applied})"
    return (QuantDescriptor.from_dict(input_fields, where + " input"),
            QuantDescriptor.from_dict(weight_fields, where + " weight"), applied)


def _ignored_by(name: str, module: nn.Module, config: QuantConfig) -> Optional[str]:
    if callable(config.ignore):
        return "<callable>" if config.ignore(name, module) else None
    return next((p for p in config.ignore if re.match(p, name)), None)


def name_quantizers(model: nn.Module) -> None:
    """Give every TensorQuantizer its dotted path as `name`, used in every message about it."""
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer):
            module.name = name


def quantize_model(model: nn.Module, config: Union[QuantConfig, Mapping[str, Any], str, None] = None) -> QuantReport:
    """Replace (in place) every layer of a configured type with its quantized twin, except ignored ones.

    Replaced layers share the float layer's parameters. Returns a `QuantReport`; patterns that matched nothing are
    reported with the nearest module names and warned about. A backend's Q/DQ placement rules (ties around Concat,
    residual Adds, ...) are a separate step, applied to the returned model by the layer above.
    """
    config = resolve_config(config)
    mapping = config.module_map()
    if type(model) in mapping:
        raise UsageError(f"quantize_model: the model itself is a {type(model).__name__}; wrap it in a container "
                         "(e.g. nn.Sequential) so it can be replaced in place")
    report = QuantReport()
    names = [n for n, _ in model.named_modules() if n]
    used_ignore, used_override = set(), set()
    twins: Dict[int, nn.Module] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            twin_cls = mapping.get(type(child))
            if twin_cls is None:
                continue
            if id(child) in twins:  # the same layer registered twice: reuse one twin
                setattr(module, child_name, twins[id(child)])
                continue
            pattern = _ignored_by(full, child, config)
            if pattern is not None:
                used_ignore.add(pattern)
                report.ignored.append((full, type(child).__name__, pattern))
                continue
            desc_in, desc_w, applied = _descriptors(full, config, twin_cls)
            used_override.update(applied)
            if applied:
                report.overridden[full] = applied
            twin = twin_cls.from_float(child, quant_desc_input=desc_in, quant_desc_weight=desc_w)
            twins[id(child)] = twin
            setattr(module, child_name, twin)
            report.replaced.append((full, type(child).__name__, twin_cls.__name__))
    order = {name: i for i, name in enumerate(names)}
    report.replaced.sort(key=lambda r: order.get(r[0], len(order)))
    report.ignored.sort(key=lambda r: order.get(r[0], len(order)))
    if not callable(config.ignore):
        for pattern in config.ignore:
            if pattern not in used_ignore:
                report.unmatched_ignore[pattern] = _nearest(pattern, names)
    for entry in config.overrides:
        for pattern in entry:
            if pattern not in used_override:
                report.unmatched_overrides[pattern] = _nearest(pattern, names)
    for kind, unmatched in (("ignore", report.unmatched_ignore), ("override", report.unmatched_overrides)):
        for pattern, near in unmatched.items():
            warnings.warn(f"quantize_model: {kind} pattern {pattern!r} matched no layer (re.match against dotted "
                          f"module paths); nearest names: {near}", stacklevel=2)
    name_quantizers(model)
    return report
