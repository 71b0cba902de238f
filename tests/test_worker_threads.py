"""Worker threads outlive the loops they run, so hot swaps do not start new inference threads."""

from __future__ import annotations

import threading

import pytest

from sodd.runtime.engine import ModelRunner
from sodd.runtime.worker_threads import WorkerThreads
from tests.test_engine import GatedPredictor


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
    pool = WorkerThreads("t")
    old = ModelRunner([GatedPredictor(), GatedPredictor()], max_pending=8, name="m", workers=pool)
    for _ in range(5):
        new = ModelRunner([GatedPredictor(), GatedPredictor()], max_pending=8, name="m", workers=pool)
        old.close()
        old = new
    old.close()
    # Two loops per version, two versions at once: at most four threads however many swaps.
    assert pool.started <= 4
    pool.close(timeout=5)


def test_closing_ends_the_idle_threads_and_refuses_new_work() -> None:
    pool = WorkerThreads("closing")
    release = threading.Event()
    busy = pool.run(release.wait, 5)
    pool.run(int).result(timeout=5)  # a second thread, idle again
    pool.close(timeout=5)
    with pytest.raises(RuntimeError, match="closed"):
        pool.run(int)
    threads = {t.name: t for t in threading.enumerate() if t.name.startswith("closing-")}
    if "closing-2" in threads:  # it may still be on its way from its last task to idling
        threads["closing-2"].join(5)
    assert not threads.get("closing-2", threading.Thread()).is_alive()  # the idle one ended
    assert threads["closing-1"].is_alive()  # the busy one runs its loop on
    release.set()
    assert busy.result(timeout=5)
    threads["closing-1"].join(5)
    assert not threads["closing-1"].is_alive()  # and ends when the loop returns
