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
from functools import cache

from sodd.devices import usable_cores

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h


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


def release_freed_memory() -> None:
    """Return freed heap pages to the OS so that RSS reflects unloads (glibc keeps them otherwise)."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
