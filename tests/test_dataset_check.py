"""`sodd dataset check`: PaddleX's result schema on real data, and every bad-dataset case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sodd.datasets.check import RESULT_FILE, check_dataset
from tests.dataset_helpers import run_cli, snapshot

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAHI = SHARED / "sahi"
needs_shared = pytest.mark.skipif(
    not SAHI.is_dir(), reason=f"real test data absent: {SAHI} (../shared/data is not beside the repository)"
)

PADDLEX_KEYS = [
    "done_flag",
    "check_pass",
    "attributes",
    "analysis",
    "dataset_path",
    "show_type",
    "dataset_type",
]


# --- real data ---------------------------------------------------------------------------------


def _terrain(tmp_path: Path) -> Path:
    root = tmp_path / "terrain"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name in ("terrain1.jpg", "terrain2.png"):
        (root / "images" / name).symlink_to(SAHI / name)
    (root / "annotations" / "instance_train.json").symlink_to(SAHI / "terrain1_coco.json")
    (root / "annotations" / "instance_val.json").symlink_to(SAHI / "terrain2_coco.json")
    return root


@needs_shared
def test_terrain_passes_with_paddlex_schema_and_counts(tmp_path: Path) -> None:
    root = _terrain(tmp_path)
    out = tmp_path / "out"
    assert run_cli("check", str(root), "--output", str(out)) == 0

    result = json.loads((out / RESULT_FILE).read_text())
    assert list(result) == PADDLEX_KEYS
    assert result["done_flag"] is True and result["check_pass"] is True
    assert result["attributes"] == {
        "num_classes": 1,
        "train_samples": 1,
        "train_sample_paths": ["check_dataset/demo_img/terrain1.jpg"],
        "val_samples": 1,
        "val_sample_paths": ["check_dataset/demo_img/terrain2.png"],
    }
    assert result["analysis"] == {"histogram": "check_dataset/histogram.png"}
    assert (result["dataset_path"], result["show_type"], result["dataset_type"]) == (
        "terrain",
        "image",
        "COCODetDataset",
    )
    for rel in [result["analysis"]["histogram"], *result["attributes"]["train_sample_paths"]]:
        assert (out / rel).stat().st_size > 0

    _, dataset = check_dataset(root, tmp_path / "out2")
    assert dataset is not None
    assert (dataset.splits["train"].num_annotations, dataset.splits["val"].num_annotations) == (7, 5)
    # Both files use category id 1, for different names: a warning, not a failure (as in PaddleX).
    assert dataset.warnings == ["category 1 is 'human' in instance_train.json but 'car' in instance_val.json"]


@needs_shared
def test_annotation_file_without_its_images_fails_naming_a_missing_file(tmp_path: Path) -> None:
    root = tmp_path / "vd50"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for split in ("train", "val"):
        (root / "annotations" / f"instance_{split}.json").symlink_to(SAHI / "visdrone2019-det-train-first50image.json")
    out = tmp_path / "out"
    assert run_cli("check", str(root), "--output", str(out)) == 1
    result = json.loads((out / RESULT_FILE).read_text())
    assert result["done_flag"] is False and result["check_pass"] is False
    assert result["err_type"] == "DatasetFileNotFoundError"
    assert result["err_msg"].startswith("images/images/9999960_00000_d_0000166.jpg does not exist")
    assert "annotations/instance_train.json: images[0] (id 1" in result["err_msg"]
    assert "49 more image files are missing" in result["err_msg"]


# --- bad datasets ------------------------------------------------------------------------------


def _good(root: Path) -> dict[str, Any]:
    """A small valid dataset: two 64x48 images per split, one category."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    files = {}
    for split, offset in (("train", 0), ("val", 2)):
        images = []
        for i in (1, 2):
            name = f"{split}{i}.jpg"
            Image.new("RGB", (64, 48), (i * 40, 80, 120)).save(root / "images" / name)
            images.append({"id": i + offset, "file_name": name, "width": 64, "height": 48})
        coco = {
            "images": images,
            "categories": [{"id": 1, "name": "car"}],
            "annotations": [
                {"id": 1, "image_id": 1 + offset, "category_id": 1, "bbox": [4, 4, 20, 10], "iscrowd": 0},
                {"id": 2, "image_id": 2 + offset, "category_id": 1, "bbox": [30, 20, 34, 28], "iscrowd": 0},
            ],
        }
        files[split] = coco
        (root / "annotations" / f"instance_{split}.json").write_text(json.dumps(coco, indent=1))
    return files


def _rewrite(root: Path, split: str, coco: dict[str, Any]) -> None:
    (root / "annotations" / f"instance_{split}.json").write_text(json.dumps(coco, indent=1))


def _break_missing_image(root: Path, files: dict[str, Any]) -> None:
    (root / "images" / "val2.jpg").unlink()


