"""Optional dependencies: import one when a feature needs it, or say which extra to install."""
from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, package: str, extra: str, feature: str) -> ModuleType:
    """`import module`, or an ImportError naming the feature, the package and the `pip install` that adds it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{feature} needs {package}, which the base install leaves out: "
                          f"pip install -e \".[{extra}]\" (or pip install {package})") from None
