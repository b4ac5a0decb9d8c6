"""`reuse_freed_memory`: keep CPU memory that torch frees inside the process, so repeated evaluations stop
page-faulting.

glibc serves every allocation above 32 MiB with a fresh `mmap` and unmaps it on free, so each large activation
tensor of every forward pass costs the kernel a page fault (and zeroing) per 4 KiB page. On a 640 px batch of 16
that is millions of faults per evaluation, often more system time than compute (measured in BENCHMARKS.md). Serving
large blocks from the heap and never trimming it lets the next pass reuse the same pages. The setting is
process-wide, so it is a context manager that restores glibc's defaults and returns the memory on exit.
"""
from __future__ import annotations

import ctypes
import functools
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

# mallopt parameters (malloc.h) and glibc's defaults for the two we change
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_lock = threading.Lock()
_depth = 0


@functools.cache
def _libc() -> Optional[ctypes.CDLL]:
    """The process's C library if it is glibc (the only one whose mallopt this tunes), else None."""
    try:
        libc = ctypes.CDLL(None)  # symbols already loaded into the process: no library search, no subprocess
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None


@contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, large CPU tensors reuse freed heap memory instead of fresh pages (glibc only; nested
    uses are fine). Yields whether it is in effect; elsewhere (not glibc, or `enabled=False`) it does nothing.

    Memory freed inside the block stays with the process until the block ends, so the peak resident size of the
    block is kept until then.
    """
    global _depth
    libc = _libc() if enabled else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)                 # large blocks come from the heap, not mmap
            libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1)  # and the heap is not shrunk on free
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
