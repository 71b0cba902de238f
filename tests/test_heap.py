"""sodd serve caps glibc's malloc arenas (unless the operator chose a number) and keeps the heap's
free memory from being handed back and faulted in again on every predictor run."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from sodd.runtime import heap


def test_the_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "6")
    assert heap.limit_arenas() == 6


def test_one_arena_per_core_and_at_least_two(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setattr(heap, "usable_cores", lambda: 1)
    assert heap.default_arenas() == 2
    monkeypatch.setattr(heap, "usable_cores", lambda: 16)
    assert heap.default_arenas() == 16
    # glibc (these machines) takes the setting; elsewhere the call says it could not.
    assert heap.limit_arenas(3) in (3, None)


# In a fresh interpreter: 24 blocks of 1 MiB (under the mmap threshold, so in the heap) freed
# last-first, as a predictor run's activations are; prints how far the resident set fell.
FREED_AT_THE_TOP = """
import ctypes, sys
from sodd.runtime import heap
from sodd.tools.daemon_process import rss_bytes
if sys.argv[1] == "daemon":
    heap.return_large_buffers()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(1 << 20) for _ in range(24)]
for block in blocks:
    ctypes.memset(block, 1, 1 << 20)
before = rss_bytes("self")
for block in reversed(blocks):
    libc.free(block)
print((before - rss_bytes("self")) >> 20)
"""


def rss_fall_mib(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", FREED_AT_THE_TOP, mode], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    return int(run.stdout.strip())


def test_the_daemon_keeps_freed_heap_memory_for_the_next_run() -> None:
    if not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.skip("not glibc")
    assert rss_fall_mib("daemon") <= 2, "freed heap memory went back to the OS at once"
