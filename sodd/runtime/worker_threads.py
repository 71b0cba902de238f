"""Long-lived daemon threads for the engines' work loops, reused from one model version to the next.

Paddle's oneDNN kernels keep state per thread. With a fresh thread for every instance of every
version, each hot swap left that state behind; reusing threads keeps it to the number of loops that
ever ran at once (the old and the new version side by side during a swap). The registry owns one
set of them and closes it at shutdown. They are daemon threads, so a loop that was never stopped
cannot keep the process from exiting.
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
        self._idle: list[tuple[queue.SimpleQueue[_Task | None], threading.Thread]] = []
        self._started = 0
        self._closed = False

    @property
    def started(self) -> int:
        """Threads started so far."""
        return self._started

    def run(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` on an idle thread, or on a new one when none is idle."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self._prefix} worker threads are closed")
            if self._idle:
                inbox, _ = self._idle.pop()  # the most recently idle: keeps the set of threads in use small
            else:
                inbox = queue.SimpleQueue()
                self._started += 1
                threading.Thread(target=self._serve, args=(inbox,), name=f"{self._prefix}-{self._started}",
                                 daemon=True).start()
        inbox.put((future, fn, args))
        return future

    def _serve(self, inbox: queue.SimpleQueue[_Task | None]) -> None:
        thread = threading.current_thread()
        while (task := inbox.get()) is not None:
            future, fn, args = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - the caller gets it from the future
                    future.set_exception(exc)
            del task, future, fn, args  # hold nothing of the finished loop while idle
            with self._lock:
                if self._closed:
                    return
                self._idle.append((inbox, thread))

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work and end the idle threads (waiting up to `timeout` for each); a thread still
        running a loop ends when that loop returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for inbox, _ in idle:
            inbox.put(None)
        for _, thread in idle:
            thread.join(timeout)
