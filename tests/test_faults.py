"""Faults while serving: files deleted or corrupted, an unusable Paddle Lite cache, a taken metrics
port, and clients that are slow, vanish or cancel. Each has a documented behaviour
(docs/reliability.md) and the daemon keeps answering."""

from __future__ import annotations

import shutil
import socket
import struct
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sodd_client import Client

from sodd.oip import grpc_service_pb2 as oip
from sodd.oip import grpc_service_pb2_grpc as oip_grpc
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import Daemon, start_daemon
from tests.metrics_helpers import metrics_url, samples, scrape, value
from tests.service_helpers import wait_until


@pytest.fixture()
def own_model(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["both"], model)
    return model


@pytest.fixture()
def own_daemon(own_model: Path, tmp_path: Path) -> Iterator[Daemon]:
    """A daemon serving `own_model` as `m`, quick to notice its files change."""
    with start_daemon(["--model", f"m={own_model}", "--settle-seconds", "0.2"], tmp_path / "d.log") as daemon:
        yield daemon


def test_deleted_model_directory_keeps_serving_from_memory(own_model: Path, own_daemon: Daemon,
                                                           visdrone_image: Path) -> None:
    with Client(own_daemon.address) as c:
        before = c.detect(visdrone_image.read_bytes(), threshold=0.3)
        shutil.rmtree(own_model)
        own_daemon.wait_for_log("keeps serving", timeout=30)  # the watcher has seen it
        after = c.detect(visdrone_image.read_bytes(), threshold=0.3)
        assert after.boxes == before.boxes and after.version == 1


def test_corrupted_files_keep_the_loaded_version_serving(own_model: Path, own_daemon: Daemon,
                                                         visdrone_image: Path) -> None:
    with Client(own_daemon.address) as c:
        before = c.detect(visdrone_image.read_bytes(), threshold=0.3)
        params = own_model / "inference.pdiparams"
        params.write_bytes(params.read_bytes()[:100])
        wait_until(lambda: "changed files failed" in c.get_model("m").state_reason, 30)
        assert c.get_model("m").state == pb.MODEL_STATE_READY
        assert c.detect(visdrone_image.read_bytes(), threshold=0.3).boxes == before.boxes


def test_unusable_lite_cache_converts_without_caching(tiny_model_dirs: dict[str, Path], visdrone_image: Path,
                                                      tmp_path: Path) -> None:
    pytest.importorskip("paddlelite.lite")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")
    daemon = start_daemon(["--model", f"m={tiny_model_dirs['both']}",
                           "--device", f"m=arm?target=x86&cache_dir={blocker / 'lite'}"], tmp_path / "d.log")
    try:
        with Client(daemon.address) as c:
            info = c.get_model("m")
            assert info.device == "arm" and "not cached" in info.state_reason
            assert len(c.detect(visdrone_image.read_bytes(), threshold=0.3).boxes) > 0
    finally:
        daemon.stop()


