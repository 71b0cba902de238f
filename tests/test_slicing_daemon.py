"""Sliced inference through the daemon: the same boxes as the in-process slicer, slices counted,
options validated, and slicing per request or off."""

from __future__ import annotations

from pathlib import Path

import cv2
import grpc
import pytest

from sodd.model.slicing import SliceOptions
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import start_daemon

OPTIONS = SliceOptions(slice_height=416, slice_width=416, overlap_height_ratio=0.25, overlap_width_ratio=0.25,
                       full_image=True, merge="nms", match_metric="ios", match_threshold=0.5)


@pytest.fixture(scope="module")
def daemon(picodet_dir: Path, tmp_path_factory):
    d = start_daemon(["--model", f"pico={picodet_dir}"], tmp_path_factory.mktemp("slicing") / "d.log")
    yield d
    assert d.stop() == 0


def request(image: Path, **slicing: object) -> pb.DetectRequest:
    return pb.DetectRequest(image=pb.Image(encoded=image.read_bytes()), threshold=0.3,
                            slicing=pb.Slicing(**slicing))


def test_daemon_slices_like_the_local_slicer(daemon, picodet_dir: Path, visdrone_image: Path) -> None:
    from sodd.runtime.local import LocalDetector

    local = LocalDetector(picodet_dir, threads=2)
    try:
        expected, slices = local.detect_sliced(cv2.imread(str(visdrone_image)), OPTIONS, threshold=0.3)
    finally:
        local.close()
    stub = pb_grpc.DetectorStub(daemon.channel())
    response = stub.Detect(request(visdrone_image, slice_height=416, slice_width=416, overlap_height_ratio=0.25,
                                   overlap_width_ratio=0.25, full_image=True, merge="nms", match_metric="ios",
                                   match_threshold=0.5), timeout=120)
    assert response.slices == slices > 1
    assert response.timings.slicing_seconds > 0 and response.timings.merging_seconds > 0
    got = [(b.cls_id, round(b.score, 4), round(b.xmin, 1), round(b.ymax, 1)) for b in response.boxes]
    want = [(b.cls_id, round(b.score, 4), round(b.xmin, 1), round(b.ymax, 1)) for b in expected]
    assert got == want
    plain = stub.Detect(pb.DetectRequest(image=pb.Image(encoded=visdrone_image.read_bytes()), threshold=0.3),
                        timeout=60)
    assert plain.slices == 1 and len(response.boxes) > len(plain.boxes)


def test_auto_slicing_and_switching_it_off(daemon, visdrone_image: Path) -> None:
    stub = pb_grpc.DetectorStub(daemon.channel())
    assert stub.Detect(request(visdrone_image, auto=True), timeout=120).slices > 1
    assert stub.Detect(request(visdrone_image), timeout=120).slices > 1  # an empty Slicing means auto
    assert stub.Detect(request(visdrone_image, enabled=False), timeout=60).slices == 1


@pytest.mark.parametrize(("fields", "named"), [
    ({"merge": "average"}, "slicing.merge"),
    ({"match_metric": "dice"}, "slicing.match_metric"),
    ({"slice_height": 8, "slice_width": 416}, "slicing.slice_height"),
    ({"auto": True, "slice_height": 416}, "slicing.slice_height"),
    ({"overlap_width_ratio": 1.5}, "slicing.overlap_width_ratio"),
    ({"match_threshold": 0.0}, "slicing.match_threshold"),
])
def test_bad_slicing_options_name_the_field(daemon, visdrone_image: Path, fields: dict, named: str) -> None:
    stub = pb_grpc.DetectorStub(daemon.channel())
    with pytest.raises(grpc.RpcError) as err:
        stub.Detect(request(visdrone_image, **fields), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and named in err.value.details()
