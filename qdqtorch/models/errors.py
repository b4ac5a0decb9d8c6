"""Errors raised while loading a model, each naming the file and saying what to pass instead."""
from __future__ import annotations

from ..errors import QdqtorchError


class ModelLoadError(QdqtorchError, RuntimeError):
    """A checkpoint or model description could not be turned into a usable detector."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model spec names a file that is not on disk (and cannot be downloaded here)."""
