"""The client's channel: UNAVAILABLE is retried, for image-sized requests too (the retry buffer), deadlines
are per call, and raw_image/slicing are checked before anything is sent. Against an in-process fake
Detector, so each behaviour is forced exactly."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from sodd_client import AsyncClient, Client, raw_image, slicing_message

from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc

IMAGE = b"\xff\xd8" + bytes(1024 * 1024)  # 1 MiB: four times gRPC's default retry buffer
FAILURES = 2  # the fake refuses each request id this many times before answering


class FlakyDetector(pb_grpc.DetectorServicer):
    """Refuses each request id FAILURES times with UNAVAILABLE (as a draining daemon does), then answers;
    request id "slow" waits until the test releases it. Records the deadline each request id arrived with."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.time_left: dict[str, float | None] = {}  # seconds to the call's deadline, at its last attempt
        self.release = threading.Event()
        self.lock = threading.Lock()

    def Detect(self, request: pb.DetectRequest, context: grpc.ServicerContext) -> pb.DetectResponse:
        with self.lock:
            self.attempts[request.request_id] += 1
            attempt = self.attempts[request.request_id]
            self.time_left[request.request_id] = context.time_remaining()
        if request.request_id == "slow":
            self.release.wait(30)
        elif attempt <= FAILURES:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another one")
        return pb.DetectResponse(request_id=request.request_id, image_width=len(request.image.encoded))


@pytest.fixture(scope="module")
def flaky() -> Iterator[tuple[str, FlakyDetector]]:
    servicer = FlakyDetector()
    server = grpc.server(ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)])
    pb_grpc.add_DetectorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    servicer.release.set()
    server.stop(None)


def test_unavailable_is_retried_for_an_image_sized_request(flaky) -> None:
    address, servicer = flaky
    with Client(address, timeout=30) as client:
        response = client.detect(IMAGE, request_id="retried")
    assert response.image_width == len(IMAGE)
    assert servicer.attempts["retried"] == FAILURES + 1


def test_gRPCs_default_retry_buffer_would_not_retry_it(flaky) -> None:
    """Why the client sizes the buffer: with gRPC's 256 KiB, the same call fails on its first refusal."""
    address, servicer = flaky
    with Client(address, timeout=30, retry_buffer_bytes=256 * 1024) as client, pytest.raises(grpc.RpcError) as err:
        client.detect(IMAGE, request_id="small-buffer")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts["small-buffer"] == 1


def test_retry_can_be_turned_off(flaky) -> None:
    address, servicer = flaky
    with Client(address, timeout=30, retry=False) as client, pytest.raises(grpc.RpcError) as err:
        client.detect(b"x", request_id="no-retry")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts["no-retry"] == 1


def test_async_client_retries_too(flaky) -> None:
    address, servicer = flaky

    async def call() -> pb.DetectResponse:
        async with AsyncClient(address, timeout=30) as client:
            return await client.detect(IMAGE, request_id="async")

    assert asyncio.run(call()).image_width == len(IMAGE)
    assert servicer.attempts["async"] == FAILURES + 1


def test_deadline_is_per_call(flaky) -> None:
    address, servicer = flaky
    with Client(address, timeout=60) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.detect(b"x", request_id="slow", timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert servicer.time_left["slow"] is not None and servicer.time_left["slow"] < 1
        # The client's default still applies to the next call: it reaches the server with about 60 s
        # left (less the retries' backoff; gRPC rounds the deadline it sends up a little).
        assert client.detect(b"x", request_id="fine").request_id == "fine"
        assert servicer.time_left["fine"] is not None and 30 < servicer.time_left["fine"] < 61


@pytest.mark.parametrize(("pixels", "message"), [
    (np.zeros((3, 40, 30), np.uint8), "channels-first"),
    (np.zeros((40, 30, 3), np.float32), "uint8"),
    (np.zeros((40, 30, 2), np.uint8), "C 1, 3 or 4"),
    (np.zeros((0, 30, 3), np.uint8), "empty"),
    (np.zeros((2, 40, 30, 3), np.uint8), "HxW or HxWxC"),
])
def test_raw_image_refuses_wrong_arrays(pixels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        raw_image(pixels)


def test_raw_image_layouts() -> None:
    bgr = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    image = raw_image(bgr[:, ::-1])  # a non-contiguous view is sent in C order
    assert (image.raw.height, image.raw.width, image.raw.channels) == (4, 5, 3)
    assert image.raw.data == np.ascontiguousarray(bgr[:, ::-1]).tobytes()
    assert raw_image(bgr[:, :, ::-1], color="rgb").raw.data == bgr.tobytes()
    assert raw_image(np.zeros((4, 5), np.uint8)).raw.channels == 1


def test_slicing_options() -> None:
    assert slicing_message(None) is None
    assert slicing_message(False) == pb.Slicing(enabled=False)
    message = slicing_message({"slice_height": 320, "slice_width": 320, "overlap_height_ratio": 0.25, "merge": "nmm"})
    assert (message.slice_height, message.merge, message.HasField("enabled")) == (320, "nmm", False)
    with pytest.raises(ValueError, match="slice_size"):
        slicing_message({"slice_size": 320})
