"""sodd.serving.kserve without client libraries: the committed code matches proto/sodd/oip, requests are
checked and converted as documented, and the service keeps the daemon's tokens and metrics."""

from __future__ import annotations

import struct
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from sodd.config.schema import DEFAULT_MODEL_DIR
from sodd.errors import InvalidArgument
from sodd.oip import grpc_service_pb2 as pb
from sodd.oip import grpc_service_pb2_grpc as pb_grpc
from sodd.serving.kserve import parse_slicing, parse_threshold, read_infer_request
from tests.conftest import start_daemon
from tests.service_helpers import jpeg_bytes

REPO = Path(__file__).resolve().parent.parent
DETECT_TOKEN = "detect-only-token-0123456789"
MANAGE_TOKEN = "manage-token-0123456789abcdef"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    # What `make proto` runs for sodd/oip, into a scratch folder.
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'proto'}", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", "sodd/oip/grpc_service.proto"],
                   check=True, cwd=REPO)
    for generated in (tmp_path / "sodd" / "oip").iterdir():
        committed = REPO / "sodd" / "oip" / generated.name
        assert committed.read_text() == generated.read_text(), f"regenerate {committed}"


def encoded_request(*images: bytes, **params: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="default")
    request.inputs.add(name="images", datatype="BYTES", shape=[len(images)])
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(i)) + i for i in images))
    for key, value in params.items():
        field = {bool: "bool_param", int: "int64_param", float: "double_param", str: "string_param"}[type(value)]
        setattr(request.parameters[key], field, value)
    return request


def test_requests_are_read_as_documented() -> None:
    call = read_infer_request(encoded_request(b"a", b"bc", threshold="0:0.5,3:0.25", max_detections=7,
                                              slicing='{"slice_height": 256, "overlap_height_ratio": 0.2}'))
    assert [i.data for i in call.images] == [b"a", b"bc"]
    assert call.options.threshold == {0: 0.5, 3: 0.25} and call.options.max_detections == 7
    assert call.options.slicing is not None and call.options.slicing.given["slice_height"] == 256
    assert call.options.slicing.given["overlap_height_ratio"] == float(np.float32(0.2))  # as Detect's float
    assert parse_threshold(0.3, "threshold") == float(np.float32(0.3))
    assert parse_slicing(False).enabled is False
    pixels = pb.ModelInferRequest(model_name="default")
    pixels.inputs.add(name="images", datatype="UINT8", shape=[2, 2, 3])
    rgb = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    pixels.raw_input_contents.append(rgb.tobytes())
    (image,) = read_infer_request(pixels).images
    assert np.array_equal(image.data, rgb[:, :, ::-1])  # RGB in, BGR to the core
    for bad, message in ((encoded_request(b"a", treshold=0.3), "unknown parameter"),
                         (encoded_request(b"a", threshold=True), "threshold"),
                         (encoded_request(b"a", max_detections=-1), "max_detections"),
                         (encoded_request(b"a", slicing="{\"window\": 3}"), "no field")):
        with pytest.raises(InvalidArgument, match=message):
            read_infer_request(bad)
    cut = encoded_request(b"abc")
    cut.raw_input_contents[0] = cut.raw_input_contents[0][:-1]
    with pytest.raises(InvalidArgument, match="cut short"):
        read_infer_request(cut)


def test_tokens_limits_and_metrics_apply(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'"{DETECT_TOKEN}" = ["other"]\n"{MANAGE_TOKEN}" = "*"\n')
    tokens.chmod(0o600)
    daemon = start_daemon(["--model", f"default={DEFAULT_MODEL_DIR}", "--tokens-file", str(tokens),
                           "--max-image-megapixels", "0.05"], tmp_path / "daemon.log", threads=1)
    try:
        with daemon.channel() as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            def code(call: object, request: object, token: str | None) -> grpc.StatusCode:
                metadata = [("authorization", f"Bearer {token}")] if token else None
                try:
                    call(request, metadata=metadata)  # type: ignore[operator]
                except grpc.RpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

            small = encoded_request(jpeg_bytes(160, 120))
            assert code(stub.ModelInfer, small, None) == grpc.StatusCode.UNAUTHENTICATED
            assert code(stub.ModelInfer, small, DETECT_TOKEN) == grpc.StatusCode.PERMISSION_DENIED
            assert code(stub.ModelInfer, small, MANAGE_TOKEN) == grpc.StatusCode.OK
            # The same image limit as Detect, from the header.
            large = encoded_request(jpeg_bytes(640, 480))
            assert code(stub.ModelInfer, large, MANAGE_TOKEN) == grpc.StatusCode.INVALID_ARGUMENT
            unload = pb.RepositoryModelUnloadRequest(model_name="default")
            assert code(stub.RepositoryModelUnload, unload, DETECT_TOKEN) == grpc.StatusCode.PERMISSION_DENIED
            index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=[
                ("authorization", f"Bearer {DETECT_TOKEN}")])
            assert not index.models  # a token sees only its models
        metrics_url = next(line.split("metrics on ")[1].strip() for line in daemon.log().splitlines()
                           if "metrics on " in line)
        text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
        assert 'method="ModelInfer"' in text and 'code="INVALID_ARGUMENT"' in text
    finally:
        daemon.stop()


def test_a_model_infer_past_its_deadline_counts_as_the_deadlines(tmp_path: Path) -> None:
    """KServe requests end like sodd.v1's: one cut short by its deadline is counted under cause
    "deadline", not as cancelled by its client."""
    import cv2

    from tests.metrics_helpers import metrics_url, samples, scrape
    from tests.service_helpers import wait_until

    daemon = start_daemon(["--model", f"default={DEFAULT_MODEL_DIR}"], tmp_path / "daemon.log", threads=1)
    try:
        url = metrics_url(daemon)

        def cancelled(cause: str) -> float:
            return samples(scrape(url)).get(
                ("sodd_requests_cancelled_total", frozenset({("method", "ModelInfer"), ("cause", cause)})), 0.0)

        # A 4K frame in 640-pixel windows: about 40 network runs, far longer than the deadline.
        frame = cv2.imencode(".jpg", np.random.default_rng(3).integers(0, 255, (2160, 3840, 3), np.uint8))[1]
        request = encoded_request(frame.tobytes(), slicing='{"slice_height": 640, "slice_width": 640}')
        with daemon.channel() as channel, pytest.raises(grpc.RpcError) as ended:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=0.3)
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: cancelled("deadline") == 1, 30, what="the deadline counted")
        assert cancelled("client") == 0
    finally:
        daemon.stop()
