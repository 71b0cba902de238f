"""`sodd evaluate`: class mapping, result files, --server over real gRPC, --model on a real detector."""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sodd.commands import evaluate as evaluate_command
from sodd.datasets.coco import SplitData
from sodd.training.detections import class_to_category, run_detector
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PICODET = SHARED / "models" / "PicoDet-XS-416-coco"
VISDRONE = SHARED / "visdrone"


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    evaluate_command.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


def _dataset(root: Path) -> dict[str, Any]:
    """Three images; categories with gaps (2, 5, 9) to exercise the sorted-id class mapping."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for i in range(1, 4):
        Image.new("RGB", (80, 60), (i * 50, 0, 0)).save(root / "images" / f"im{i}.png")
        images.append({"id": i, "file_name": f"im{i}.png", "width": 80, "height": 60})
        for k, cat in enumerate((9, 2, 5)[:i]):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": cat,
                    "bbox": [5 + 20 * k, 5, 15, 40],
                    "area": 600,
                    "iscrowd": 0,
                }
            )
    cats = [{"id": 9, "name": "truck"}, {"id": 2, "name": "person"}, {"id": 5, "name": "bus"}]
    coco = {"images": images, "annotations": annotations, "categories": cats}
    for split in ("train", "val"):
        (root / "annotations" / f"instance_{split}.json").write_text(json.dumps(coco))
    return coco


def _perfect_boxes(coco: dict[str, Any]) -> dict[str, list[tuple]]:
    """file name -> the boxes a perfect model would return (class id by sorted category id)."""
    to_class = {c: i for i, c in enumerate(sorted(c["id"] for c in coco["categories"]))}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_file: dict[str, list[tuple]] = {}
    for img in coco["images"]:
        boxes = []
        for ann in coco["annotations"]:
            if ann["image_id"] == img["id"]:
                x, y, w, h = ann["bbox"]
                boxes.append((to_class[ann["category_id"]], names[ann["category_id"]], 0.9, x, y, x + w, y + h))
        by_file[img["file_name"]] = boxes
    return by_file


def test_class_ids_follow_sorted_category_ids(tmp_path: Path) -> None:
    coco = _dataset(tmp_path / "ds")
    assert class_to_category([9, 2, 5]) == [2, 5, 9]

    class Fake:
        labels = ("person", "bus", "truck", "extra")
        description = "fake"

        def detect_file(self, path: Path) -> list[tuple]:
            return [(0, "person", 0.8, 1, 2, 11, 22), (2, "truck", 0.7, 0, 0, 5, 5), (3, "extra", 0.6, 0, 0, 5, 5)]

        def close(self) -> None:
            pass

    split = SplitData("val", tmp_path / "ds" / "annotations" / "instance_val.json", coco)
    run = run_detector(Fake(), split, tmp_path / "ds")
    assert run.images == 3 and run.unmapped_boxes == 3
    assert [r["category_id"] for r in run.results[:2]] == [2, 9]
    assert run.results[0]["bbox"] == [1.0, 2.0, 10.0, 20.0]


class _FakeDaemon(pb_grpc.DetectorServicer):
    """Answers like the daemon, with perfect boxes looked up by the image's bytes."""

    def __init__(self, boxes_by_bytes: dict[bytes, list[tuple]], labels: list[str]) -> None:
        self.boxes_by_bytes = boxes_by_bytes
        self.labels = labels
        self.requests: list[pb.DetectRequest] = []

    def Detect(self, request: pb.DetectRequest, context: grpc.ServicerContext) -> pb.DetectResponse:  # noqa: N802
        self.requests.append(request)
        if request.image.encoded not in self.boxes_by_bytes:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "image.encoded: cannot decode")
        boxes = [
            pb.Box(cls_id=c, label=label, score=s, xmin=x1, ymin=y1, xmax=x2, ymax=y2)
            for c, label, s, x1, y1, x2, y2 in self.boxes_by_bytes[request.image.encoded]
        ]
        return pb.DetectResponse(boxes=boxes, model=request.model or "default")

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:  # noqa: N802
        return pb.ModelInfo(name=request.name or "default", labels=self.labels)


@contextlib.contextmanager
def _serve(servicer: pb_grpc.DetectorServicer) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_DetectorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_server_evaluation_of_a_perfect_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "ds"
    coco = _dataset(root)
    by_bytes = {(root / "images" / f).read_bytes(): b for f, b in _perfect_boxes(coco).items()}
    daemon = _FakeDaemon(by_bytes, ["person", "bus", "truck"])
    out = tmp_path / "out"
    with _serve(daemon) as address:
        code = run_cli(
            "--dataset", str(root), "--server", address, "--model", "sod", "--output", str(out), "--no-progress"
        )
    assert code == 0
    result = json.loads((out / "evaluate_result.json").read_text())
    assert result == {"done_flag": True, "metrics": {"AP": pytest.approx(1.0)}}
    report = json.loads((out / "evaluate_report.json").read_text())
    assert report["metrics"]["ap50"] == 1.0
    assert report["metrics"]["per_class"] == pytest.approx({"person": 1.0, "bus": 1.0, "truck": 1.0})
    assert report["class_to_category"]["0"] == {"category_id": 2, "name": "person"}
    assert report["model_labels"] == ["person", "bus", "truck"]
    assert len(json.loads((out / "detections.json").read_text())) == 6
    # Every box the model keeps counts: the request asks for threshold 0, not the model's default.
    assert {r.model for r in daemon.requests} == {"sod"}
    assert all(r.WhichOneof("threshold_spec") == "threshold" and r.threshold == 0.0 for r in daemon.requests)
    table = capsys.readouterr().out
    assert "mAP (0.5:0.95)          1.0000" in table
    assert "   9  truck" in table


