"""reuse_freed_memory: inside the block freed large tensors' pages are reused (few new page faults) and stay
resident; on exit they go back to the system. Faults and resident size are read from the kernel (getrusage,
/proc/self/statm), independent of the code under test."""
import os
import resource
import sys

import pytest
import torch

from qdqtorch import host_memory, reuse_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or host_memory._libc() is None,
                                reason="reuse_freed_memory acts on glibc's allocator (Linux) only")

NUMEL = 16 * 2**20  # 64 MiB of float32: far above glibc's mmap threshold
PAGES = NUMEL * 4 // 4096
ROUNDS = 12
# Default glibc: each cycle is a fresh mmap, faulted page by page (ROUNDS * PAGES faults). Reusing: the first
# cycles grow the heap, later ones fault (almost) nothing; half of ROUNDS * PAGES leaves room for stray re-faults.
REUSED = ROUNDS * PAGES * 0.5


def _faults(rounds: int = ROUNDS) -> int:
    """Minor page faults of `rounds` allocate-write-free cycles of one large tensor."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        x = torch.ones(NUMEL)  # writes every page
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_freed_pages_are_reused_inside_and_returned_on_exit():
    with reuse_freed_memory() as active:
        assert active is True
        assert _faults() < REUSED
        big = [torch.ones(NUMEL) for _ in range(3)]  # 192 MiB, then freed: kept by the process
        del big
        held = _resident_bytes()
    assert held - _resident_bytes() > 2 * NUMEL * 4  # handed back to the system on exit


def test_nested_blocks_keep_the_setting_until_the_outermost_exits():
    with reuse_freed_memory():
        with reuse_freed_memory():
            pass
        assert host_memory._depth == 1
        assert _faults() < REUSED  # the inner exit did not restore the defaults
    assert host_memory._depth == 0


def test_disabled_does_nothing():
    with reuse_freed_memory(enabled=False) as active:
        assert active is False
        assert host_memory._depth == 0


def test_works_as_a_decorator_on_every_call():
    @reuse_freed_memory()
    def faults() -> int:
        assert host_memory._depth == 1
        return _faults()

    assert faults() < REUSED
    assert faults() < REUSED
    assert host_memory._depth == 0
