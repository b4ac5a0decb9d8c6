"""QuantConfig: which modules get quantized twins, with which descriptors, which stay float. Plain data (YAML/JSON)."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence, Union

from torch import nn

from ..errors import UsageError
from ..atomic import atomic_write_text
from ..descriptor import QUANT_DESC_8BIT_CONV_WEIGHT_PER_CHANNEL, QUANT_DESC_8BIT_PER_TENSOR, QuantDescriptor
from ..fieldtypes import check_field_types
from ..nn import QUANT_TWINS, WEIGHTED_TYPES
from ..user_code import import_object

IgnoreSpec = Union[str, Sequence[str], Callable[[str, nn.Module], bool], None]
_DESC_FIELDS = {f.name for f in dataclasses.fields(QuantDescriptor)}


def _resolve_class(spec: Union[str, type], what: str) -> type:
    """A class from a torch.nn name ("Conv2d"), a qdqtorch.nn name ("QuantConv2d") or "package.module:Class"."""
    if isinstance(spec, type):
        return spec
    if ":" in spec:
        return import_object(spec, what)
    from .. import nn as qnn
    for namespace in (nn, qnn):
        if hasattr(namespace, spec):
            return getattr(namespace, spec)
    raise UsageError(f"{what}: unknown module class {spec!r}; use a torch.nn / qdqtorch.nn class name or "
                     "'package.module:Class'")


def _check_override(entry: Any, index: int) -> Dict[str, Dict[str, Any]]:
    if not isinstance(entry, Mapping) or not entry:
        raise UsageError(f"QuantConfig.overrides[{index}]: expected {{regex: {{descriptor fields}}}}, got {entry!r}")
    for pattern, fields in entry.items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"QuantConfig.overrides[{index}]: invalid regex {pattern!r}: {exc}") from None
        if not isinstance(fields, Mapping):
            raise UsageError(f"QuantConfig.overrides[{index}][{pattern!r}]: expected a mapping of descriptor fields")
        for key, value in fields.items():
            if key in ("input", "weight"):
                bad = set(value) - _DESC_FIELDS if isinstance(value, Mapping) else {"<not a mapping>"}
            else:
                bad = {key} - _DESC_FIELDS
            if bad:
                raise UsageError(f"QuantConfig.overrides[{index}][{pattern!r}]: unknown field(s) {sorted(bad)}; use "
                                 f"descriptor fields {sorted(_DESC_FIELDS)}, optionally under 'input' or 'weight'")
    return {k: dict(v) for k, v in entry.items()}


@dataclass
class QuantConfig:
    """What `quantize_model` does.

    - `input` / `weight`: descriptors of the input and weight quantizers of every replaced layer. `weight.axis` is
      written for the Conv/Linear layout (0 = output channel); ConvTranspose twins get their output-channel axis 1.
    - `modules`: float module classes to replace (names like "Conv2d", "MaxPool2d"), or a mapping from float class
      to quantized twin class ("package.module:Class" for your own).
    - `ignore`: layers kept float: a regex or list of regexes matched with `re.match` against dotted module paths,
      or a callable `(name, module) -> bool`.
    - `overrides`: ordered list of `{regex: {descriptor fields}}`; fields apply to both quantizers, or only to one
      under an `input:` / `weight:` key; later entries win.
    """

    input: QuantDescriptor = QUANT_DESC_8BIT_PER_TENSOR
    weight: QuantDescriptor = QUANT_DESC_8BIT_CONV_WEIGHT_PER_CHANNEL
    modules: Union[Sequence[str], Mapping[str, str]] = field(default_factory=lambda: list(WEIGHTED_TYPES))
    ignore: IgnoreSpec = field(default_factory=list)
    overrides: List[Dict[str, Dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.input = QuantDescriptor.from_dict(self.input, "QuantConfig.input")
        self.weight = QuantDescriptor.from_dict(self.weight, "QuantConfig.weight")
        if isinstance(self.ignore, str):
            self.ignore = [self.ignore]
        elif self.ignore is None:
            self.ignore = []
        if not callable(self.ignore):
            self.ignore = list(self.ignore)
            for pattern in self.ignore:
                if not isinstance(pattern, str):
                    raise UsageError(f"QuantConfig.ignore: expected regex strings, got {pattern!r}")
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise UsageError(f"QuantConfig.ignore: invalid regex {pattern!r}: {exc}") from None
        self.overrides = [_check_override(entry, i) for i, entry in enumerate(self.overrides or [])]
        self.module_map()  # validate class names now, not halfway through replacement

    def module_map(self) -> Dict[type, type]:
        """Float class -> quantized twin class."""
        if isinstance(self.modules, Mapping):
            return {_resolve_class(k, "QuantConfig.modules"): _resolve_class(v, "QuantConfig.modules")
                    for k, v in self.modules.items()}
        mapping = {}
        for name in self.modules:
            float_cls = _resolve_class(name, "QuantConfig.modules")
            if float_cls not in QUANT_TWINS:
                raise UsageError(f"QuantConfig.modules: no built-in quantized twin for {name!r}; built-ins: "
                                 f"{sorted(c.__name__ for c in QUANT_TWINS)}; map it to your own class instead")
            mapping[float_cls] = QUANT_TWINS[float_cls]
        return mapping

    # ---- plain-data round trip ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON/YAML-able dict (a callable `ignore` cannot be serialised)."""
        if callable(self.ignore):
            raise UsageError("QuantConfig.to_dict: a callable `ignore` cannot be written to a file; use regexes")
        modules = dict(self.modules) if isinstance(self.modules, Mapping) else list(self.modules)
        return {"input": self.input.to_dict(), "weight": self.weight.to_dict(), "modules": modules,
                "ignore": list(self.ignore), "overrides": [dict(o) for o in self.overrides]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "QuantConfig") -> "QuantConfig":
        """Build from a dict, rejecting unknown keys."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(valid)}")
        check_field_types(cls, data, where)
        try:
            return cls(**dict(data))
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{where}: {exc}") from None

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "QuantConfig":
        """Read a YAML or JSON file holding the dict form (or a `quant:` section of a larger config)."""
        data = load_config_file(path)
        return cls.from_dict(data.get("quant", data), where=str(path))

    def save(self, path: Union[str, Path]) -> None:
        """Write the dict form as YAML (.yaml/.yml) or JSON."""
        write_config_file(self.to_dict(), path)


def load_config_file(path: Union[str, Path]) -> dict:
    """A YAML/JSON config file as a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as exc:  # yaml/json syntax errors carry line numbers; keep them
        raise UsageError(f"{path}: cannot parse config: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def write_config_file(data: Mapping[str, Any], path: Union[str, Path]) -> None:
    """Write a dict as YAML (.yaml/.yml) or JSON (anything else)."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml
        atomic_write_text(path, yaml.safe_dump(dict(data), sort_keys=False))
    else:
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def resolve_config(config: Union["QuantConfig", Mapping[str, Any], str, Path, None]) -> "QuantConfig":
    """Accept a QuantConfig, a dict or a file path."""
    if config is None:
        return QuantConfig()
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, (str, Path)):
        return QuantConfig.from_file(config)
    if isinstance(config, Mapping):
        return QuantConfig.from_dict(config)
    raise TypeError(f"quantize_model: config must be a QuantConfig, dict or path, got {type(config).__name__}")

