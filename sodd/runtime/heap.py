"""The daemon's use of the C heap (glibc malloc).

glibc gives a thread that meets contention a malloc arena of its own, up to eight per core, and
returns little of an arena to the OS once buffers of different lifetimes have shared it. The daemon
decodes images on gRPC threads while each hot swap loads predictors on others, so its RSS creeps
up with the arenas: on two cores, a 5-minute soak with a swap every 10 s grew 290 MiB with glibc's
defaults and 160 MiB with two arenas, at the same throughput. So `sodd serve` asks for one arena
per core (at least two), enough for the inference threads not to queue on malloc, unless
MALLOC_ARENA_MAX says otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import threading
from functools import cache

from sodd.plugins.devices import usable_cores

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # mallopt parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1
# Buffers at least this large get pages of their own that go back to the OS when freed. glibc's
# default threshold rises to the largest buffer freed (up to 32 MiB), after which every large
# request message and decoded frame lands in the heap and stays there: three refused 20 MB
# requests left 245 MiB behind. Network inputs (a 640x640 float32 image is 4.7 MiB) stay below it,
# so the hot path keeps reusing heap memory instead of faulting fresh pages in for every image.
LARGE_BUFFER_BYTES = 16 * 1024 * 1024
# Free memory kept at the top of the heap before glibc gives it back. Fixing the mmap threshold
# also stops glibc from raising this one with it, which leaves it at 128 KiB: every predictor run
# then freed its activations back to the OS and faulted them in again on the next, which made a
# PicoDet-XS request 40 % slower (53.7 -> 39.2 ms p50 with this value, one client, interleaved).
# Large requests still give their memory back: HeapTrimmer trims explicitly after them.
KEPT_FREE_BYTES = 64 * 1024 * 1024


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def default_arenas() -> int:
    return max(2, usable_cores())


def limit_arenas(count: int | None = None) -> int | None:
    """Cap glibc's malloc arenas (default: one per core, at least two); returns the cap in force,
    None where it can't be set.

    MALLOC_ARENA_MAX in the environment wins: glibc has applied it already and the operator chose it.
    Call before the daemon starts its threads, so that no thread has an arena of its own yet.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return int(os.environ["MALLOC_ARENA_MAX"])
    count = count or default_arenas()
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt") or libc.mallopt(_M_ARENA_MAX, count) != 1:
        log.debug("malloc arenas left to the C library (not glibc?)")
        return None
    return count


def return_large_buffers(threshold: int = LARGE_BUFFER_BYTES, kept_free: int = KEPT_FREE_BYTES) -> bool:
    """Fix glibc's mmap threshold (see LARGE_BUFFER_BYTES) and the free memory it keeps at the top
    of the heap (KEPT_FREE_BYTES); MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the
    environment win. True when the mmap threshold in force is ours."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    if not os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        libc.mallopt(_M_TRIM_THRESHOLD, kept_free)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    return libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1


def trim_heap() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise); no garbage collection."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def release_freed_memory() -> None:
    """Return freed heap pages to the OS so that RSS reflects unloads."""
    gc.collect()
    trim_heap()


class HeapTrimmer:
    """Trims the heap shortly after large requests end, on a thread of its own.

    A request's receive buffers and message are freed by gRPC after its handler returns, in many
    small pieces that no mmap threshold catches; so the trim waits `delay` seconds after the last
    large request was noted, and runs at most once per `delay`, whatever the request rate.
    """

    def __init__(self, delay: float = 0.2) -> None:
        self._delay = delay
        self._wanted = threading.Event()
        self._closed = False
        self.trims = 0
        self._thread = threading.Thread(target=self._run, name="heap-trim", daemon=True)
        self._thread.start()

    def note_large_request(self) -> None:
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._closed:
                return
            # Let the finished request's buffers go first; requests noted meanwhile share this trim.
            threading.Event().wait(self._delay)
            self._wanted.clear()
            trim_heap()
            self.trims += 1

    def close(self) -> None:
        self._closed = True
        self._wanted.set()
        self._thread.join(5)
