"""Faults while serving: files deleted or corrupted, an unusable Paddle Lite cache, a taken metrics
port, and clients that are slow, vanish or cancel. Each has a documented behaviour
(docs/reliability.md) and the daemon keeps answering."""

from __future__ import annotations

import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from sodd_client import Client

from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import start_daemon


def wait_for(predicate, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError("condition not met")


@pytest.fixture()
def own_model(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["both"], model)
    return model


def test_deleted_model_directory_keeps_serving_from_memory(own_model: Path, visdrone_image: Path,
                                                           tmp_path: Path) -> None:
    daemon = start_daemon(["--model", f"m={own_model}", "--settle-seconds", "0.2"], tmp_path / "d.log")
    try:
        with Client(daemon.address) as c:
            before = c.detect(visdrone_image.read_bytes(), threshold=0.3)
            shutil.rmtree(own_model)
            time.sleep(1.5)  # the watcher has seen it
            after = c.detect(visdrone_image.read_bytes(), threshold=0.3)
            assert after.boxes == before.boxes and after.version == 1
        assert "keeps serving" in daemon.log()
    finally:
        daemon.stop()


def test_corrupted_files_keep_the_loaded_version_serving(own_model: Path, visdrone_image: Path,
                                                         tmp_path: Path) -> None:
    daemon = start_daemon(["--model", f"m={own_model}", "--settle-seconds", "0.2"], tmp_path / "d.log")
    try:
        with Client(daemon.address) as c:
            before = c.detect(visdrone_image.read_bytes(), threshold=0.3)
            params = own_model / "inference.pdiparams"
            params.write_bytes(params.read_bytes()[:100])
            wait_for(lambda: "changed files failed" in c.get_model("m").state_reason, 30)
            assert c.get_model("m").state == pb.MODEL_STATE_READY
            assert c.detect(visdrone_image.read_bytes(), threshold=0.3).boxes == before.boxes
    finally:
        daemon.stop()


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
        wait_for(lambda: "metrics on" in daemon.log(), 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert b"sodd_build_info" in r.read()
    finally:
        holder.close()
        daemon.stop()


@pytest.fixture(scope="module")
def stream_daemon(tiny_model_dirs: dict[str, Path], tmp_path_factory):
    daemon = start_daemon(["--model", f"m={tiny_model_dirs['both']}", "--max-streams", "2"],
                          tmp_path_factory.mktemp("faults") / "d.log")
    yield daemon
    assert daemon.stop() == 0


def test_vanishing_and_cancelling_clients_leave_nothing_behind(stream_daemon, visdrone_image: Path) -> None:
    frame = visdrone_image.read_bytes()
    request = pb.DetectRequest(image=pb.Image(encoded=frame))
    for _ in range(5):
        # A stream whose client sends frames, never reads, and goes away.
        channel = grpc.insecure_channel(stream_daemon.address)
        call = pb_grpc.DetectorStub(channel).DetectStream(iter([request] * 6))
        time.sleep(0.2)
        call.cancel()
        channel.close()
        # A batch cancelled while it runs, and a request whose deadline is too short to make.
        channel = grpc.insecure_channel(stream_daemon.address)
        stub = pb_grpc.DetectorStub(channel)
        future = stub.DetectBatch.future(pb.DetectBatchRequest(images=[pb.Image(encoded=frame)] * 8))
        time.sleep(0.05)
        future.cancel()
        with pytest.raises(grpc.RpcError) as err:
            stub.Detect(request, timeout=0.001)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        channel.close()
    time.sleep(1.0)
    # The stream slots came back: two streams (the limit) still open and answer.
    stub = pb_grpc.DetectorStub(stream_daemon.channel())
    answers = []

    def consume() -> None:
        answers.append(len(list(stub.DetectStream(iter([request] * 3), timeout=60))))

    threads = [threading.Thread(target=consume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == [3, 3]
    with Client(stream_daemon.address) as c:
        assert c.detect(frame).model == "m"
    assert stream_daemon.process.poll() is None


def test_slow_reader_is_bounded_by_the_stream_window(stream_daemon, visdrone_image: Path) -> None:
    """A client that reads slowly gets every answer; the daemon never runs ahead of the window."""
    request = pb.DetectRequest(image=pb.Image(encoded=visdrone_image.read_bytes()))
    stub = pb_grpc.DetectorStub(stream_daemon.channel())
    got = 0
    for answer in stub.DetectStream(iter([request] * 8), timeout=120):
        assert answer.WhichOneof("result") == "response"
        got += 1
        time.sleep(0.3)
    assert got == 8
