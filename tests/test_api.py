"""The Detect API against a real daemon on loopback: formats, batches, model listing, health,
reflection, and every kind of bad input, after which the daemon still answers correctly."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from sodd_client import Client, raw_image
from sodd_client.cli import main as client_main

from sodd.v1 import detector_pb2 as pb
from tests.conftest import Daemon


@pytest.fixture(scope="module")
def client(tiny_daemon: Daemon):
    with Client(tiny_daemon.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def bgr(visdrone_image: Path) -> np.ndarray:
    return cv2.imread(str(visdrone_image))


def boxes_of(response: pb.DetectResponse) -> list[tuple]:
    return [(b.cls_id, b.label, b.score, b.xmin, b.ymin, b.xmax, b.ymax) for b in response.boxes]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_header(width: int, height: int) -> bytes:
    """A well-formed PNG declaring width x height over a few bytes of data: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
            + png_chunk(b"IEND", b""))


def test_lossless_formats_and_raw_pixels_give_the_same_boxes(client: Client, bgr: np.ndarray) -> None:
    reference = client.detect(raw_image(bgr), threshold=0.3)
    assert len(reference.boxes) > 0
    assert (reference.image_width, reference.image_height) == (bgr.shape[1], bgr.shape[0])
    for ext, params in ((".png", []), (".bmp", []), (".tiff", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])):
        ok, data = cv2.imencode(ext, bgr, params)
        assert ok
        assert boxes_of(client.detect(data.tobytes(), threshold=0.3)) == boxes_of(reference), ext
    ok, jpeg = cv2.imencode(".jpg", bgr)
    assert len(client.detect(jpeg.tobytes(), threshold=0.3).boxes) > 0
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    assert boxes_of(client.detect(raw_image(bgra), threshold=0.3)) == boxes_of(reference)
    assert client.detect(raw_image(grey), threshold=0.3).image_width == bgr.shape[1]


def test_response_names_model_version_device_and_timings(client: Client, visdrone_image: Path) -> None:
    r = client.detect(visdrone_image.read_bytes(), request_id="req-42")
    assert (r.request_id, r.model, r.version, r.device) == ("req-42", "tiny", 1, "cpu")
    t = r.timings
    assert min(t.decode_seconds, t.preprocess_seconds, t.inference_seconds, t.postprocess_seconds) > 0
    assert client.detect(visdrone_image.read_bytes()).request_id  # made up when absent


def test_threshold_priority_and_max_detections(client: Client, visdrone_image: Path) -> None:
    data = visdrone_image.read_bytes()
    low = client.detect(data, threshold=0.05)
    default = client.detect(data)  # no daemon threshold: the yml's draw_threshold 0.5
    assert all(b.score > 0.5 for b in default.boxes)
    assert len(default.boxes) == sum(1 for b in low.boxes if b.score > 0.5)
    assert boxes_of(client.detect(data, threshold=0.05, max_detections=3)) == boxes_of(low)[:3]
    per_class = client.detect(data, threshold={3: 0.05})
    assert all(b.score > (0.05 if b.cls_id == 3 else 0.5) for b in per_class.boxes)
    assert client.detect(data, threshold=1.0).boxes == []


def test_detect_batch_keeps_input_order(client: Client, real_images: list[Path]) -> None:
    datas = [p.read_bytes() for p in real_images]
    batch = client.detect_batch(datas + datas[:1], threshold=0.3, request_id="b1")
    assert batch.request_id == "b1" and len(batch.results) == 4
    for data, result in zip(datas + datas[:1], batch.results, strict=True):
        single = client.detect(data, threshold=0.3)
        assert (result.image_width, result.image_height) == (single.image_width, single.image_height)
        assert len(result.boxes) == len(single.boxes)
        for a, b in zip(result.boxes, single.boxes, strict=True):
            assert a.cls_id == b.cls_id and abs(a.score - b.score) < 1e-5


