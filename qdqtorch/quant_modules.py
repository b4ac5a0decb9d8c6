"""pytorch-quantization compatibility: `initialize()` makes torch.nn layer classes build quantized twins.

This is the one place qdqtorch patches classes, and only between `initialize()` and `deactivate()` (or inside
`with quant_modules.initialize():`). Prefer `qdqtorch.quantize_model(model, config)`, which needs no patching.
"""
from __future__ import annotations

import importlib
from typing import List, Optional, Tuple

from .descriptor import QuantDescriptor
from .nn import POOLING_TYPES, QUANT_TWINS, WEIGHTED_TYPES

_patched: List[Tuple[object, str, type]] = []  # (namespace, attribute, original)
_NAMESPACES = ("torch.nn", "torch.nn.modules.conv", "torch.nn.modules.linear", "torch.nn.modules.pooling")


def _with_defaults(twin: type, quant_desc_input: Optional[QuantDescriptor],
                   quant_desc_weight: Optional[QuantDescriptor]) -> type:
    """A subclass of `twin` whose constructor fills in the given descriptors."""
    def __init__(self, *args, **kwargs):
        if quant_desc_input is not None:
            kwargs.setdefault("quant_desc_input", quant_desc_input)
        if quant_desc_weight is not None and "Pool" not in twin.__name__:
            kwargs.setdefault("quant_desc_weight", quant_desc_weight)
        twin.__init__(self, *args, **kwargs)
    return type(twin.__name__, (twin,), {"__init__": __init__, "__module__": twin.__module__,
                                         "__qualname__": twin.__qualname__})


class _Active:
    """Returned by `initialize()`: `deactivate()` on context exit."""

    def __enter__(self) -> "_Active":
        return self

    def __exit__(self, *exc) -> None:
        deactivate()


def initialize(quant_desc_input: Optional[QuantDescriptor] = None, quant_desc_weight: Optional[QuantDescriptor] = None,
               types: Tuple[str, ...] = WEIGHTED_TYPES + POOLING_TYPES) -> _Active:
    """Patch torch.nn so that layers constructed from now on are quantized twins (like pytorch-quantization)."""
    if _patched:
        deactivate()
    originals = {cls.__name__: cls for cls in QUANT_TWINS if cls.__name__ in types}
    patches = {name: _with_defaults(QUANT_TWINS[cls], quant_desc_input, quant_desc_weight)
               for name, cls in originals.items()}
    for namespace_name in _NAMESPACES:
        namespace = importlib.import_module(namespace_name)
        for name, patch in patches.items():
            if getattr(namespace, name, None) is originals[name]:
                _patched.append((namespace, name, originals[name]))
                setattr(namespace, name, patch)
    return _Active()


def deactivate() -> None:
    """Undo `initialize()`: torch.nn classes are the float ones again."""
    while _patched:
        namespace, name, original = _patched.pop()
        setattr(namespace, name, original)
