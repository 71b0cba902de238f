"""Worker threads outlive the loops they run, so hot swaps do not start new inference threads."""

from __future__ import annotations

import threading

import pytest

from sodd.runtime import engine
from sodd.runtime.worker_threads import WorkerThreads
from tests.test_engine import SlowPredictor


def test_an_idle_thread_is_reused_before_another_starts() -> None:
    pool = WorkerThreads("t")
    first = pool.run(threading.get_ident).result(timeout=5)
    second = pool.run(threading.get_ident).result(timeout=5)
    assert first == second and pool.started == 1


def test_loops_running_at_once_get_threads_of_their_own() -> None:
    pool = WorkerThreads("t")
    release = threading.Event()
    running = [pool.run(release.wait, 5) for _ in range(3)]
    assert pool.started == 3
    release.set()
    assert all(f.result(timeout=5) for f in running)
    pool.run(int).result(timeout=5)
    assert pool.started == 3


def test_an_exception_reaches_the_caller_and_the_thread_serves_on() -> None:
    pool = WorkerThreads("t")
    with pytest.raises(ZeroDivisionError):
        pool.run(lambda: 1 / 0).result(timeout=5)
    assert pool.run(lambda: 2).result(timeout=5) == 2 and pool.started == 1


def test_versions_that_follow_each_other_share_worker_threads() -> None:
    """What a hot swap does: the new version's runner starts, then the old one closes."""
    before = engine._WORKER_THREADS.started
    old = engine.ModelRunner([SlowPredictor(0), SlowPredictor(0)], max_pending=8, name="m")
    for _ in range(5):
        new = engine.ModelRunner([SlowPredictor(0), SlowPredictor(0)], max_pending=8, name="m")
        old.close()
        old = new
    old.close()
    # Two loops per version, two versions at once: at most four threads however many swaps.
    assert engine._WORKER_THREADS.started - before <= 4
