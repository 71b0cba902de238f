"""The serving engine: dynamic batching, admission, deadlines, cancellation, and DetectStream."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from sodd_client import Client

from sodd.config.schema import ModelConfig, ServeConfig
from sodd.errors import DeadlineExceeded, ResourceExhausted
from sodd.model.modeldir import ModelDir
from sodd.model.preprocess import Prepared
from sodd.plugins.devices import parse_devices
from sodd.plugins.protocol import DeviceInfo
from sodd.runtime.detection import DetectOptions, Detector, ImageInput, Limits
from sodd.runtime.engine import LONE_STREAK, ModelRunner
from sodd.runtime.events import ModelEvent, ModelState
from sodd.runtime.manager import ModelManager
from sodd.runtime.registry import ModelRegistry
from sodd.runtime.worker_threads import WorkerThreads
from sodd.serving.service import DetectorService
from sodd.tools.fuzzing import FakeContext, write_model_dir
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import start_daemon

WAIT = 10.0  # seconds any event of these tests may take on a loaded machine before the test fails


class GatedPredictor:
    """One box per image (score = the image's first pixel). Each run waits until `release` is set,
    so a test decides when the predictor is busy; `entered` says a run has started."""

    input_names = ("image", "scale_factor")
    notes = ""

    def __init__(self, name: str = "p", on_run=None) -> None:  # noqa: ANN001 - a callback
        self.name = name
        self.on_run = on_run
        self.batches: list[int] = []
        self.seen: list[float] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.closed = False

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.entered.set()
        assert self.release.wait(WAIT), "the test never released the predictor"
        images = inputs["image"]
        if self.on_run is not None:
            self.on_run(self.name)
        self.batches.append(len(images))
        self.seen += [float(img[0, 0, 0]) for img in images]
        rows = np.array([[0, float(img[0, 0, 0]), 0, 0, 1, 1] for img in images], np.float32)
        return [rows, np.ones(len(images), np.int32)]

    def clone(self) -> GatedPredictor:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True


class GatedPlugin:
    """Device type `gated`: every load returns the next of `predictors`."""

    name = "gated"
    device_types = ("gated",)

    def __init__(self, *predictors: GatedPredictor) -> None:
        self.predictors = list(predictors)
        self.closed = False

    def probe(self) -> list[DeviceInfo]:
        return [DeviceInfo("gated", True)]

    def load(self, model: ModelDir, device: str, options: Mapping[str, str]) -> GatedPredictor:
        return self.predictors.pop(0)

    def close(self) -> None:
        self.closed = True


def item(value: float) -> Prepared:
    return Prepared(np.full((3, 4, 4), value, np.float32), (1.0, 1.0), (4, 4), (4, 4))


@pytest.fixture
def workers() -> Iterator[WorkerThreads]:
    threads = WorkerThreads("test-infer")
    yield threads
    threads.close(WAIT)


def test_concurrent_images_are_batched_and_each_gets_its_own_rows(workers: WorkerThreads) -> None:
    predictor = GatedPredictor()
    runner = ModelRunner([predictor], max_pending=64, name="t", workers=workers, max_batch_size=4,
                         max_queue_delay=0.02)
    try:
        futures = runner.submit([item(v / 100) for v in range(10)])
        results = [f.result(WAIT) for f in futures]
    finally:
        runner.close()
    assert [round(float(r.rows[0, 1]), 2) for r in results] == [v / 100 for v in range(10)]
    assert max(predictor.batches) == 4 and sum(predictor.batches) == 10
    assert all(r.batch_size in (1, 2, 3, 4) for r in results)


def test_full_queue_refuses_at_once_and_every_accepted_image_is_answered(workers: WorkerThreads) -> None:
    predictor = GatedPredictor()
    predictor.release.clear()  # hold the worker so the queue fills
    runner = ModelRunner([predictor], max_pending=3, name="t", workers=workers, max_batch_size=1)
    try:
        accepted = runner.submit([item(0.1)])
        assert predictor.entered.wait(WAIT)  # the worker holds the first image: three places are free
        accepted += runner.submit([item(0.2), item(0.3), item(0.4)])
        with pytest.raises(ResourceExhausted):
            runner.submit([item(0.5)])
        predictor.release.set()
        assert len([f.result(WAIT) for f in accepted]) == 4
    finally:
        runner.close()


def test_expired_and_cancelled_images_never_reach_the_predictor(workers: WorkerThreads) -> None:
    predictor = GatedPredictor()
    predictor.release.clear()
    runner = ModelRunner([predictor], max_pending=64, name="t", workers=workers, max_batch_size=1)
    try:
        first = runner.submit([item(0.1)])[0]
        assert predictor.entered.wait(WAIT)  # the worker is busy with the first image now
        # Its deadline passes while it waits behind the first image.
        expired = runner.submit([item(0.2)], deadline=time.monotonic())[0]
        cancelled = runner.submit([item(0.3)])[0]
        assert cancelled.cancel()
        last = runner.submit([item(0.4)])[0]
        predictor.release.set()
        first.result(WAIT)
        last.result(WAIT)
        with pytest.raises(DeadlineExceeded):
            expired.result(WAIT)
        assert predictor.batches == [1, 1]
    finally:
        runner.close()


@pytest.fixture
def gated_model(tmp_path: Path) -> Path:
    return write_model_dir(tmp_path / "m")


class SignallingExecutor(ThreadPoolExecutor):
    """Releases `finished` after each task: the detection core's worker has handed a request to the engine."""

    def __init__(self) -> None:
        super().__init__(2)
        self.finished = threading.Semaphore(0)

    def submit(self, fn, /, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201 - Executor's signature
        def task():  # noqa: ANN202
            try:
                return fn(*args, **kwargs)
            finally:
                self.finished.release()

        return super().submit(task)


def test_a_cancelled_request_withdraws_its_queued_images(gated_model: Path) -> None:
    """Through the detection core, as the servicer calls it: a client that goes away while its image
    waits behind another request's frees the predictor from running it."""
    predictor = GatedPredictor()
    registry = ModelRegistry({"gated": GatedPlugin(predictor)}, max_pending=64)
    registry.load(ModelConfig("m", gated_model, devices=parse_devices("gated"), max_batch_size=1))
    predictor.seen.clear()
    predictor.entered.clear()
    predictor.release.clear()
    prep = SignallingExecutor()
    detector = Detector(registry, Limits(), prep)

    def image(value: int) -> list[ImageInput]:
        return [ImageInput(np.full((64, 64, 3), value, np.uint8))]

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        busy = asyncio.ensure_future(detector.detect("m", 0, image(10), DetectOptions(), "busy"))
        assert await loop.run_in_executor(None, predictor.entered.wait, WAIT)
        gone = asyncio.ensure_future(detector.detect("m", 0, image(20), DetectOptions(), "gone"))
        for _ in range(2):  # both requests are in the engine: one running, one queued behind it
            assert await loop.run_in_executor(None, prep.finished.acquire, True, WAIT)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        predictor.release.set()
        await busy
        # FIFO with batches of one: had "gone" stayed queued, it would run before this one.
        await detector.detect("m", 0, image(30), DetectOptions(), "after")

    try:
        asyncio.run(scenario())
    finally:
        prep.shutdown()
        registry.close()
    assert predictor.seen == [10.0, 30.0]


def test_images_of_different_requests_share_a_batch_only_when_combining(workers: WorkerThreads) -> None:
    for combine, expected in ((False, [1, 1, 1, 1, 2]), (True, [1, 5])):
        predictor = GatedPredictor()
        predictor.release.clear()  # hold the worker so the queue fills
        runner = ModelRunner([predictor], max_pending=64, name="t", workers=workers, max_batch_size=8,
                             combine_requests=combine)
        try:
            futures = runner.submit([item(0.1)])
            assert predictor.entered.wait(WAIT)
            for value in (0.2, 0.3, 0.4):
                futures += runner.submit([item(value)])
            futures += runner.submit([item(0.5), item(0.6)])  # one DetectBatch: one run either way
            predictor.release.set()
            assert len([f.result(WAIT) for f in futures]) == 6
        finally:
            runner.close()
        assert predictor.batches == expected, combine


class Overlaps:
    """Which predictors run at the same time. The first narrow run waits (up to WAIT) for another
    narrow one to join it, so that under load the test sees them side by side if the engine allows it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: list[str] = []
        self.order: list[str] = []
        self.together: list[tuple[str, ...]] = []
        self.waiting = False

    def __call__(self, name: str) -> None:
        with self._cond:
            self.order.append(name)
            self._running.append(name)
            if len(self._running) > 1:
                self.together.append(tuple(sorted(self._running)))
            self._cond.notify_all()
            if self.waiting and name != "wide" and not self.together:
                self._cond.wait_for(lambda: bool(self.together), WAIT)
            self._running.remove(name)


def test_a_lone_request_gets_the_wide_predictor_and_load_the_narrow_ones_never_both(workers: WorkerThreads) -> None:
    overlaps = Overlaps()
    narrow = [GatedPredictor(f"narrow{i}", overlaps) for i in range(2)]
    runner = ModelRunner(narrow, max_pending=64, name="t", workers=workers, max_batch_size=1, combine_requests=False,
                         wide=GatedPredictor("wide", overlaps))
    try:
        for value in (0.1, 0.2):  # one client at a time: every image runs on all cores
            runner.submit([item(value)])[0].result(WAIT)
        assert overlaps.order == ["wide", "wide"]
        overlaps.waiting = True
        with ThreadPoolExecutor(8) as pool:  # eight clients: the narrow instances run side by side
            list(pool.map(lambda v: runner.submit([item(v)])[0].result(WAIT), [i / 100 for i in range(24)]))
    finally:
        runner.close()
    assert len(overlaps.order) == 26
    assert ("narrow0", "narrow1") in overlaps.together, "the narrow instances never ran at the same time"
    assert not [t for t in overlaps.together if "wide" in t], "the wide predictor shared the cores"


def test_the_wide_predictor_waits_until_a_client_has_been_alone_a_while(workers: WorkerThreads) -> None:
    """Two clients' requests overlap; when one arrives just after the other's answer, it must not
    take the wide predictor (the other would wait behind it with the narrow instances idle). The
    engine keeps the wide predictor for a client alone for LONE_STREAK admissions in a row."""
    ran: list[str] = []
    runner = ModelRunner([GatedPredictor("narrow0"), GatedPredictor("narrow1")], max_pending=8, name="t",
                         workers=workers, max_batch_size=1, combine_requests=False,
                         wide=GatedPredictor("wide"))
    for p in runner.all_predictors:
        p.on_run = lambda name: ran.append("wide" if name == "wide" else "narrow")

    def request(value: float) -> None:  # the daemon's order: admit, prepare, submit, answer, release
        admission = runner.admit(1)
        try:
            runner.submit([item(value)])[0].result(WAIT)
        finally:
            admission.release()

    try:
        request(0.1)
        assert ran == ["wide"], "a lone client gets every core"
        other = runner.admit(1)  # a second client's request, still being decoded
        request(0.2)
        assert ran[1:] == ["narrow"], "an image took the wide predictor while another request was on its way"
        other.release()
        for i in range(LONE_STREAK):  # requests one at a time again: narrow until the streak is long
            request(0.3 + i / 100)
    finally:
        runner.close()
    assert ran[2:] == ["narrow"] * (LONE_STREAK - 1) + ["wide"]


def test_a_lone_request_wakes_only_the_wide_loop(workers: WorkerThreads, monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle narrow loops must sleep through a lone request: every needless wake-up queues one more
    thread for the GIL behind the answer. The wide run waits (up to WAIT / 4) for a narrow loop to
    look at the queue, so a wake-up would show; with none, it goes on after that."""
    narrow_looked, started = threading.Event(), threading.Event()
    idle = threading.Semaphore(0)
    may_take = ModelRunner._may_take

    def watched(runner: ModelRunner, wide: bool) -> bool:
        taken = may_take(runner, wide)
        if not taken:
            idle.release()
        if not wide and started.is_set():
            narrow_looked.set()
        return taken

    monkeypatch.setattr(ModelRunner, "_may_take", watched)
    runner = ModelRunner([GatedPredictor("narrow0"), GatedPredictor("narrow1")], max_pending=8, name="t",
                         workers=workers, max_batch_size=1, combine_requests=False,
                         wide=GatedPredictor("wide", on_run=lambda name: narrow_looked.wait(WAIT / 4)))
    try:
        for _ in range(3):  # each loop has found nothing to take and sleeps
            assert idle.acquire(timeout=WAIT)
        started.set()
        runner.submit([item(0.5)])[0].result(WAIT)
        woken = narrow_looked.is_set()  # before close() wakes every loop to stop
    finally:
        runner.close()
    assert not woken, "a narrow loop was woken for a request only the wide predictor may take"


def test_a_retired_version_closes_after_its_last_request_and_plugins_close_at_shutdown(gated_model: Path) -> None:
    old, new = GatedPredictor("old"), GatedPredictor("new")
    plugin = GatedPlugin(old, new)
    registry = ModelRegistry({"gated": plugin}, max_pending=8)
    config = ModelConfig("m", gated_model, devices=parse_devices("gated"))
    unloaded = threading.Event()

    def on_event(event: ModelEvent) -> None:
        if event.state is ModelState.UNLOADED and event.version == 1:
            unloaded.set()

    registry.add_listener(on_event)
    registry.load(config)
    with registry.lease("m") as served:
        registry.publish(registry.load_version(config, 2, gated_model))
        registry.unpublish("m", 1)
        assert not old.closed  # a request still runs on version 1
        assert served.version == 1
    assert unloaded.wait(WAIT)
    assert old.closed and not new.closed and not plugin.closed
    registry.close()
    assert new.closed and plugin.closed
    registry.close()  # a second close does nothing


@pytest.fixture(scope="module")
def busy_daemon(tiny_model_dirs: dict[str, Path], tmp_path_factory):
    daemon = start_daemon(["--model", f"tiny={tiny_model_dirs['both']}", "--max-pending", "4",
                           "--max-queue-delay-ms", "20", "--max-stream-frames", "3", "--combine-requests"],
                          tmp_path_factory.mktemp("engine") / "d.log")
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture(scope="module")
def frame(visdrone_image: Path) -> bytes:
    return visdrone_image.read_bytes()


def test_overload_gets_resource_exhausted_and_nothing_is_lost(busy_daemon, frame: bytes) -> None:
    def one(_: int) -> str:
        with Client(busy_daemon.address) as c:
            try:
                c.detect(frame, threshold=0.3)
                return "OK"
            except grpc.RpcError as exc:
                return exc.code().name

    with ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(one, range(48)))
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes.count("OK") >= 4 and len(codes) == 48


def test_concurrent_requests_share_batches(busy_daemon, frame: bytes) -> None:
    with Client(busy_daemon.address) as c, ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(lambda _: c.detect(frame).timings.batch_size, range(12)))
    assert max(sizes) > 1, sizes


