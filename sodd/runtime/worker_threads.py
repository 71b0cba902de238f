"""Long-lived daemon threads for the engines' work loops, reused from one model version to the next.

Paddle's oneDNN kernels keep state per thread. With a fresh thread for every instance of every
version, each hot swap left that state behind; reusing threads keeps it to the number of loops that
ever ran at once (the old and the new version side by side during a swap). The threads are daemon
threads, like the per-version threads they replace, so a loop that was never stopped cannot keep
the process from exiting.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_Task = tuple[Future, Callable[..., Any], tuple[Any, ...]]


class WorkerThreads:
    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Task]] = []  # the inbox of each idle thread
        self._started = 0

    @property
    def started(self) -> int:
        """Threads started so far (they never end)."""
        return self._started

    def run(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` on an idle thread, or on a new one when none is idle."""
        future: Future = Future()
        with self._lock:
            if self._idle:
                inbox = self._idle.pop()  # the most recently idle: keeps the set of threads in use small
            else:
                inbox = queue.SimpleQueue()
                self._started += 1
                threading.Thread(target=self._serve, args=(inbox,), name=f"{self._prefix}-{self._started}",
                                 daemon=True).start()
        inbox.put((future, fn, args))
        return future

    def _serve(self, inbox: queue.SimpleQueue[_Task]) -> None:
        while True:
            future, fn, args = inbox.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - the caller gets it from the future
                    future.set_exception(exc)
            del future, fn, args  # hold nothing of the finished loop while idle
            with self._lock:
                self._idle.append(inbox)