def test_list_and_get_models(client: Client, tiny_model_dirs: dict[str, Path]) -> None:
    models = {m.name: m for m in client.list_models()}
    assert set(models) == {"tiny", "tiny-legacy"}
    tiny = models["tiny"]
    assert tiny.is_default and tiny.state == pb.MODEL_STATE_READY
    assert (tiny.model_name, tiny.input_height, tiny.input_width) == ("PP-YOLOE_plus_SOD-S", 320, 320)
    assert tiny.device == "cpu"
    assert tiny.labels[3] == "car" and tiny.directory == str(tiny_model_dirs["both"])
    assert tiny.program_format == "pir" and models["tiny-legacy"].program_format == "legacy"
    assert client.get_model("").name == "tiny"
    assert client.get_model("tiny-legacy").default_threshold == pytest.approx(0.5)


def test_health_overall_and_per_model(tiny_daemon: Daemon) -> None:
    stub = health_pb2_grpc.HealthStub(tiny_daemon.channel())
    for service in ("", "sodd.v1.Detector", "tiny", "tiny-legacy"):
        status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(service="no-such-model"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_reflection_lists_the_services(tiny_daemon: Daemon) -> None:
    database = ProtoReflectionDescriptorDatabase(tiny_daemon.channel())
    services = set(database.get_services())
    assert {"sodd.v1.Detector", "grpc.health.v1.Health"} <= services
    pool = DescriptorPool(database)
    detector = pool.FindServiceByName("sodd.v1.Detector")
    assert {"Detect", "DetectBatch", "DetectStream", "ListModels", "GetModel", "ListDevices", "LoadModel",
            "UnloadModel", "WatchModels"} == {m.name for m in detector.methods}


BAD_REQUESTS = [
    ("undecodable bytes", pb.DetectRequest(image=pb.Image(encoded=b"this is not an image")),
     grpc.StatusCode.INVALID_ARGUMENT, "image.encoded"),
    ("empty bytes", pb.DetectRequest(image=pb.Image(encoded=b"")), grpc.StatusCode.INVALID_ARGUMENT, "image.encoded"),
    ("no image", pb.DetectRequest(), grpc.StatusCode.INVALID_ARGUMENT, "image"),
    ("decompression bomb header", pb.DetectRequest(image=pb.Image(encoded=png_header(100000, 100000))),
     grpc.StatusCode.INVALID_ARGUMENT, "megapixels"),
    ("zero-size header", pb.DetectRequest(image=pb.Image(encoded=png_header(0, 10))),
     grpc.StatusCode.INVALID_ARGUMENT, "image.encoded"),
    ("raw length mismatch",
     pb.DetectRequest(image=pb.Image(raw=pb.RawImage(height=4, width=4, channels=3, data=b"x" * 47))),
     grpc.StatusCode.INVALID_ARGUMENT, "image.raw.data"),
    ("raw zero size", pb.DetectRequest(image=pb.Image(raw=pb.RawImage(height=0, width=4, channels=3))),
     grpc.StatusCode.INVALID_ARGUMENT, "image.raw"),
    ("raw bad channels",
     pb.DetectRequest(image=pb.Image(raw=pb.RawImage(height=2, width=2, channels=2, data=b"x" * 8))),
     grpc.StatusCode.INVALID_ARGUMENT, "image.raw.channels"),
    ("raw above pixel limit", pb.DetectRequest(image=pb.Image(raw=pb.RawImage(height=10000, width=5000, channels=3))),
     grpc.StatusCode.INVALID_ARGUMENT, "megapixels"),
    ("unknown model", pb.DetectRequest(model="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    ("unknown version", pb.DetectRequest(model="tiny", version=7), grpc.StatusCode.NOT_FOUND, "version 7"),
    ("threshold above 1", pb.DetectRequest(threshold=1.5), grpc.StatusCode.INVALID_ARGUMENT, "threshold"),
    ("threshold below 0", pb.DetectRequest(threshold=-0.1), grpc.StatusCode.INVALID_ARGUMENT, "threshold"),
    ("threshold NaN", pb.DetectRequest(threshold=math.nan), grpc.StatusCode.INVALID_ARGUMENT, "threshold"),
    ("class id outside labels", pb.DetectRequest(class_thresholds=pb.ClassThresholds(thresholds={10: 0.3})),
     grpc.StatusCode.INVALID_ARGUMENT, "class id 10"),
    ("class threshold NaN", pb.DetectRequest(class_thresholds=pb.ClassThresholds(thresholds={1: math.nan})),
     grpc.StatusCode.INVALID_ARGUMENT, "class_thresholds[1]"),
]


def test_bad_inputs_get_their_status_and_the_daemon_keeps_serving(
        tiny_daemon: Daemon, client: Client, visdrone_image: Path) -> None:
    good = visdrone_image.read_bytes()
    before = boxes_of(client.detect(good, threshold=0.3))
    stub = tiny_daemon.channel()
    detect = stub.unary_unary("/sodd.v1.Detector/Detect", request_serializer=pb.DetectRequest.SerializeToString,
                              response_deserializer=pb.DetectResponse.FromString)
    for name, request, code, fragment in BAD_REQUESTS:
        if request.model in ("nope",) or request.version or request.WhichOneof("threshold_spec"):
            request.image.encoded = good  # only the field under test is wrong
        with pytest.raises(grpc.RpcError) as err:
            detect(request, timeout=30)
        assert err.value.code() == code, name
        assert fragment in err.value.details(), (name, err.value.details())
    # Too large for the daemon's 8 MiB message limit.
    with pytest.raises(grpc.RpcError) as err:
        detect(pb.DetectRequest(image=pb.Image(encoded=b"\0" * (9 * 1024 * 1024))), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # An empty batch and a bad image inside a batch name their field.
    with pytest.raises(grpc.RpcError) as err:
        client.detect_batch([])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "images" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        client.detect_batch([good, b"junk"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "images[1].encoded" in err.value.details()
    assert boxes_of(client.detect(good, threshold=0.3)) == before
    assert tiny_daemon.process.poll() is None


def test_client_cli_models_and_errors(tiny_daemon: Daemon, visdrone_image: Path, capsys, tmp_path: Path) -> None:
    import json

    assert client_main(["--server", tiny_daemon.address, "models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in listed} == {"tiny", "tiny-legacy"}
    assert client_main(["--server", tiny_daemon.address, "detect", str(visdrone_image), "--model", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert client_main(["--server", tiny_daemon.address, "detect", str(visdrone_image), "--threshold", "0.3",
                        "--print", "--save-img", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["res"]["input_path"] == str(visdrone_image) and printed["res"]["boxes"]
    drawn = cv2.imread(str(tmp_path / f"{visdrone_image.stem}_res.jpg"))
    assert drawn.shape == cv2.imread(str(visdrone_image)).shape
    assert client_main(["--server", tiny_daemon.address, "detect", str(tmp_path / "missing.jpg")]) == 2


def test_list_devices_shows_the_cpu_plugin(tiny_daemon: Daemon, client: Client, capsys) -> None:
    plugins = {p.name: p for p in client.list_devices()}
    cpu = plugins["cpu"]
    assert list(cpu.device_types) == ["cpu"] and cpu.devices[0].device == "cpu" and cpu.devices[0].available
    assert "paddle" in cpu.devices[0].facts
    assert client_main(["--server", tiny_daemon.address, "devices"]) == 0
    assert "cpu: available" in capsys.readouterr().out


def test_client_fetches_urls_itself(tiny_daemon: Daemon, visdrone_image: Path, tmp_path: Path) -> None:
    """An http URL is fetched by the client (the daemon never fetches), and PaddleX's input_path is the URL."""
    import functools
    import http.server
    import json
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(visdrone_image.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{visdrone_image.name}"
        assert client_main(["--server", tiny_daemon.address, "detect", url, "--threshold", "0.3",
                            "--save-json", str(tmp_path)]) == 0
    finally:
        server.shutdown()
    saved = json.loads((tmp_path / f"{visdrone_image.stem}_res.json").read_text())
    assert saved["input_path"] == url and saved["boxes"]
