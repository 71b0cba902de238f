"""The daemon's use of the C heap (glibc malloc).

glibc gives a thread that meets contention a malloc arena of its own, up to eight per core, and
returns little of an arena to the OS once buffers of different lifetimes have shared it. The daemon
decodes images on gRPC threads while each hot swap loads predictors on others, so its RSS creeps
up with the arenas: in a 5-minute soak with a swap every 10 s it grew 290 MiB with glibc's defaults
and 160 MiB with two arenas, at the same throughput. So `sodd serve` asks for two arenas unless
MALLOC_ARENA_MAX says otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
from functools import cache

log = logging.getLogger(__name__)

DEFAULT_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def limit_arenas(count: int = DEFAULT_ARENAS) -> int | None:
    """Cap glibc's malloc arenas at `count`; returns the cap in force, None where it can't be set.

    MALLOC_ARENA_MAX in the environment wins: glibc has applied it already and the operator chose it.
    Call before the daemon starts its threads, so that no thread has an arena of its own yet.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return int(os.environ["MALLOC_ARENA_MAX"])
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt") or libc.mallopt(_M_ARENA_MAX, count) != 1:
        log.debug("malloc arenas left to the C library (not glibc?)")
        return None
    return count


def release_freed_memory() -> None:
    """Return freed heap pages to the OS so that RSS reflects unloads (glibc keeps them otherwise)."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
