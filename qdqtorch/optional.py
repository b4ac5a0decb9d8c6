"""Optional dependencies: import one when a feature needs it, or say which extra to install."""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import missing_dependency


def require(module: str, package: str, extra: str, feature: str) -> ModuleType:
    """`import module`, or a MissingDependencyError naming the feature, the package and the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_dependency(package, feature, extra) from None


def check_installed(module: str, package: str, extra: str, feature: str) -> None:
    """Fail now, before any heavy work, when `module` (needed for `feature`) is not importable; imports nothing."""
    if importlib.util.find_spec(module) is None:
        raise missing_dependency(package, feature, extra)
