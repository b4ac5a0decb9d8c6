"""The project's own error types: raised where bad input or a missing piece is detected, said in one line by the
scripts (anything else is a bug and keeps its traceback)."""
from __future__ import annotations


class QdqtorchError(Exception):
    """Base of every error that means "the input or the environment is wrong", not "qdqtorch has a bug"."""


class UsageError(QdqtorchError, ValueError):
    """A setting, config value or input file's content is wrong; the message names it and says what to pass."""


class MissingDependencyError(QdqtorchError, ImportError):
    """An optional package a requested feature needs is not installed; the message gives the install command."""


class OutputError(QdqtorchError, OSError):
    """An output file could not be written (unwritable folder, disk full); the message names the file."""


INSTALL_HINT = 'pip install -e ".[{extra}]" in the qdqtorch checkout'


def missing_dependency(package: str, feature: str, extra: str) -> MissingDependencyError:
    """The error for `package` missing when `feature` needs it, with an install command that works from a clone."""
    return MissingDependencyError(f"{feature} needs the `{package}` package, which is not installed: "
                                  f"{INSTALL_HINT.format(extra=extra)}")

