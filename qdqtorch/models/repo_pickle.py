"""Load a whole-model pickle saved by a training repository (YOLOv5/YOLOv7 style `torch.save(ckpt)`).

Such a checkpoint stores the model's classes by name (e.g. `models.yolo.Model`), so unpickling imports them from the
repository it was saved from. Without a repository, YOLOv5 checkpoints (v6 `models.yolo.Model`, v7
`models.yolo.DetectionModel`) load through the pip-installed `yolov5` package, which is that repository packaged
as `yolov5.models.*` / `yolov5.utils.*`. Unpickling runs code from the checkpoint and from that repository: load
only files you trust.
"""
from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .errors import ModelLoadError

_REPO_HINT = "pass --repo PATH (the training repository the checkpoint was saved from)"
_PACKAGED = {"models", "utils"}  # top-level packages of the YOLOv5 repository, under `yolov5.` in its pip package
PACKAGE = "yolov5"


def _provided_modules(repo: Path) -> set[str]:
    """Top-level module names the repository provides (packages and .py files), minus standard-library names."""
    names = {p.stem for p in repo.glob("*.py")}
    names |= {p.name for p in repo.iterdir() if p.is_dir() and p.name.isidentifier() and any(p.glob("*.py"))}
    return names - set(getattr(sys, "stdlib_module_names", ()))


def _lives_in(module: types.ModuleType, repo: Path) -> bool:
    files = [getattr(module, "__file__", None)] + list(getattr(module, "__path__", []) or [])
    for f in files:
        if f and Path(f).resolve().is_relative_to(repo):
            return True
    return False


def _forget_conflicting(names: set[str], repo: Path) -> None:
    """Drop cached modules (e.g. another repository's `models`, `utils`) that would shadow this repository's."""
    for key in list(sys.modules):
        module = sys.modules[key]
        if key.split(".")[0] in names and module is not None and not _lives_in(module, repo):
            del sys.modules[key]


@contextmanager
def repository_on_path(repo: str | Path) -> Iterator[Path]:
    """Make `repo`'s modules importable (first on sys.path, shadowing modules cached from elsewhere) for a while.

    The repository's modules stay cached afterwards, so loaded models keep working and can be pickled again;
    loading from another repository later evicts them.
    """
    root = Path(repo).expanduser().resolve()
    if not root.is_dir():
        raise ModelLoadError(f"training repository not found: {repo} (resolved to {root}); pass --repo PATH, the "
                             "folder that holds the repository's `models/` package")
    _forget_conflicting(_provided_modules(root), root)
    entry = str(root)
    sys.path.insert(0, entry)
    importlib.invalidate_caches()
    try:
        yield root
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


class _Lookups:
    """Records the global whose import failed during unpickling, to name it in the error."""

    def __init__(self, packaged: bool = False) -> None:
        self.failed: tuple[str, str, Exception] | None = None
        self.packaged = packaged  # try `yolov5.<module>` when `<module>` (models.*, utils.*) is not importable
        self.used_package = False
        self.package_error: Exception | None = None

    def _from_package(self, module: str, name: str) -> Any:
        try:
            found = getattr(importlib.import_module(f"{PACKAGE}.{module}"), name)
        except Exception as exc:  # the package exists but its own imports (pandas, ...) may fail
            self.package_error = exc
            return None
        self.used_package = True
        return found

    def pickle_module(self) -> types.ModuleType:
        lookups = self

        class RecordingUnpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                try:
                    return super().find_class(module, name)
                except (ImportError, AttributeError) as exc:
                    if lookups.packaged and module.split(".")[0] in _PACKAGED:
                        found = lookups._from_package(module, name)
                        if found is not None:
                            return found
                    lookups.failed = (module, name, exc)
                    raise

        module = types.ModuleType("qdqtorch_recording_pickle")
        module.Unpickler = RecordingUnpickler
        module.load = pickle.load
        return module


def package_available() -> bool:
    """Is the pip `yolov5` package installed (without importing it)?"""
    return importlib.util.find_spec(PACKAGE) is not None


def _unpickle(path: Path, repo: Path | None, lookups: _Lookups) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=lookups.pickle_module())
    except (pickle.UnpicklingError, EOFError) as exc:
        raise ModelLoadError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc}); "
                             "is the file complete?") from exc
    except (ImportError, AttributeError) as exc:
        if lookups.failed is None:
            raise
        module, name, cause = lookups.failed
        wanted = f"{module}.{name}"
        missing = getattr(cause, "name", None) if isinstance(cause, ImportError) else None
        if missing and missing.split(".")[0] != module.split(".")[0]:
            where = f"the repository {repo}" if repo else "sys.path"
            raise ModelLoadError(
                f"{path}: importing `{wanted}` from {where} failed because that code needs the module `{missing}` "
                f"({cause}); install the training repository's requirements") from exc
        if lookups.package_error is not None:
            raise ModelLoadError(
                f"{path}: class `{wanted}` is not importable here, and importing it from the installed `{PACKAGE}` "
                f"package failed ({type(lookups.package_error).__name__}: {lookups.package_error}); install that "
                f"package's requirements, or {_REPO_HINT}") from exc
        if repo is None:
            hint = "" if lookups.packaged else f" (for YOLOv5 checkpoints, `pip install {PACKAGE}` also serves)"
            raise ModelLoadError(
                f"{path} is a whole-model pickle whose class `{wanted}` cannot be imported here ({cause}); "
                f"{_REPO_HINT}{hint}") from exc
        raise ModelLoadError(
            f"{path}: class `{wanted}` is not in the training repository {repo} ({cause}); "
            f"{_REPO_HINT}, the one whose code defines `{wanted}`") from exc


def _pick_model(obj: Any, path: Path) -> nn.Module:
    """The module inside a training checkpoint: its EMA weights when saved, else `model` (YOLOv5/YOLOv7 rule)."""
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        model = obj.get("ema") or obj.get("model")
        if isinstance(model, nn.Module):
            return model
        if all(isinstance(v, torch.Tensor) for v in obj.values()) and obj:
            raise ModelLoadError(f"{path} holds only a state_dict (weights without the architecture); build the model "
                                 "in your code, load the weights into it, and pass the nn.Module to load_model")
        raise ModelLoadError(f"{path}: checkpoint dict has no nn.Module under 'ema' or 'model' (keys: "
                             f"{sorted(map(str, obj))[:12]}); pass a whole-model checkpoint")
    raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a model or a checkpoint dict with 'model'")


def load_repo_pickle(path: Path, repo: str | Path | None = None) -> tuple[nn.Module, bool]:
    """Unpickle a training-repository checkpoint and return (its module, whether the `yolov5` package served).

    With `repo`, its modules are imported; without, `models.*`/`utils.*` classes that are not importable come from
    the pip `yolov5` package when it is installed. Runs the pickle's code: trusted files only.
    """
    if repo is None:
        lookups = _Lookups(packaged=package_available())
        return _pick_model(_unpickle(path, None, lookups), path), lookups.used_package
    with repository_on_path(repo) as root:
        return _pick_model(_unpickle(path, root, _Lookups()), path), False