def test_taken_metrics_port_serves_without_metrics_until_it_frees(tiny_model_dirs: dict[str, Path],
                                                                  visdrone_image: Path, tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    daemon = start_daemon(["--model", f"m={tiny_model_dirs['both']}", "--metrics-listen", f"127.0.0.1:{port}"],
                          tmp_path / "d.log")
    try:
        with Client(daemon.address) as c:
            assert c.detect(visdrone_image.read_bytes()).model == "m"
        assert "serving without metrics" in daemon.log()
        holder.close()
        wait_until(lambda: "metrics on" in daemon.log(), 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert b"sodd_build_info" in r.read()
    finally:
        holder.close()
        daemon.stop()


def in_flight(url: str) -> float:
    """Detection requests and stream frames the daemon holds now (its sodd_requests_in_flight)."""
    return value(samples(scrape(url)), "sodd_requests_in_flight")


@pytest.fixture(scope="module")
def stream_daemon(tiny_model_dirs: dict[str, Path], tmp_path_factory):
    daemon = start_daemon(["--model", f"m={tiny_model_dirs['both']}", "--max-streams", "2"],
                          tmp_path_factory.mktemp("faults") / "d.log")
    yield daemon
    assert daemon.stop() == 0


def two_streams_answer(daemon: Daemon, request: pb.DetectRequest) -> bool:
    """Two streams (the limit) open at once and each gets its three answers."""
    stub = pb_grpc.DetectorStub(daemon.channel())
    answers: list[int | str] = []

    def consume() -> None:
        try:
            answers.append(len(list(stub.DetectStream(iter([request] * 3), timeout=60))))
        except grpc.RpcError as exc:  # RESOURCE_EXHAUSTED while a vanished stream still holds its slot
            answers.append(exc.code().name)

    threads = [threading.Thread(target=consume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers == [3, 3]


def test_vanishing_and_cancelling_clients_leave_nothing_behind(stream_daemon, visdrone_image: Path) -> None:
    frame = visdrone_image.read_bytes()
    request = pb.DetectRequest(image=pb.Image(encoded=frame))
    metrics = metrics_url(stream_daemon)
    for _ in range(5):
        # A stream whose client stops reading after its first answer, while the daemon holds the
        # other frames, and goes away.
        channel = grpc.insecure_channel(stream_daemon.address)
        call = pb_grpc.DetectorStub(channel).DetectStream(iter([request] * 6))
        assert next(call).WhichOneof("result") == "response"
        call.cancel()
        channel.close()
        # The frames it left are let go (also so that the batch below is the only request held).
        wait_until(lambda: in_flight(metrics) == 0, 30, what="the vanished stream's frames let go")
        # A batch cancelled while the daemon handles it, and a request whose deadline is too short to make.
        channel = grpc.insecure_channel(stream_daemon.address)
        stub = pb_grpc.DetectorStub(channel)
        future = stub.DetectBatch.future(pb.DetectBatchRequest(images=[pb.Image(encoded=frame)] * 8))
        # A fast machine may finish the batch before it is seen running; then there is nothing to cancel.
        wait_until(lambda f=future: f.done() or in_flight(metrics) >= 1, 30, interval=0.005,
                   what="the batch at the daemon")
        future.cancel()
        with pytest.raises(grpc.RpcError) as err:
            stub.Detect(request, timeout=0.001)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        channel.close()
    wait_until(lambda: in_flight(metrics) == 0, 30, what="every cancelled request let go")
    # The stream slots come back: two streams (the limit) open at once and answer.
    wait_until(lambda: two_streams_answer(stream_daemon, request), 60, interval=0.2,
               what="two streams answered")
    with Client(stream_daemon.address) as c:
        assert c.detect(frame).model == "m"
    assert stream_daemon.process.poll() is None


def stream_answers(url: str, method: str) -> float:
    """Stream frames of `method` the daemon has answered so far (its sodd_requests_total)."""
    return value(samples(scrape(url)), "sodd_requests_total", method=method)


def open_stream(channel: grpc.Channel, method: str, frame: bytes, count: int) -> Iterator[Any]:
    """A DetectStream or ModelStreamInfer call sending `frame` `count` times, at threshold 0."""
    if method == "DetectStream":
        request = pb.DetectRequest(image=pb.Image(encoded=frame), threshold=0.0)
        return pb_grpc.DetectorStub(channel).DetectStream(iter([request] * count), timeout=120)
    infer = oip.ModelInferRequest(model_name="m")
    infer.inputs.add(name="images", datatype="BYTES", shape=[1])
    infer.raw_input_contents.append(struct.pack("<I", len(frame)) + frame)
    infer.parameters["threshold"].double_param = 0.0
    return oip_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([infer] * count), timeout=120)


# A client whose receive window (HTTP/2 flow control) is smaller than one answer: once it stops
# reading, the daemon's next write waits for it.
SMALL_WINDOW = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]


@pytest.mark.parametrize("method", ["DetectStream", "ModelStreamInfer"])
def test_streams_stalled_by_their_reader_then_cancelled_give_everything_back(stream_daemon, visdrone_image: Path,
                                                                             method: str) -> None:
    """grpc.aio leaves a streaming handler at its `yield` when the call ends during a write; the
    daemon still lets the stream's frames go and gets its stream slot and call budget back."""
    frame = visdrone_image.read_bytes()
    metrics = metrics_url(stream_daemon)
    for _ in range(2):  # as many as --max-streams
        answered = stream_answers(metrics, method)
        channel = grpc.insecure_channel(stream_daemon.address, options=SMALL_WINDOW)
        call = open_stream(channel, method, frame, 8)
        assert next(call).ByteSize() > 1024  # larger than the window
        # The second answer made and not read: the daemon waits to write it.
        wait_until(lambda a=answered: stream_answers(metrics, method) >= a + 2, 60, what="a second answer")
        call.cancel()
        channel.close()
    wait_until(lambda: in_flight(metrics) == 0, 30, what="the stalled streams' frames let go")
    # Both stream slots come back: two streams open at once and answer every frame.
    with grpc.insecure_channel(stream_daemon.address) as channel:
        calls = [open_stream(channel, method, frame, 2) for _ in range(2)]
        assert [len(list(c)) for c in calls] == [2, 2]


WINDOW = 2  # --max-stream-frames


@pytest.fixture(scope="module")
def window_daemon(tiny_model_dirs: dict[str, Path], tmp_path_factory):
    # As many places in the model as a stream may hold frames: a stream that ran ahead of its
    # window would take more places than there are, and its extra frames would be refused.
    daemon = start_daemon(["--model", f"m={tiny_model_dirs['both']}", "--max-stream-frames", str(WINDOW),
                           "--max-pending", str(WINDOW)], tmp_path_factory.mktemp("window") / "d.log")
    yield daemon
    assert daemon.stop() == 0


def test_slow_reader_is_bounded_by_the_stream_window(window_daemon, visdrone_image: Path) -> None:
    """A client that reads slowly gets every answer; the daemon never runs more frames of the stream
    than the window, although the client sends all of them at once."""
    frames = [pb.DetectRequest(image=pb.Image(encoded=visdrone_image.read_bytes()), request_id=f"frame-{i}")
              for i in range(12)]
    stub = pb_grpc.DetectorStub(window_daemon.channel())
    reading = threading.Event()  # never set: waiting on it is the slow reader's pause
    got = []
    for answer in stub.DetectStream(iter(frames), timeout=120):
        assert answer.WhichOneof("result") == "response", answer.error  # not refused: within max_pending
        got.append(answer.request_id)
        reading.wait(0.2)
    assert got == [f.request_id for f in frames]  # every answer, in order
    assert in_flight(metrics_url(window_daemon)) == 0
