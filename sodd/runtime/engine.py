"""Running predictors: per-model queue, dynamic batching, predictor instances, admission control.

Each loaded model version has one queue of images and one work loop per predictor instance
(Paddle predictors are not thread-safe). The loops run on the long-lived worker threads the
runner is given (`sodd.runtime.worker_threads`; the registry owns them), which pass from one model
version to the next. A worker takes the oldest image, adds images of the same shape that are
waiting — or arrive within `max_queue_delay` — up to `max_batch_size`, runs them as one batch and
splits the rows back per image. With `combine_requests` off, a batch holds images of one request
only (a DetectBatch), never images of different requests: on CPUs a batch costs as much per image
as single runs, so combining only makes requests wait for each other. Images whose client
cancelled or whose deadline passed are dropped before inference. A full queue refuses at once
(RESOURCE_EXHAUSTED); every accepted image gets a result or an error, never silence.

An optional *wide* predictor uses every core for one image. It runs only for a lone client: the
queue holds a single request, no other instance is busy, no other admitted request is being
prepared, and the last LONE_STREAK admissions each found the model idle. So a lone client gets the
latency of all cores, while under load the narrow instances (fewer threads each) run side by side
for throughput. The two kinds never run at the same time, so the cores are never oversubscribed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass

import numpy as np

from sodd.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from sodd.model.pipeline import rows_per_image
from sodd.model.preprocess import Prepared, batch_inputs
from sodd.plugins.protocol import Predictor
from sodd.runtime.worker_threads import WorkerThreads

# Admissions in a row that must find no other request in the model before the wide predictor may
# run. A lone client's requests never overlap; two clients' do, but now and then one arrives just
# after the other's answer, and when that one took the wide predictor the other waited behind it:
# two PicoDet-XS clients ran every request on the wide predictor, 29 images/s where two narrow
# instances give 44 (docs/benchmarks.md).
LONE_STREAK = 4


@dataclass(frozen=True)
class RunResult:
    """A raw run: the program's outputs for inputs batched by the caller."""

    outputs: list[np.ndarray]
    queue_seconds: float
    inference_seconds: float


@dataclass(frozen=True)
class ImageResult:
    """One image's raw box rows ([n, 6], original pixels) and how it was run."""

    rows: np.ndarray
    queue_seconds: float
    inference_seconds: float
    batch_size: int


