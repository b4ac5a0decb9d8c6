"""Loading a user's preprocessing hook given as "path/to/file.py:function" or "package.module:function"."""
from __future__ import annotations

from functools import cache
from typing import Callable

from ..errors import UsageError
from ..user_code import import_object


@cache
def load_hook(spec: str) -> Callable:
    """Import the hook function. It is called as ``fn(paths: list[str], settings: Preprocess) -> Tensor (B,C,H,W)``.

    Loading a hook executes the user's Python file, like importing any module.
    """
    fn = import_object(spec, "preprocess hook", files=True)
    if not callable(fn):
        raise UsageError(f"preprocess hook {spec!r}: {fn!r} is not a function")
    return fn
