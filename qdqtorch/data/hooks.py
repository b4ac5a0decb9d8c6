"""Loading a user's preprocessing hook given as "path/to/file.py:function" or "package.module:function"."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..errors import UsageError


@lru_cache(maxsize=None)
def load_hook(spec: str) -> Callable:
    """Import the hook function. It is called as ``fn(paths: list[str], settings: Preprocess) -> Tensor (B,C,H,W)``.

    Loading a hook executes the user's Python file, like importing any module.
    """
    target, sep, func_name = spec.rpartition(":")
    if not sep or not target or not func_name:
        raise UsageError(f"preprocess hook {spec!r} must look like 'path/to/file.py:function'")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"preprocess hook file not found: {path} (from hook {spec!r})")
        mod_name = f"_qdqtorch_hook_{abs(hash(str(path)))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module      # lets the file use dataclasses/pickling of its own objects
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise AttributeError(f"preprocess hook {spec!r}: {target} has no function {func_name!r}")
    return fn
