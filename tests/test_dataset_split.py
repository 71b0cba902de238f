"""`sodd dataset split`: PaddleX's re-split with .bak files, and nothing changed on failure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sodd.datasets.check import check_dataset
from sodd.datasets.errors import SplitFailedError
from sodd.datasets.split import split_dataset
from tests.dataset_helpers import run_cli, snapshot


def _dataset(root: Path, n_train: int = 7, n_val: int = 3) -> None:
    """Image ids restart at 1 in each file, as independently made files do."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for split, n in (("train", n_train), ("val", n_val)):
        images, annotations = [], []
        for i in range(1, n + 1):
            name = f"{split}{i}.jpg"
            Image.new("RGB", (32, 32)).save(root / "images" / name)
            images.append({"id": i, "file_name": name, "width": 32, "height": 32})
            for k in range(i % 3 + 1):
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": i, "category_id": 1 + k % 2, "bbox": [k, k, 8, 8]}
                )
        cats = [{"id": 1, "name": "car"}, {"id": 2, "name": "van"}]
        coco = {"images": images, "annotations": annotations, "categories": cats}
        (root / "annotations" / f"instance_{split}.json").write_text(json.dumps(coco))


def _load(root: Path, split: str) -> dict[str, Any]:
    return json.loads((root / "annotations" / f"instance_{split}.json").read_text())


def test_split_recuts_and_keeps_bak(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _dataset(root)
    old = {s: (root / "annotations" / f"instance_{s}.json").read_bytes() for s in ("train", "val")}
    total_anns = len(_load(root, "train")["annotations"]) + len(_load(root, "val")["annotations"])

    assert run_cli("split", str(root), "--train-percent", "80", "--val-percent", "20", "--seed", "5") == 0
    train, val = _load(root, "train"), _load(root, "val")
    assert (len(train["images"]), len(val["images"])) == (8, 2)
    for s in ("train", "val"):
        assert (root / "annotations" / f"instance_{s}.json.bak").read_bytes() == old[s]
    # Image ids stay unique across the merged files; annotation ids count from 1 in each file.
    ids = [i["id"] for i in train["images"] + val["images"]]
    assert len(set(ids)) == 10
    assert [a["id"] for a in train["annotations"]] == list(range(1, len(train["annotations"]) + 1))
    assert len(train["annotations"]) + len(val["annotations"]) == total_anns
    for coco in (train, val):
        by_id = {i["id"]: i["file_name"] for i in coco["images"]}
        assert all(a["image_id"] in by_id for a in coco["annotations"])
    assert check_dataset(root, tmp_path / "check")[0]["check_pass"] is True


def test_split_is_reproducible_with_a_seed(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _dataset(a)
    _dataset(b)
    split_dataset(a, 60, 40, seed=11)
    split_dataset(b, 60, 40, seed=11)
    assert _load(a, "val") == _load(b, "val")


@pytest.mark.parametrize(
    "train, val, message",
    [
        (70, 20, r"must equal 100"),
        (100, 0, r"must both be above 0"),
        (99, 1, r"leaves the val split empty"),
    ],
)
def test_bad_split_changes_nothing(tmp_path: Path, train: float, val: float, message: str) -> None:
    root = tmp_path / "ds"
    _dataset(root, n_train=3, n_val=1)
    before = snapshot(root)
    with pytest.raises(SplitFailedError, match=message):
        split_dataset(root, train, val)
    assert run_cli("split", str(root), "--train-percent", str(train), "--val-percent", str(val)) == 1
    assert snapshot(root) == before


def test_malformed_annotation_file_fails_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _dataset(root)
    (root / "annotations" / "instance_val.json").write_text('{"images": [')
    before = snapshot(root)
    with pytest.raises(SplitFailedError, match=r"annotations/instance_val\.json is not valid JSON"):
        split_dataset(root, 50, 50)
    assert snapshot(root) == before


def test_annotation_on_unknown_image_fails_naming_entry(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _dataset(root)
    coco = _load(root, "train")
    coco["annotations"][2]["image_id"] = 99
    (root / "annotations" / "instance_train.json").write_text(json.dumps(coco))
    before = snapshot(root)
    with pytest.raises(SplitFailedError, match=r"instance_train\.json: annotations\[2\] \(id 3\): image_id 99"):
        split_dataset(root, 50, 50)
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("category_id", 7, r"instance_train\.json: annotations\[2\] \(id 3\) on image 2 'train2\.jpg': category_id 7"),
        ("bbox", [20, 20, 20, 8], r"annotations\[2\] \(id 3\) .*lies outside the image 32x32"),
        ("bbox", [2, 2, 8, -1], r"annotations\[2\] \(id 3\) .*non-positive size"),
    ],
    ids=["unknown category", "box outside image", "non-positive size"],
)
def test_bad_annotation_fails_naming_entry(tmp_path: Path, field: str, value: Any, message: str) -> None:
    root = tmp_path / "ds"
    _dataset(root)
    coco = _load(root, "train")
    coco["annotations"][2][field] = value
    (root / "annotations" / "instance_train.json").write_text(json.dumps(coco))
    before = snapshot(root)
    with pytest.raises(SplitFailedError, match=message):
        split_dataset(root, 50, 50)
    assert snapshot(root) == before


def test_only_a_train_file_is_split_into_both(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _dataset(root, n_train=10, n_val=1)
    (root / "annotations" / "instance_val.json").unlink()
    split_dataset(root, 70, 30, seed=0)
    assert len(_load(root, "val")["images"]) == 3
    assert not (root / "annotations" / "instance_val.json.bak").exists()
