"""Background tasks that are owned: referenced until done, failures logged, cancelled on close.

asyncio keeps only a weak reference to a task, so a fire-and-forget `create_task` can be collected
mid-run, and its exception is reported (if ever) only when it is collected. Everything the daemon
starts in the background goes through a `TaskSet` owned by whoever started it, which cancels and
awaits what is left when it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskSet:
    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` on the running loop; must be called from the loop's thread."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def spawn_threadsafe(self, loop: asyncio.AbstractEventLoop,
                         coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """From any thread: run `coro_fn()` on `loop` (an event from a loading thread, say)."""
        loop.call_soon_threadsafe(lambda: self.spawn(coro_fn()))

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: background task failed", self._name, exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
