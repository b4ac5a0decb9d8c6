"""'package.module:function' specs: a model factory, a batch source or a metric named on the command line."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Optional


def is_callable_spec(spec: Optional[str]) -> bool:
    """True for 'package.module:function' (not an existing path, a checkpoint or a yaml)."""
    return bool(spec) and ":" in str(spec) and not Path(str(spec)).exists() \
        and not str(spec).endswith((".pt", ".yaml", ".yml"))


def import_callable(spec: str, what: str = "metric") -> Callable:
    """'package.module:function' -> the function, with an error saying what is wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} {spec!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r} ({exc}); is it on PYTHONPATH?") \
            from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{what} {spec!r}: {attr!r} is not callable")
    return obj