def test_detect_stream_answers_in_order_and_survives_a_bad_frame(busy_daemon, frame: bytes) -> None:
    small = cv2.imencode(".png", cv2.resize(cv2.imdecode(np.frombuffer(frame, np.uint8), 1), (320, 180)))[1]
    requests = [pb.DetectRequest(image=pb.Image(encoded=small.tobytes()), request_id=f"f{i}", threshold=0.3)
                for i in range(12)]
    requests[5] = pb.DetectRequest(image=pb.Image(encoded=b"broken"), request_id="f5")
    stub = pb_grpc.DetectorStub(busy_daemon.channel())
    answers = list(stub.DetectStream(iter(requests), timeout=60))
    assert [a.request_id for a in answers] == [f"f{i}" for i in range(12)]
    assert answers[5].WhichOneof("result") == "error"
    assert answers[5].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "image.encoded" in answers[5].error.message
    good = [a.response for a in answers if a.WhichOneof("result") == "response"]
    assert len(good) == 11 and all(r.boxes == good[0].boxes for r in good)


def test_detect_stream_holds_at_most_the_configured_frames(gated_model: Path) -> None:
    """The servicer reads a frame only when fewer than max_stream_frames are in the daemon."""
    predictor = GatedPredictor()
    config = ServeConfig(models=(ModelConfig("m", gated_model, devices=parse_devices("gated")),),
                         max_stream_frames=2, metrics_listen="")
    registry = ModelRegistry({"gated": GatedPlugin(predictor)}, max_pending=64)
    manager = ModelManager(registry, config)
    in_daemon = {"now": 0, "max": 0}
    frame = cv2.imencode(".png", np.full((32, 32, 3), 50, np.uint8))[1].tobytes()

    async def frames():
        for i in range(10):
            in_daemon["now"] += 1
            in_daemon["max"] = max(in_daemon["max"], in_daemon["now"])
            yield pb.DetectRequest(image=pb.Image(encoded=frame), request_id=str(i))

    async def scenario() -> list[str]:
        await manager.start()
        service = DetectorService(config, registry, manager)
        predictor.entered.clear()
        predictor.release.clear()  # frames stay in the daemon until the first one is seen running
        loop = asyncio.get_running_loop()

        async def consume() -> list[str]:
            out = []
            async for answer in service.DetectStream(frames(), FakeContext()):
                in_daemon["now"] -= 1
                assert answer.WhichOneof("result") == "response", answer
                out.append(answer.request_id)
            return out

        try:
            answers = asyncio.ensure_future(consume())
            # While the predictor holds the first frame the loop is idle: a servicer that read ahead
            # would read every frame now.
            assert await loop.run_in_executor(None, predictor.entered.wait, WAIT)
            predictor.release.set()
            return await answers
        finally:
            predictor.release.set()
            service.close()
            await manager.close()

    try:
        assert asyncio.run(scenario()) == [str(i) for i in range(10)]
    finally:
        registry.close()
    assert in_daemon["max"] <= 2


def test_the_default_cpu_set_up_answers_alike_on_every_instance(tiny_model_dirs: dict[str, Path], frame: bytes,
                                                                 tmp_path: Path) -> None:
    """Without a thread count the daemon runs narrow instances plus a wide one (on 2+ cores); which
    one answers must not change a single box."""
    daemon = start_daemon(["--model", f"tiny={tiny_model_dirs['both']}"], tmp_path / "d.log", threads=None)
    try:
        with Client(daemon.address) as c:
            lone = c.detect(frame, threshold=0.3)
            with ThreadPoolExecutor(6) as pool:
                loaded = list(pool.map(lambda _: c.detect(frame, threshold=0.3), range(18)))
            info = pb_grpc.DetectorStub(daemon.channel()).GetModel(pb.GetModelRequest(name="tiny"), timeout=10)
    finally:
        assert daemon.stop() == 0
    if len(os.sched_getaffinity(0)) > 1:
        assert "for a lone request" in info.state_reason, info.state_reason
    assert lone.boxes
    for answer in loaded:
        assert list(answer.boxes) == list(lone.boxes)
