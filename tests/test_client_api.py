"""The complete Python client against a real daemon: streaming, slicing, load/unload/watch, listings,
predict on arrays, the async twins, and `sodd-client detect`'s slicing flags."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from sodd_client import AsyncClient, Client, StreamFrameError
from sodd_client.cli import main as client_main

from sodd.v1 import detector_pb2 as pb
from tests.conftest import Daemon, start_daemon


@pytest.fixture(scope="module")
def daemon(tiny_model_dirs: dict[str, Path], tmp_path_factory) -> Iterator[Daemon]:
    log = tmp_path_factory.mktemp("client-api") / "daemon.log"
    d = start_daemon(["--model", f"tiny={tiny_model_dirs['both']}", "--model", f"spare={tiny_model_dirs['legacy']}"],
                     log)
    yield d
    assert d.stop() == 0, d.log()


@pytest.fixture(scope="module")
def frames(visdrone_image: Path) -> list[bytes]:
    image = cv2.imread(str(visdrone_image))
    return [cv2.imencode(".jpg", cv2.resize(image, (320 + 40 * i, 240 + 30 * i)))[1].tobytes() for i in range(5)]


def test_detect_stream_answers_in_order_and_survives_a_bad_frame(daemon: Daemon, frames: list[bytes]) -> None:
    sent = [*frames[:2], b"not an image", *frames[2:]]
    with Client(daemon.address) as client:
        expected = [client.detect(f, "tiny", threshold=0.3) for f in frames]
        answers = list(client.detect_stream(iter(sent), "tiny", threshold=0.3))
        assert [a.request_id for a in answers] == [str(i) for i in range(len(sent))]
        assert answers[2].WhichOneof("result") == "error"
        assert answers[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        good = [a.response for i, a in enumerate(answers) if i != 2]
        assert [list(g.boxes) for g in good] == [list(e.boxes) for e in expected]
        with pytest.raises(StreamFrameError) as err:
            list(client.detect_stream(sent, "tiny", raise_errors=True))
        assert err.value.request_id == "2" and err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_detect_stream_is_paced_by_a_camera_generator(daemon: Daemon, frames: list[bytes]) -> None:
    """A generator that yields a frame only after the previous answer: the stream takes frames lazily."""
    answered: queue.Queue[str] = queue.Queue()

    def camera() -> Iterator[pb.DetectRequest]:
        for i, frame in enumerate(frames):
            yield pb.DetectRequest(image=pb.Image(encoded=frame), model="tiny", request_id=f"cam-{i}")
            assert answered.get(timeout=30) == f"cam-{i}"

    seen = []
    with Client(daemon.address) as client:
        for answer in client.detect_stream(camera()):
            seen.append(answer.request_id)
            answered.put(answer.request_id)
    assert seen == [f"cam-{i}" for i in range(len(frames))]


def test_slicing_per_request(daemon: Daemon, frames: list[bytes]) -> None:
    with Client(daemon.address) as client:
        whole = client.detect(frames[-1], "tiny", slicing=False)
        sliced = client.detect(frames[-1], "tiny", slicing={"slice_height": 160, "slice_width": 160,
                                                            "overlap_height_ratio": 0.2, "overlap_width_ratio": 0.2})
        auto = client.detect(frames[-1], "tiny", slicing=True)
        batch = client.detect_batch(frames[:2], "tiny", slicing={"slice_height": 160, "slice_width": 160})
    assert whole.slices == 1
    assert sliced.slices > 4 and auto.slices >= 1
    assert all(r.slices > 1 for r in batch.results)


def test_cli_slicing_flags(daemon: Daemon, frames: list[bytes], tmp_path: Path, capsys) -> None:
    image = tmp_path / "frame.jpg"
    image.write_bytes(frames[-1])
    assert client_main(["--server", daemon.address, "detect", str(image), "--model", "tiny",
                        "--slice-size", "160", "--overlap", "0.2,0.25", "--slice-merge", "nmm",
                        "--slice-metric", "ios"]) == 0
    sliced = capsys.readouterr().out
    assert client_main(["--server", daemon.address, "detect", str(image), "--model", "tiny", "--no-slice"]) == 0
    assert "1 network run(s)" in capsys.readouterr().out
    runs = int(sliced.split(", ")[-1].split()[0])
    assert runs > 4, sliced
    assert client_main(["--server", daemon.address, "detect", str(image), "--slice-size", "160x"]) == 2
    assert client_main(["--server", daemon.address, "detect", str(image), "--model", "tiny",
                        "--slice-merge", "nmm", "--slice-size", "160", "--overlap", "2"]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_models_devices_load_unload_and_watch(daemon: Daemon, frames: list[bytes]) -> None:
    with Client(daemon.address) as client:
        names = {m.name for m in client.list_models()}
        assert {"tiny", "spare"} <= names
        assert client.get_model("spare").state == pb.MODEL_STATE_READY
        assert any(p.name == "cpu" for p in client.list_devices())
        events: list[pb.ModelEvent] = []
        watch = client.watch_models("spare")
        watcher = threading.Thread(target=lambda: events.extend(_until_cancelled(watch)))
        watcher.start()
        try:
            client.unload_model("spare")
            with pytest.raises(grpc.RpcError) as err:
                client.detect(frames[0], "spare")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            versions = client.load_model("spare")
            assert versions and all(v.name == "spare" for v in versions)
            assert client.detect(frames[0], "spare").model == "spare"
            deadline = time.monotonic() + 30
            while not _saw(events, pb.MODEL_STATE_READY) and time.monotonic() < deadline:
                watcher.join(0.05)
        finally:
            watch.cancel()
            watcher.join(30)
    assert _saw(events, pb.MODEL_STATE_UNLOADED) and _saw(events, pb.MODEL_STATE_READY)
    assert all(e.name == "spare" for e in events)


def _until_cancelled(call) -> Iterator[pb.ModelEvent]:  # noqa: ANN001
    try:
        yield from call
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.CANCELLED


def _saw(events: list[pb.ModelEvent], state: int) -> bool:
    return any(e.state == state for e in list(events))


def test_predict_on_arrays_and_bytes(daemon: Daemon, frames: list[bytes], tmp_path: Path) -> None:
    bgr = cv2.imdecode(np.frombuffer(frames[0], np.uint8), cv2.IMREAD_COLOR)
    with Client(daemon.address) as client:
        from_array, from_bytes = client.predict([bgr, frames[0]], batch_size=2, model="tiny", threshold=0.3)
        expected = client.detect(bgr, "tiny", threshold=0.3)
    assert from_array["input_path"] is None and len(from_array["boxes"]) == len(expected.boxes)
    written = from_array.save_to_json(tmp_path)
    assert written.name.endswith("_res.json") and json.loads(written.read_text())["input_path"] is None
    assert from_array.save_to_img(tmp_path).suffix == ".png"  # PaddleX's choice for inputs without a name
    assert from_bytes.response.model == "tiny"


def test_async_twins(daemon: Daemon, frames: list[bytes], visdrone_image: Path) -> None:
    async def main() -> tuple:
        async def camera():  # noqa: ANN202
            for frame in frames[:3]:
                yield frame

        async with AsyncClient(daemon.address) as client:
            stream = [a.request_id async for a in client.detect_stream(camera(), "tiny")]
            results = [r async for r in client.predict([str(visdrone_image)] * 2, batch_size=2, model="tiny")]
            models = await client.list_models()
            devices = await client.list_devices()
            info = await client.get_model("tiny", timeout=5)
            sliced = await client.detect(frames[-1], "tiny", slicing={"slice_height": 160, "slice_width": 160})
            await client.unload_model("spare")
            reloaded = await client.load_model("spare")
            return stream, results, models, devices, info, sliced, reloaded

    stream, results, models, devices, info, sliced, reloaded = asyncio.run(main())
    assert stream == ["0", "1", "2"]
    assert [r["input_path"] for r in results] == [str(visdrone_image)] * 2
    assert {m.name for m in models} >= {"tiny", "spare"} and devices and info.name == "tiny"
    assert sliced.slices > 1 and reloaded