def _break_json(root: Path, files: dict[str, Any]) -> None:
    path = root / "annotations" / "instance_train.json"
    path.write_text(path.read_text()[:-20])


def _break_outside(root: Path, files: dict[str, Any]) -> None:
    files["val"]["annotations"][1]["bbox"] = [30, 20, 40, 28]  # x2 70 > width 64
    _rewrite(root, "val", files["val"])


def _break_size(root: Path, files: dict[str, Any]) -> None:
    files["train"]["annotations"][1]["bbox"] = [30, 20, 0, 10]
    _rewrite(root, "train", files["train"])


def _break_category(root: Path, files: dict[str, Any]) -> None:
    files["train"]["annotations"][0]["category_id"] = 7
    _rewrite(root, "train", files["train"])


def _break_empty_split(root: Path, files: dict[str, Any]) -> None:
    _rewrite(root, "val", {"images": [], "annotations": [], "categories": files["val"]["categories"]})


def _break_image_content(root: Path, files: dict[str, Any]) -> None:
    (root / "images" / "val1.jpg").write_bytes(b"not a jpeg")


def _break_truncated_image(root: Path, files: dict[str, Any]) -> None:
    path = root / "images" / "train1.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\xff\xda") + 16])  # cut after the start of scan: header intact, pixels not


def _break_missing_annotation_file(root: Path, files: dict[str, Any]) -> None:
    (root / "annotations" / "instance_val.json").unlink()


BAD_CASES = {
    "missing image": (
        _break_missing_image,
        "DatasetFileNotFoundError",
        ["images/val2.jpg does not exist", "annotations/instance_val.json: images[1] (id 4"],
    ),
    "malformed json": (
        _break_json,
        "CheckFailedError",
        ["annotations/instance_train.json is not valid JSON", "line"],
    ),
    "box outside image": (
        _break_outside,
        "CheckFailedError",
        [
            "annotations/instance_val.json: annotations[1] (id 2) on image 4 'val2.jpg'",
            "outside the image 64x48",
        ],
    ),
    "non-positive size": (
        _break_size,
        "CheckFailedError",
        [
            "annotations/instance_train.json: annotations[1] (id 2) on image 2 'train2.jpg'",
            "non-positive size",
        ],
    ),
    "unknown category": (
        _break_category,
        "CheckFailedError",
        ["annotations/instance_train.json: annotations[0] (id 1)", "category_id 7 does not exist"],
    ),
    "empty split": (
        _break_empty_split,
        "CheckFailedError",
        ["annotations/instance_val.json: the split is empty"],
    ),
    "unreadable image": (
        _break_image_content,
        "CheckFailedError",
        ["images/val1.jpg is not a readable image: it is annotations/instance_val.json: images[0] (id 3)"],
    ),
    "truncated image": (
        _break_truncated_image,
        "CheckFailedError",
        ["images/train1.jpg cannot be decoded: it is annotations/instance_train.json: image id 1"],
    ),
    "missing annotation file": (
        _break_missing_annotation_file,
        "DatasetFileNotFoundError",
        ["annotations/instance_val.json does not exist"],
    ),
}


def test_small_valid_dataset_passes(tmp_path: Path) -> None:
    _good(tmp_path / "ds")
    result, dataset = check_dataset(tmp_path / "ds", tmp_path / "out")
    assert result["check_pass"] is True, result
    assert result["attributes"]["train_samples"] == 2 and result["attributes"]["val_samples"] == 2


def test_dataset_one_level_down_is_found(tmp_path: Path) -> None:
    """As PaddleX does for an unpacked archive: the one folder holding images/ is the root."""
    _good(tmp_path / "archive" / "ds")
    result, _ = check_dataset(tmp_path / "archive", tmp_path / "out")
    assert result["check_pass"] is True and result["dataset_path"] == "ds"


def test_stated_size_differing_from_the_image_is_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    files = _good(root)
    files["train"]["images"][1]["width"] = 100
    _rewrite(root, "train", files["train"])
    result, dataset = check_dataset(root, tmp_path / "out")
    assert result["check_pass"] is True and dataset is not None
    assert dataset.warnings == [
        "annotations/instance_train.json: images[1] (id 2) 'train2.jpg' states 100x48, the image is 64x48"
    ]


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_dataset_fails_naming_file_and_entry(tmp_path: Path, case: str) -> None:
    breaker, err_type, fragments = BAD_CASES[case]
    root = tmp_path / "ds"
    breaker(root, _good(root))
    before = snapshot(root)

    out = tmp_path / "out"
    assert run_cli("check", str(root), "--output", str(out)) == 1
    result = json.loads((out / RESULT_FILE).read_text())
    assert result == {
        "done_flag": False,
        "check_pass": False,
        "err_type": err_type,
        "err_msg": result["err_msg"],
    }
    for fragment in fragments:
        assert fragment in result["err_msg"]
    assert snapshot(root) == before  # a check never touches the dataset