def test_daemon_error_names_the_image(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    coco = _dataset(root)
    by_bytes = {(root / "images" / f).read_bytes(): b for f, b in _perfect_boxes(coco).items() if f != "im3.png"}
    out = tmp_path / "out"
    with _serve(_FakeDaemon(by_bytes, [])) as address:
        assert run_cli("--dataset", str(root), "--server", address, "--output", str(out), "--no-progress") == 1
    result = json.loads((out / "evaluate_result.json").read_text())
    assert result["done_flag"] is False
    assert "images/im3.png (image id 3): INVALID_ARGUMENT: image.encoded: cannot decode" in result["err_msg"]


def test_unreachable_daemon_or_model_directory_fails_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _dataset(root)
    out = tmp_path / "out"
    assert run_cli("--dataset", str(root), "--server", "127.0.0.1:1", "--output", str(out)) == 1
    assert (
        "daemon 127.0.0.1:1, model (default): UNAVAILABLE"
        in json.loads((out / "evaluate_result.json").read_text())["err_msg"]
    )
    assert run_cli("--dataset", str(root), "--model", str(tmp_path / "nowhere"), "--output", str(out)) == 1
    message = json.loads((out / "evaluate_result.json").read_text())["err_msg"]
    assert message.startswith(f"cannot load the model directory {tmp_path / 'nowhere'}")


def test_bad_dataset_writes_failed_result(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _dataset(root)
    (root / "images" / "im2.png").unlink()
    out = tmp_path / "out"
    assert run_cli("--dataset", str(root), "--server", "127.0.0.1:1", "--output", str(out)) == 1
    result = json.loads((out / "evaluate_result.json").read_text())
    assert result["done_flag"] is False and result["err_type"] == "DatasetFileNotFoundError"
    assert "images/im2.png" in result["err_msg"]


@pytest.fixture(scope="module")
def cars_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The VisDrone demo image with its 34 cars, categories as PP-PicoDet-XS's 80 COCO labels."""
    if not (PICODET / "inference.pdiparams").is_file() or not VISDRONE.is_dir():
        pytest.skip(f"real detector or image absent: {PICODET}, {VISDRONE} (../shared/data)")
    import yaml

    labels = yaml.safe_load((PICODET / "inference.yml").read_text())["label_list"]
    root = tmp_path_factory.mktemp("eval") / "cars"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "images" / "demo.jpg").symlink_to(VISDRONE / "0000315_01601_d_0000509.jpg")
    anns = []
    for line in (VISDRONE / "0000315_01601_d_0000509.txt").read_text().splitlines():
        x, y, w, h, _, cat = (int(v) for v in line.split(",")[:6])
        if cat == 4:  # VisDrone car -> category 3, the model's class 2 "car"
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 1,
                    "category_id": 3,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    gt = {
        "images": [{"id": 1, "file_name": "demo.jpg", "width": 1360, "height": 765}],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(labels)],
        "annotations": anns,
    }
    (root / "annotations" / "instance_val.json").write_text(json.dumps(gt))
    return root, gt


def test_real_detector_matches_independent_pycocotools(
    cars_dataset: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """PP-PicoDet-XS on the VisDrone demo image, scored on its 34 cars."""
    root, gt = cars_dataset
    out = tmp_path / "out"
    assert run_cli("--dataset", str(root), "--model", str(PICODET), "--output", str(out), "--no-progress") == 0

    ap = json.loads((out / "evaluate_result.json").read_text())["metrics"]["AP"]
    detections = json.loads((out / "detections.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert len(gt["annotations"]) == 34
    assert abs(ap - ev.stats[0]) <= 1e-9
    assert ev.stats[1] > 0.2  # the model finds a good share of the cars at IoU 0.5


def test_served_model_scores_as_the_local_one(cars_dataset: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """The same model through a real daemon gives the same boxes, hence the same numbers."""
    from tests.conftest import start_daemon

    root, _ = cars_dataset
    local, served = tmp_path / "local", tmp_path / "served"
    assert run_cli("--dataset", str(root), "--model", str(PICODET), "--output", str(local), "--no-progress") == 0
    daemon = start_daemon(["--model", f"picodet={PICODET}"], tmp_path / "daemon.log")
    try:
        code = run_cli(
            "--dataset", str(root), "--server", daemon.address, "--model", "picodet", "--output", str(served),
            "--no-progress",
        )  # fmt: skip
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert code == 0
    assert (served / "detections.json").read_bytes() == (local / "detections.json").read_bytes()
    assert (served / "evaluate_result.json").read_bytes() == (local / "evaluate_result.json").read_bytes()
    report = json.loads((served / "evaluate_report.json").read_text())
    assert report["model_labels"][2] == "car"