class Admission:
    """Places a request holds in its model's budget; `release` gives them back, once."""

    def __init__(self, runner: ModelRunner, images: int) -> None:
        self._runner: ModelRunner | None = runner
        self.images = images

    def release(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner._release(self.images)


@dataclass(eq=False)
class _Job:
    future: Future
    enqueued: float
    deadline: float | None  # time.monotonic() deadline
    request: object  # the same object for all images of one submitted request
    prepared: Prepared | None = None  # one image, batched with others
    inputs: Mapping[str, np.ndarray] | None = None  # or a raw run, alone

    def batchable_with(self, other: _Job, combine_requests: bool) -> bool:
        return (self.prepared is not None and other.prepared is not None
                and (combine_requests or self.request is other.request)
                and self.prepared.image.shape == other.prepared.image.shape)


class ModelRunner:
    def __init__(self, predictors: Sequence[Predictor], max_pending: int, name: str, *, workers: WorkerThreads,
                 max_batch_size: int = 8, max_queue_delay: float = 0.0, combine_requests: bool = True,
                 wide: Predictor | None = None, observe_batch: Callable[[int], None] | None = None) -> None:
        self.predictors = list(predictors)
        self.predictor = self.predictors[0]
        self.wide = wide
        self.max_pending = max_pending
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.combine_requests = combine_requests
        # Told the number of images in each predictor run of requests (warm-up's raw runs are not).
        self._observe_batch = observe_batch
        self._queue: deque[_Job] = deque()
        self._admitted = 0  # network runs of requests inside the daemon (see admit)
        self._alone_streak = LONE_STREAK  # admissions in a row that found no other request admitted
        self._lock = threading.Lock()
        # Idle loops wait on their kind's condition and are woken only when they may take work:
        # waking every loop for every image (and again after every run) made the idle ones queue
        # for the GIL behind each answer. Loops growing a batch wait for any new image.
        self._narrow_wakeup = threading.Condition(self._lock)
        self._wide_wakeup = threading.Condition(self._lock)
        self._queue_grew = threading.Condition(self._lock)
        self._stopping = False
        self._running = 0  # batches on predictors now
        self._wide_running = False
        loops = [(p, False, f"infer-{name}-{i}") for i, p in enumerate(self.predictors)]
        if wide is not None:
            loops.append((wide, True, f"infer-{name}-wide"))
        self._loops = [workers.run(self._work, p, is_wide, loop_name) for p, is_wide, loop_name in loops]

    @property
    def all_predictors(self) -> list[Predictor]:
        return self.predictors + ([self.wide] if self.wide is not None else [])

    @property
    def pending(self) -> int:
        """Images waiting for a predictor."""
        return len(self._queue)

    def admit(self, images: int) -> Admission:
        """Hold places for a request's network runs from admission to answer, refusing at once when full.

        Counting from admission, not from the queue, keeps decoding and preprocessing bounded too:
        under overload the daemon answers RESOURCE_EXHAUSTED in microseconds instead of letting
        every stage's backlog grow. A request that could never fit is the caller's to refuse
        (INVALID_ARGUMENT), so this refusal always means "retry later".
        """
        with self._lock:
            if self._admitted + images > self.max_pending:
                raise ResourceExhausted(
                    f"the model is full ({self._admitted} network runs admitted, limit {self.max_pending}); "
                    "retry later")
            self._alone_streak = 0 if self._admitted else self._alone_streak + 1
            self._admitted += images
            self._wake()  # an image queued for the wide predictor is the narrow loops' now
        return Admission(self, images)

    def _release(self, images: int) -> None:
        with self._lock:
            self._admitted -= images

    # -- submitting ------------------------------------------------------------------------

    def _enqueue(self, jobs: list[_Job]) -> None:
        with self._lock:
            if self._stopping:
                raise Unavailable("the model version is shutting down; retry")
            if len(self._queue) + len(jobs) > self.max_pending:
                raise ResourceExhausted(
                    f"the model's queue is full ({len(self._queue)} images waiting, limit {self.max_pending}); "
                    "retry later")
            self._queue.extend(jobs)
            self._queue_grew.notify_all()
            self._wake()

    def submit(self, prepared: Sequence[Prepared], deadline: float | None = None) -> list[Future]:
        now, request = time.perf_counter(), object()
        jobs = [_Job(Future(), now, deadline, request, prepared=p) for p in prepared]
        self._enqueue(jobs)
        return [j.future for j in jobs]

    def run_images_sync(self, prepared: Sequence[Prepared], deadline: float | None = None) -> list[ImageResult]:
        return [f.result() for f in self.submit(prepared, deadline)]

    def _submit_raw(self, inputs: Mapping[str, np.ndarray]) -> Future:
        job = _Job(Future(), time.perf_counter(), None, object(), inputs=inputs)
        self._enqueue([job])
        return job.future

    def run_sync(self, inputs: Mapping[str, np.ndarray]) -> RunResult:
        return self._submit_raw(inputs).result()

    # -- working ---------------------------------------------------------------------------

    def _lone_request(self) -> bool:
        """True when the wide predictor should take the queue: one request waits, nothing runs, no
        other admitted request is on its way to the queue, and the client has been alone a while."""
        if self.wide is None or self._running or not self._queue:
            return False
        if self._admitted > len(self._queue) or self._alone_streak < LONE_STREAK:
            return False
        first = self._queue[0].request
        return all(job.request is first for job in self._queue)

    def _may_take(self, wide: bool) -> bool:
        if not self._queue or self._wide_running:
            return False
        return self._lone_request() if wide else not self._lone_request()

    def _wake(self) -> None:
        """Wake the idle loops that may take the queue's work now (the lock is held)."""
        if not self._queue or self._wide_running:
            return
        if self._lone_request():
            self._wide_wakeup.notify()
        else:
            self._narrow_wakeup.notify(len(self._queue))

    def _next_batch(self, wide: bool) -> list[_Job] | None:
        wakeup = self._wide_wakeup if wide else self._narrow_wakeup
        with self._lock:
            while not self._may_take(wide):
                if self._stopping:
                    return None
                wakeup.wait()
            self._running += 1
            self._wide_running = wide
            batch = [self._queue.popleft()]
            if batch[0].inputs is not None:
                return batch
            until = time.perf_counter() + self.max_queue_delay
            while len(batch) < self.max_batch_size:
                for job in list(self._queue):
                    if len(batch) == self.max_batch_size:
                        break
                    if job.batchable_with(batch[0], self.combine_requests):
                        self._queue.remove(job)
                        batch.append(job)
                remaining = until - time.perf_counter()
                if len(batch) == self.max_batch_size or remaining <= 0 or self._stopping:
                    break
                self._queue_grew.wait(remaining)
            return batch

    def _work(self, predictor: Predictor, wide: bool, name: str) -> None:
        threading.current_thread().name = name  # what a stack dump or py-spy shows
        while (batch := self._next_batch(wide)) is not None:
            try:
                now = time.monotonic()
                live = []
                for job in batch:
                    if not job.future.set_running_or_notify_cancel():
                        continue  # the client went away before its image ran
                    if job.deadline is not None and now > job.deadline:
                        job.future.set_exception(DeadlineExceeded("the deadline passed while the request was queued"))
                        continue
                    live.append(job)
                if live:
                    self._run(predictor, live)
            finally:
                with self._lock:
                    self._running -= 1
                    self._wide_running = False
                    self._wake()

    def _run(self, predictor: Predictor, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            if jobs[0].inputs is not None:
                outputs = predictor.run(jobs[0].inputs)
                jobs[0].future.set_result(RunResult(outputs, started - jobs[0].enqueued,
                                                    time.perf_counter() - started))
                return
            outputs = predictor.run(batch_inputs([j.prepared for j in jobs], predictor.input_names))
            elapsed = time.perf_counter() - started
            rows = rows_per_image(outputs, len(jobs))
            if self._observe_batch is not None:
                self._observe_batch(len(jobs))
            for job, image_rows in zip(jobs, rows, strict=True):
                job.future.set_result(ImageResult(image_rows, started - job.enqueued, elapsed, len(jobs)))
        except Exception as exc:  # noqa: BLE001 - the error belongs to these requests, not the worker
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            leftover = list(self._queue)
            self._queue.clear()
            for condition in (self._narrow_wakeup, self._wide_wakeup, self._queue_grew):
                condition.notify_all()
        for job in leftover:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(Unavailable("the model version was unloaded; retry"))
        wait(self._loops)
        for predictor in self.all_predictors:
            predictor.close()
