"""Hostile input over the real request path: property tests (hypothesis) and a short coverage-guided
fuzz run (atheris). Every input must end in a response or an allowed status, never a crash."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sodd.tools.fuzzing import ALLOWED_CODES, LABELS, RequestPath
from sodd.v1 import detector_pb2 as pb

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def path():
    request_path = RequestPath(max_image_megapixels=4.0, max_request_images=16)
    yield request_path
    request_path.close()


def encoded(ext: str) -> bytes:
    yy, xx = np.mgrid[0:40, 0:56]
    return cv2.imencode(ext, np.dstack([xx * 4, yy * 6, xx + yy]).astype(np.uint8))[1].tobytes()


VALID = {ext: encoded(ext) for ext in (".jpg", ".png", ".webp", ".bmp", ".tiff")}


def png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


images = st.one_of(
    st.sampled_from(list(VALID.values())).map(lambda d: pb.Image(encoded=d)),
    st.tuples(st.sampled_from(list(VALID.values())), st.floats(0, 1)).map(
        lambda t: pb.Image(encoded=t[0][: int(len(t[0]) * t[1])])),  # truncated
    st.tuples(st.sampled_from(list(VALID.values())), st.integers(0, 10_000), st.integers(0, 255)).map(
        lambda t: pb.Image(encoded=t[0][: t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) + 1:])),
    st.binary(max_size=300).map(lambda d: pb.Image(encoded=d)),
    st.tuples(st.integers(1, 200_000), st.integers(1, 200_000)).map(lambda wh: pb.Image(encoded=png_bomb(*wh))),
    st.tuples(st.integers(0, 64), st.integers(0, 64), st.integers(0, 6), st.integers(0, 64 * 64 * 5)).map(
        lambda t: pb.Image(raw=pb.RawImage(height=t[0], width=t[1], channels=t[2], data=bytes(t[3])))),
    st.just(pb.Image()),
)
model_names = st.one_of(st.just(""), st.just("m"), st.text(max_size=20),
                        st.sampled_from(["../m", "m/..", "/etc/passwd", "m\x00", "модель", "..", "m/1"]))
thresholds = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32),
                       st.dictionaries(st.integers(-2**31, 2**31 - 1), st.floats(allow_nan=True, width=32),
                                       max_size=4))


def build(image: pb.Image, model: str, threshold, version: int, max_detections: int) -> pb.DetectRequest:
    request = pb.DetectRequest(image=image, model=model, version=version, max_detections=max_detections)
    if isinstance(threshold, dict):
        request.class_thresholds.SetInParent()
        for k, v in threshold.items():
            request.class_thresholds.thresholds[k] = v
    elif threshold is not None:
        request.threshold = threshold
    return request


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image=images, model=model_names, threshold=thresholds, version=st.integers(0, 2**64 - 1),
       max_detections=st.integers(0, 2**32 - 1))
def test_any_detect_request_gets_a_proper_answer(path: RequestPath, image, model, threshold, version,
                                                max_detections) -> None:
    outcome = path.detect(build(image, model, threshold, version, max_detections))
    assert outcome.code in ALLOWED_CODES, outcome
    if model not in ("", "m") or version not in (0, 1):
        assert outcome.code is grpc.StatusCode.NOT_FOUND  # names are looked up, never used as paths
        return
    bad_float = threshold is not None and not isinstance(threshold, dict) and (
        math.isnan(threshold) or not 0 <= threshold <= 1)
    bad_map = isinstance(threshold, dict) and any(
        not 0 <= k < len(LABELS) or math.isnan(v) or not 0 <= v <= 1 for k, v in threshold.items())
    if bad_float or bad_map:
        assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT and "threshold" in outcome.details
    if outcome.code is grpc.StatusCode.INVALID_ARGUMENT:
        assert outcome.details.startswith(("image", "threshold", "class_thresholds")), outcome.details


@settings(max_examples=60, deadline=None)
@given(count=st.integers(0, 40), image=images)
def test_any_batch_gets_a_proper_answer(path: RequestPath, count: int, image: pb.Image) -> None:
    outcome = path.detect_batch(pb.DetectBatchRequest(images=[image] * count, model="m"))
    assert outcome.code in ALLOWED_CODES, outcome
    if count == 0 or count > 16:
        assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT and "images" in outcome.details


def test_bombs_are_refused_from_the_header(path: RequestPath) -> None:
    outcome = path.detect(pb.DetectRequest(image=pb.Image(encoded=png_bomb(100_000, 100_000)), model="m"))
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT and "megapixels" in outcome.details


def test_a_short_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    result = subprocess.run([sys.executable, "-m", "sodd.cli", "fuzz", "--runs", "20000", "--corpus",
                             str(tmp_path / "corpus")], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Done 20000 runs" in result.stderr
    last = [line for line in result.stdout.splitlines() if line.startswith("sodd fuzz:")][-1]
    assert "INTERNAL" not in last and "UNKNOWN" not in last
