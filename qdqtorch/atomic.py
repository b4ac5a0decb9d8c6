"""Atomic output files: write to a temporary file in the same folder, fsync, rename over the target.

A crash, a full disk or Ctrl-C never leaves a truncated output behind (the previous version, if any, stays), the file
gets the normal permissions of a new file (0666 minus the umask), and a failure names the file it was writing.
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from .errors import OutputError

PathLike = Union[str, "os.PathLike[str]"]


def _temp_path(path: Path) -> Path:
    # same folder (rename stays on one filesystem), same suffix (writers that look at it), hidden, unique
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform/filesystem; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    """0666 minus the umask: what open() gives a new file (some writers, e.g. safetensors, create theirs 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


@contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that wants a file name (torch.onnx.export, onnx.save,
    safetensors); on success it is fsynced and renamed to `path`, on any failure removed."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = _temp_path(path)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"cannot write {path}: the writer produced no file")
        os.chmod(tmp, _default_mode())
        _fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    path = Path(path)
    with atomic_output(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    return path


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))
