"""The serving engine: dynamic batching, admission, deadlines, cancellation, and DetectStream."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from sodd_client import Client

from sodd.errors import DeadlineExceeded, ResourceExhausted
from sodd.model.preprocess import Prepared
from sodd.runtime.engine import ModelRunner
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import start_daemon


class SlowPredictor:
    """Returns one box per image (score = the image's first pixel) after `delay` seconds."""

    input_names = ("image", "scale_factor")
    notes = ""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.batches: list[int] = []
        self.release = threading.Event()
        self.release.set()

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.release.wait()
        time.sleep(self.delay)
        images = inputs["image"]
        self.batches.append(len(images))
        rows = np.array([[0, float(img[0, 0, 0]), 0, 0, 1, 1] for img in images], np.float32)
        return [rows, np.ones(len(images), np.int32)]

    def close(self) -> None:
        pass


def item(value: float) -> Prepared:
    return Prepared(np.full((3, 4, 4), value, np.float32), (1.0, 1.0), (4, 4), (4, 4))


def test_concurrent_images_are_batched_and_each_gets_its_own_rows() -> None:
    predictor = SlowPredictor()
    runner = ModelRunner(predictor, max_pending=64, name="t", max_batch_size=4, max_queue_delay=0.02)
    try:
        futures = runner.submit([item(v / 100) for v in range(10)])
        results = [f.result(10) for f in futures]
    finally:
        runner.close()
    assert [round(float(r.rows[0, 1]), 2) for r in results] == [v / 100 for v in range(10)]
    assert max(predictor.batches) == 4 and sum(predictor.batches) == 10
    assert all(r.batch_size in (1, 2, 3, 4) for r in results)


def test_full_queue_refuses_at_once_and_every_accepted_image_is_answered() -> None:
    predictor = SlowPredictor()
    predictor.release.clear()  # hold the worker so the queue fills
    runner = ModelRunner(predictor, max_pending=3, name="t", max_batch_size=1)
    try:
        accepted = runner.submit([item(0.1)])  # taken by the worker
        time.sleep(0.05)
        accepted += runner.submit([item(0.2), item(0.3), item(0.4)])
        started = time.perf_counter()
        with pytest.raises(ResourceExhausted):
            runner.submit([item(0.5)])
        assert time.perf_counter() - started < 0.05
        predictor.release.set()
        assert len([f.result(10) for f in accepted]) == 4
    finally:
        runner.close()


def test_expired_and_cancelled_images_never_reach_the_predictor() -> None:
    predictor = SlowPredictor(delay=0.2)
    runner = ModelRunner(predictor, max_pending=64, name="t", max_batch_size=1)
    try:
        first = runner.submit([item(0.1)])[0]
        time.sleep(0.02)  # the worker is busy with the first image now
        expired = runner.submit([item(0.2)], deadline=time.monotonic() + 0.05)[0]
        cancelled = runner.submit([item(0.3)])[0]
        assert cancelled.cancel()
        last = runner.submit([item(0.4)])[0]
        first.result(10)
        last.result(10)
        with pytest.raises(DeadlineExceeded):
            expired.result(10)
        assert predictor.batches == [1, 1]
    finally:
        runner.close()


def test_asyncio_cancellation_withdraws_queued_images() -> None:
    predictor = SlowPredictor(delay=0.3)
    runner = ModelRunner(predictor, max_pending=64, name="t", max_batch_size=1)

    async def scenario() -> None:
        busy = asyncio.ensure_future(runner.run_images([item(0.1)]))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(runner.run_images([item(0.2)]))
        await asyncio.sleep(0.01)
        gone.cancel()
        await busy
        await asyncio.sleep(0.4)

    try:
        asyncio.run(scenario())
    finally:
        runner.close()
    assert predictor.batches == [1]


def test_images_of_different_requests_share_a_batch_only_when_combining() -> None:
    for combine, expected in ((False, [1, 1, 1, 1, 2]), (True, [1, 5])):
        predictor = SlowPredictor()
        predictor.release.clear()  # hold the worker so the queue fills
        runner = ModelRunner(predictor, max_pending=64, name="t", max_batch_size=8, combine_requests=combine)
        try:
            futures = runner.submit([item(0.1)])
            time.sleep(0.05)
            for value in (0.2, 0.3, 0.4):
                futures += runner.submit([item(value)])
            futures += runner.submit([item(0.5), item(0.6)])  # one DetectBatch: one run either way
            predictor.release.set()
            assert len([f.result(10) for f in futures]) == 6
        finally:
            runner.close()
        assert predictor.batches == expected, combine


class TimedPredictor(SlowPredictor):
    """Records when each run started and ended, in a log shared by all instances."""

    def __init__(self, name: str, log: list[tuple[str, float, float]]) -> None:
        super().__init__(delay=0.05)
        self.name, self.log = name, log

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        started = time.perf_counter()
        outputs = super().run(inputs)
        self.log.append((self.name, started, time.perf_counter()))
        return outputs


def test_a_lone_request_gets_the_wide_predictor_and_load_the_narrow_ones_never_both() -> None:
    log: list[tuple[str, float, float]] = []
    narrow = [TimedPredictor(f"narrow{i}", log) for i in range(2)]
    runner = ModelRunner(narrow, max_pending=64, name="t", max_batch_size=1, combine_requests=False,
                         wide=TimedPredictor("wide", log))
    try:
        for value in (0.1, 0.2):  # one client at a time: every image runs on all cores
            runner.submit([item(value)])[0].result(10)
        assert [name for name, _, _ in log] == ["wide", "wide"]
        with ThreadPoolExecutor(8) as pool:  # eight clients: the narrow instances run side by side
            list(pool.map(lambda v: runner.submit([item(v)])[0].result(10), [i / 100 for i in range(24)]))
    finally:
        runner.close()
    loaded = log[2:]
    assert len(loaded) == 24
    assert {name for name, _, _ in loaded} >= {"narrow0", "narrow1"}
    overlapping = [(a, b) for a in loaded for b in loaded
                   if a is not b and a[1] < b[2] and b[1] < a[2]]
    assert overlapping, "the narrow instances never ran at the same time"
    assert not [(a, b) for a, b in overlapping if "wide" in (a[0], b[0])], "the wide predictor shared the cores"


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


def test_detect_stream_holds_at_most_the_configured_frames(tiny_model_dirs, frame: bytes) -> None:
    """The servicer reads a frame only when fewer than max_stream_frames are in the daemon."""
    from sodd.config.schema import ModelConfig, ServeConfig
    from sodd.serving.service import DetectorService

    config = ServeConfig(models=(ModelConfig("m", tiny_model_dirs["both"]),), max_stream_frames=2)
    service = DetectorService.__new__(DetectorService)
    service._config = config
    service._open_streams = 0
    in_daemon = {"now": 0, "max": 0}

    async def fake_frame(request: pb.DetectRequest, deadline: float | None) -> pb.DetectStreamResponse:
        await asyncio.sleep(0.02)
        return pb.DetectStreamResponse(request_id=request.request_id)

    service._stream_frame = fake_frame

    async def frames():
        for i in range(10):
            in_daemon["now"] += 1
            in_daemon["max"] = max(in_daemon["max"], in_daemon["now"])
            yield pb.DetectRequest(request_id=str(i))

    class Context:
        def time_remaining(self) -> None:
            return None

    async def consume() -> list[str]:
        out = []
        async for answer in service.DetectStream(frames(), Context()):
            in_daemon["now"] -= 1
            out.append(answer.request_id)
        return out

    assert asyncio.run(consume()) == [str(i) for i in range(10)]
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
