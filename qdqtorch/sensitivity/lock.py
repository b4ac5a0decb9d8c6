"""One sweep per journal: a second sweep on the same output folder is refused instead of redoing every evaluation.

The lock is an advisory `flock` on a small file beside the journal (released by the OS when the process dies, so a
killed sweep never leaves a stale lock); where `fcntl` does not exist, an O_EXCL file holding the pid, taken over
when that pid is gone. Re-entrant within one process (the script takes it before the heavy setup, the sweep again).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Union

from ..errors import UsageError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

_HELD: Dict[Path, int] = {}   # lock path -> depth, in this process


class SweepLockedError(UsageError):
    """Another live process is sweeping into the same output folder."""


def _owner(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return "another process"
    return f"process {pid}" if pid else "another process"


def _refuse(path: Path, journal: str) -> SweepLockedError:
    return SweepLockedError(f"{path.parent} is in use by another sweep ({_owner(path)} is writing {journal}); wait "
                            "for it to finish, or give this one another --out (shards: --shard K/N write separate "
                            "journals)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _acquire(path: Path, journal: str) -> int:
    if fcntl is not None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refuse(path, journal) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _pid_alive(pid):
                raise _refuse(path, journal) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd
    raise _refuse(path, journal)


@contextmanager
def sweep_lock(out_dir: Union[str, Path], journal: str) -> Iterator[Path]:
    """Hold the lock of `out_dir/journal` for the duration; raise SweepLockedError when another sweep holds it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = (out_dir / f".{journal}.lock").resolve()
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield path
        finally:
            _HELD[path] -= 1
        return
    fd = _acquire(path, journal)
    _HELD[path] = 1
    try:
        yield path
    finally:
        del _HELD[path]
        if fcntl is None:
            path.unlink(missing_ok=True)
        os.close(fd)  # closing releases the flock
