"""import_object / import_callable: the one loader of 'package.module:name' specs (and 'path/to/file.py:name') that
configs, settings and command lines use to name user code: module classes, preprocess hooks, factories, metrics."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Optional
from .errors import UsageError


def _load_file(path_text: str, spec: str, what: str) -> Any:
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path} (from {spec!r})")
    name = f"_qdqtorch_user_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"{what} {spec!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # lets the file use dataclasses/pickling of its own objects
    module_spec.loader.exec_module(module)
    return module


def import_object(spec: str, what: str, *, files: bool = False) -> Any:
    """The object `spec` names: 'package.module:name' (name may be dotted, 'module:Class.method'); with `files`, also
    'path/to/file.py:name', which runs that file like an import. Errors are one line naming `what` and the spec."""
    form = "'package.module:name'" + (" or 'path/to/file.py:name'" if files else "")
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UsageError(f"{what} {spec!r}: expected {form}")
    if files and (target.endswith(".py") or "/" in target or "\\" in target):
        obj = _load_file(target, spec, what)
    else:
        try:
            obj = importlib.import_module(target)
        except ImportError as exc:
            raise UsageError(f"{what} {spec!r}: cannot import module {target!r} ({exc}); is it on PYTHONPATH?") \
                from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{what} {spec!r}: {target} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def import_callable(spec: str, what: str) -> Callable:
    """'package.module:function' -> the function (a model factory, batch source or metric named on a command line)."""
    obj = import_object(spec, what)
    if not callable(obj):
        raise UsageError(f"{what} {spec!r}: {spec.rpartition(':')[2]!r} is not callable")
    return obj


def is_callable_spec(spec: Optional[str]) -> bool:
    """True for 'package.module:function' (not an existing path, a checkpoint or a yaml)."""
    return bool(spec) and ":" in str(spec) and not Path(str(spec)).exists() \
        and not str(spec).endswith((".pt", ".yaml", ".yml", ".safetensors"))
