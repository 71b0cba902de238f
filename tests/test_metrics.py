"""Metrics and request logs of a real daemon: promtool accepts a real scrape, every series the
docs promise is there with the values the requests imply, and each request leaves one log line."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sodd_client import Client

from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import Daemon, memory_is_emulated, start_daemon
from tests.metrics_helpers import metrics_url, prometheus_tool, samples, scrape, value
from tests.service_helpers import wait_until

MODEL = {"model": "tiny", "version": "1", "device": "cpu"}
FAMILIES = {
    "sodd_requests_total", "sodd_request_duration_seconds", "sodd_requests_in_flight", "sodd_queue_depth",
    "sodd_stage_duration_seconds", "sodd_batch_size", "sodd_detections_per_image", "sodd_input_pixels",
    "sodd_model_load_duration_seconds", "sodd_model_load_failures_total", "sodd_model_swap_duration_seconds",
    "sodd_model_swap_failures_total", "sodd_model_info", "sodd_build_info",
    "process_cpu_seconds_total", "process_resident_memory_bytes", "python_info", "python_gc_collections_total",
}


@pytest.fixture(scope="module")
def daemon(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    log = tmp_path_factory.mktemp("metrics") / "daemon.log"
    d = start_daemon(["--model", f"tiny={tiny_model_dirs['both']}", "--log-level", "DEBUG",
                      "--log-format", "json"], log)
    yield d
    assert d.stop() == 0, d.log()


@pytest.fixture(scope="module")
def traffic(daemon: Daemon, real_images: list[Path]) -> dict[str, str]:
    """Two Detects, one DetectBatch of three images, and two failures; request id -> expected code."""
    datas = [p.read_bytes() for p in real_images]
    with Client(daemon.address, timeout=60) as client:
        client.detect(datas[0], threshold=0.3, request_id="ok-1")
        client.detect(datas[1], request_id="ok-2")
        batch = client.detect_batch(datas, threshold=0.3, request_id="batch-1")
        assert len(batch.results) == 3
        for request_id, kwargs in (("bad-image", {"image": b"not an image"}),
                                   ("bad-model", {"image": datas[0], "model": "no-such-model"})):
            with pytest.raises(grpc.RpcError):
                client.detect(request_id=request_id, **kwargs)
    return {"ok-1": "OK", "ok-2": "OK", "batch-1": "OK", "bad-image": "INVALID_ARGUMENT",
            "bad-model": "NOT_FOUND"}


def test_promtool_accepts_a_real_scrape(daemon: Daemon, traffic: dict[str, str]) -> None:
    promtool = prometheus_tool("promtool")
    text = scrape(metrics_url(daemon))
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert not FAMILIES - names, FAMILIES - names


def test_series_follow_the_requests(daemon: Daemon, traffic: dict[str, str]) -> None:
    s = samples(scrape(metrics_url(daemon)))
    assert value(s, "sodd_requests_total", **MODEL, method="Detect", code="OK") == 2
    assert value(s, "sodd_requests_total", **MODEL, method="DetectBatch", code="OK") == 1
    assert value(s, "sodd_requests_total", **MODEL, code="INVALID_ARGUMENT") == 1
    # An unknown model name is never a label value.
    assert value(s, "sodd_requests_total", model="unknown", code="NOT_FOUND") == 1
    assert not any(("model", "no-such-model") in labels for _, labels in s)
    assert value(s, "sodd_request_duration_seconds_count", **MODEL) == 4
    assert value(s, "sodd_request_duration_seconds_bucket", **MODEL, method="Detect", code="OK", le="+Inf") == 2
    # Five images; the batch's three images ran as one predictor run.
    assert value(s, "sodd_detections_per_image_count", **MODEL) == 5
    assert value(s, "sodd_input_pixels_count", **MODEL) == 5
    assert value(s, "sodd_batch_size_count", **MODEL) == 3
    assert value(s, "sodd_batch_size_sum", **MODEL) == 5
    # Decode and preprocess once per request (three answered), the other stages once per image.
    for stage, count in (("decode", 3), ("preprocess", 3), ("queue_wait", 5), ("inference", 5), ("postprocess", 5)):
        assert value(s, "sodd_stage_duration_seconds_count", **MODEL, stage=stage) == count, stage
        assert value(s, "sodd_stage_duration_seconds_sum", **MODEL, stage=stage) > 0, stage
    assert value(s, "sodd_requests_in_flight", **MODEL) == 0
    assert value(s, "sodd_queue_depth", **MODEL) == 0
    assert value(s, "sodd_model_load_duration_seconds_count", **MODEL) == 1
    assert value(s, "sodd_model_info", **MODEL, model_name="PP-YOLOE_plus_SOD-S", program_format="pir") == 1
    assert value(s, "sodd_build_info") == 1
    assert value(s, "process_resident_memory_bytes") > 0 or memory_is_emulated()


def test_one_log_line_per_request(daemon: Daemon, traffic: dict[str, str]) -> None:
    lines = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    requests = [entry for entry in lines if entry["logger"] == "sodd.requests" and entry["request_id"] in traffic]
    by_id = {entry["request_id"]: entry for entry in requests}
    assert len(requests) == len(by_id) == len(traffic)
    for request_id, code in traffic.items():
        entry = by_id[request_id]
        assert entry["code"] == code
        assert entry["level"] == ("DEBUG" if code == "OK" else "WARNING")
        assert entry["latency_seconds"] > 0 and entry["time"].endswith("+00:00")
        assert {"method", "model", "version", "device"} <= set(entry)
    assert by_id["batch-1"]["images"] == 3 and by_id["batch-1"]["method"] == "DetectBatch"
    assert (by_id["ok-1"]["model"], by_id["ok-1"]["version"], by_id["ok-1"]["device"]) == ("tiny", "1", "cpu")
    assert "image.encoded" in by_id["bad-image"]["error"]
    assert by_id["bad-model"]["model"] == "unknown"


def test_every_grpc_method_has_its_codes_and_latency(daemon: Daemon, traffic: dict[str, str]) -> None:
    """Not only detection: listings, health checks and watches count too, under their full method name."""
    url = metrics_url(daemon)
    calls = "sodd_grpc_calls_total"
    before = samples(scrape(url))
    with grpc.insecure_channel(daemon.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as missing:
            health.Check(health_pb2.HealthCheckRequest(service="no-such-service"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        pb_grpc.DetectorStub(channel).ListModels(pb.ListModelsRequest())
    after = samples(scrape(url))
    check = "/grpc.health.v1.Health/Check"
    listing = "/sodd.v1.Detector/ListModels"
    for method, code in ((check, "OK"), (check, "NOT_FOUND"), (listing, "OK")):
        assert value(after, calls, grpc_method=method, code=code) == value(before, calls, grpc_method=method,
                                                                            code=code) + 1, (method, code)
    assert value(after, "sodd_grpc_call_duration_seconds_count", grpc_method=listing) >= 1
    # The detection traffic is there as well, beside its per-model series.
    assert value(after, calls, grpc_method="/sodd.v1.Detector/Detect", code="NOT_FOUND") == 1
    assert value(after, calls, grpc_method="/sodd.v1.Detector/Detect", code="OK") == 2


def test_stream_frames_count_one_by_one(daemon: Daemon, visdrone_image: Path) -> None:
    image = visdrone_image.read_bytes()
    frames = [pb.DetectRequest(image=pb.Image(encoded=data), request_id=f"frame-{i}")
              for i, data in enumerate((image, b"junk", image))]
    stub = pb_grpc.DetectorStub(daemon.channel())
    answers = list(stub.DetectStream(iter(frames), timeout=60))
    assert [a.WhichOneof("result") for a in answers] == ["response", "error", "response"]
    s = samples(scrape(metrics_url(daemon)))
    assert value(s, "sodd_requests_total", **MODEL, method="DetectStream", code="OK") == 2
    assert value(s, "sodd_requests_total", **MODEL, method="DetectStream", code="INVALID_ARGUMENT") == 1
    assert value(s, "sodd_request_duration_seconds_count", **MODEL, method="DetectStream") == 3
    assert value(s, "sodd_requests_in_flight", **MODEL) == 0
    logged = [json.loads(line) for line in daemon.log().splitlines() if '"frame-' in line and "sodd.requests" in line]
    assert sorted((e["request_id"], e["code"]) for e in logged) == [
        ("frame-0", "OK"), ("frame-1", "INVALID_ARGUMENT"), ("frame-2", "OK")]


def test_swaps_and_failed_versions(tiny_model_dirs: dict[str, Path], tmp_path: Path, visdrone_image: Path) -> None:
    """Version 1 counts as a load, version 2 as a swap, a broken version 3 as a failed swap."""
    root = tmp_path / "repository" / "tiny"
    root.mkdir(parents=True)
    shutil.copytree(tiny_model_dirs["pir"], root / "1")
    d = start_daemon(["--model-repository", str(root.parent), "--settle-seconds", "0.3"], tmp_path / "daemon.log")
    try:
        url = metrics_url(d)
        # An answered request also means the daemon's start-up is over, SIGHUP handler included.
        with Client(d.address, timeout=60) as client:
            assert client.detect(visdrone_image.read_bytes()).version == 1
        for version, broken in ((2, False), (3, True)):
            staging = root.parent / f".staging-{version}"
            shutil.copytree(tiny_model_dirs["pir"], staging)
            if broken:
                (staging / "inference.yml").write_text("Global: {model_name: [unclosed\n")
            staging.rename(root / str(version))
            d.process.send_signal(signal.SIGHUP)  # re-read now rather than wait for the file watcher
            swapped = "sodd_model_swap_failures_total" if broken else "sodd_model_swap_duration_seconds_count"
            def followed(name: str = swapped, v: str = str(version)) -> bool:
                return value(samples(scrape(url)), name, model="tiny", version=v) == 1

            wait_until(followed, 30, interval=0.2, what=f"version {version} followed")
        s = samples(scrape(url))
        assert value(s, "sodd_model_load_duration_seconds_count", model="tiny", version="1") == 1
        assert value(s, "sodd_model_load_failures_total") == 0
        # Version 2 serves; the broken 3 never does.
        wait_until(lambda: {dict(ls)["version"] for n, ls in samples(scrape(url)) if n == "sodd_model_info"} == {"2"},
                   10, interval=0.2, what="only version 2 in sodd_model_info")
        with Client(d.address, timeout=60) as client:
            assert client.detect(visdrone_image.read_bytes()).version == 2
        assert value(samples(scrape(url)), "sodd_requests_total", model="tiny", version="2", code="OK") == 1
    finally:
        assert d.stop() == 0, d.log()
