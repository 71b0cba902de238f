"""Running predictors: one thread per predictor, with a bound on how many requests may wait.

Paddle predictors are not thread-safe, so each one is driven from a single worker thread; the
asyncio server never blocks on it. A full queue refuses at once (RESOURCE_EXHAUSTED) instead of
letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from sodd.errors import ResourceExhausted
from sodd.plugin import Predictor


@dataclass(frozen=True)
class RunResult:
    outputs: list[np.ndarray]
    queue_seconds: float
    inference_seconds: float


class ModelRunner:
    def __init__(self, predictor: Predictor, max_pending: int, name: str) -> None:
        self.predictor = predictor
        # Told the number of images in each predictor run (metrics set it once the model serves).
        self.observe_batch: Callable[[int], None] | None = None
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")

    @property
    def pending(self) -> int:
        return self._pending

    def _admit(self) -> None:
        with self._lock:
            if self._pending >= self.max_pending:
                raise ResourceExhausted(
                    f"the model's queue is full ({self.max_pending} requests waiting); retry later"
                )
            self._pending += 1

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1

    def _timed_run(self, inputs: Mapping[str, np.ndarray], submitted: float) -> RunResult:
        started = time.perf_counter()
        outputs = self.predictor.run(inputs)
        if self.observe_batch is not None and inputs:
            self.observe_batch(len(next(iter(inputs.values()))))
        return RunResult(outputs, started - submitted, time.perf_counter() - started)

    async def run(self, inputs: Mapping[str, np.ndarray]) -> RunResult:
        self._admit()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._timed_run, inputs, time.perf_counter())
        finally:
            self._release()

    def run_sync(self, inputs: Mapping[str, np.ndarray]) -> RunResult:
        self._admit()
        try:
            return self._executor.submit(self._timed_run, inputs, time.perf_counter()).result()
        finally:
            self._release()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.predictor.close()
