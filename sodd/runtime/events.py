"""What happens to model versions, and who is told: the states a version passes through and the
listeners (health, metrics, the servicer's streams) that follow them.

Every event is logged (FAILED as a warning) and then given to each listener on the thread that
caused it: loading threads, unload threads, or the event loop. A listener that must reach an event
loop schedules its work there itself.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Model lifecycle lines keep the logger name operators filter on (docs/metrics.md).
log = logging.getLogger("sodd.runtime.registry")


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"
    UNLOADED = "unloaded"


@dataclass(frozen=True)
class ModelEvent:
    name: str
    version: int
    state: ModelState
    reason: str = ""
    device: str = ""
    time: float = field(default_factory=time.time)


Listener = Callable[[ModelEvent], None]


class ModelEvents:
    """The listeners of model events, and telling them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def emit(self, event: ModelEvent) -> None:
        level = logging.WARNING if event.state is ModelState.FAILED else logging.INFO
        log.log(level, "model %s version %d: %s%s%s", event.name, event.version, event.state.value,
                f" on {event.device}" if event.device else "", f" ({event.reason})" if event.reason else "")
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)
