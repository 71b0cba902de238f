"""`sodd dataset convert`: PaddleX's VOC / LabelMe rules, VisDrone, and nothing changed on failure."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sodd.datasets import atomic
from sodd.datasets.check import check_dataset
from sodd.datasets.convert import convert_dataset
from sodd.datasets.errors import ConvertFailedError
from tests.dataset_helpers import run_cli, snapshot

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VISDRONE = SHARED / "visdrone"
needs_shared = pytest.mark.skipif(
    not VISDRONE.is_dir(), reason=f"real test data absent: {VISDRONE} (../shared/data is not beside the repository)"
)


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --- VisDrone ----------------------------------------------------------------------------------


@needs_shared
def test_visdrone_demo_gives_98_annotations(tmp_path: Path) -> None:
    out = tmp_path / "vd"
    assert run_cli("convert", "--from", "visdrone", str(VISDRONE), "--as", "val", "--output", str(out)) == 0
    assert not (out / "annotations" / "instance_train.json").exists()
    val = _json(out / "annotations" / "instance_val.json")
    assert len(val["annotations"]) == 98
    assert [c["id"] for c in val["categories"]] == list(range(10))
    assert val["categories"][9]["name"] == "motorcycle"
    assert val["images"] == [{"id": 1, "file_name": "0000315_01601_d_0000509.jpg", "width": 1360, "height": 765}]
    assert (out / "images" / "0000315_01601_d_0000509.jpg").read_bytes() == (
        VISDRONE / "0000315_01601_d_0000509.jpg"
    ).read_bytes()
    small = [a for a in val["annotations"] if a["bbox"][2] * a["bbox"][3] < 32 * 32]
    assert len(small) == 82
    cars = [a for a in val["annotations"] if a["category_id"] == 3]
    assert len(cars) == 34


@needs_shared
def test_visdrone_with_val_folder_passes_the_check(tmp_path: Path) -> None:
    out = tmp_path / "vd"
    code = run_cli("convert", "--from", "visdrone", str(VISDRONE), "--val-dir", str(VISDRONE), "--output", str(out))
    assert code == 0
    for split in ("train", "val"):
        assert len(_json(out / "annotations" / f"instance_{split}.json")["annotations"]) == 98
    result, _ = check_dataset(out, tmp_path / "check")
    assert result["check_pass"] is True and result["attributes"]["num_classes"] == 10


def test_visdrone_train_and_val_folders_in_two_runs(tmp_path: Path) -> None:
    out = tmp_path / "vd"
    for split, n in (("train", 3), ("val", 2)):
        src = tmp_path / f"VisDrone2019-DET-{split}"
        (src / "images").mkdir(parents=True)
        (src / "annotations").mkdir()
        for i in range(n):
            Image.new("RGB", (40, 30), (i, 0, 0)).save(src / "images" / f"{split}{i}.png")
            (src / "annotations" / f"{split}{i}.txt").write_text("1,1,10,10,1,4,0,0\n")
        assert run_cli("convert", "--from", "visdrone", str(src), "--as", split, "--output", str(out)) == 0
    result, dataset = check_dataset(out, tmp_path / "check")
    assert result["check_pass"] is True
    assert (result["attributes"]["train_samples"], result["attributes"]["val_samples"]) == (3, 2)
    # Converting again finds its images already in place and changes nothing.
    before = snapshot(out)
    assert run_cli("convert", "--from", "visdrone", str(tmp_path / "VisDrone2019-DET-val"), "--as", "val",
                   "--output", str(out)) == 0  # fmt: skip
    assert snapshot(out) == before
    # A different image under a name already taken is refused, not overwritten.
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (40, 30), (255, 255, 255)).save(other / "train0.png")
    (other / "train0.txt").write_text("1,1,10,10,1,4,0,0\n")
    with pytest.raises(ConvertFailedError, match=r"images/train0\.png already exists and differs"):
        convert_dataset("visdrone", other, only="val", output=out)
    assert snapshot(out) == before


@needs_shared
def test_visdrone_single_image_without_val_fails_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "vd"
    with pytest.raises(ConvertFailedError, match="the train split would be empty"):
        convert_dataset("visdrone", VISDRONE, output=out)
    assert not out.exists()


def test_visdrone_clips_and_drops(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "annotations").mkdir()
    for i in range(5):
        Image.new("RGB", (100, 50)).save(src / "images" / f"im{i}.jpg")
        (src / "annotations" / f"im{i}.txt").write_text(
            "10,10,20,20,1,4,0,0\n"  # car
            "90,40,30,30,1,1,0,0\n"  # pedestrian, clipped to 10x10
            "0,0,40,40,0,0,0,0\n"  # ignored region
            "5,5,10,10,1,11,0,0\n"  # others
            "120,10,5,5,1,2,0,0,\n"  # outside the image, trailing comma
        )
    conversion = convert_dataset("visdrone", src, seed=0)
    assert conversion.num_images == {"train": 4, "val": 1}
    anns = conversion.splits["train"]["annotations"]
    assert [(a["category_id"], a["bbox"]) for a in anns[:2]] == [
        (3, [10.0, 10.0, 20.0, 20.0]),
        (0, [90.0, 40.0, 10.0, 10.0]),
    ]
    assert len(anns) == 8
    result, _ = check_dataset(src, tmp_path / "check")
    assert result["check_pass"] is True


def test_visdrone_bad_line_names_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        Image.new("RGB", (10, 10)).save(src / f"im{i}.jpg")
        (src / f"im{i}.txt").write_text("1,1,2,2,1,4,0,0\n1,1,x,2,1,4,0,0\n")
    before = snapshot(src)
    assert run_cli("convert", "--from", "visdrone", str(src), "--val-dir", str(src)) == 1
    with pytest.raises(ConvertFailedError, match=r"im0\.txt line 2: not a VisDrone line"):
        convert_dataset("visdrone", src, val_dir=src)
    assert snapshot(src) == before


# --- VOC ---------------------------------------------------------------------------------------


def _voc_xml(filename: str, objects: list[tuple[str, tuple[int, int, int, int]]], size: tuple[int, int]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
        "</bndbox></object>"
        for n, (a, b, c, d) in objects
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height></size>{objs}</annotation>"
    )


def _voc(root: Path, n: int = 5, val_list: bool = False) -> None:
    (root / "images").mkdir(parents=True)
    (root / "Annotations").mkdir()
    lines = []
    for i in range(n):
        ext = "png" if i % 2 else "jpg"
        Image.new("RGB", (60, 40)).save(root / "images" / f"img{i}.{ext}")
        objects = [("dog", (1, 2, 11, 22)), ("cat" if i == n - 1 else "dog", (30, 30, 20, 10))]  # reversed corners
        # The xml may name the image with another extension: PaddleX finds it by stem.
        (root / "Annotations" / f"img{i}.xml").write_text(_voc_xml(f"img{i}.jpeg", objects, (60, 40)))
        lines.append(f"images/img{i}.{ext} Annotations/img{i}.xml\n")
    if val_list:
        (root / "train_anno_list.txt").write_text("".join(lines[:-1]))
        (root / "val_anno_list.txt").write_text(lines[-1])
    else:
        (root / "train_anno_list.txt").write_text("".join(lines))


def test_voc_with_val_list(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    _voc(root, val_list=True)
    assert run_cli("convert", "--from", "voc", str(root)) == 0
    train = _json(root / "annotations" / "instance_train.json")
    val = _json(root / "annotations" / "instance_val.json")
    assert [i["id"] for i in train["images"]] == [1, 2, 3, 4] and val["images"][0]["id"] == 5
    assert [i["file_name"] for i in train["images"]][:2] == ["img0.jpg", "img1.png"]
    # Category ids from 1 in order of first appearance; both files list all of them.
    assert train["categories"] == val["categories"] == [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]
    assert train["annotations"][1] == {
        "id": 2,
        "image_id": 1,
        "category_id": 1,
        "bbox": [20.0, 10.0, 10.0, 20.0],
        "area": 200.0,
        "iscrowd": 0,
        "ignore": 0,
    }
    assert [a["id"] for a in val["annotations"]] == [1, 2]
    assert train["type"] == "instances"
    assert check_dataset(root, tmp_path / "check")[0]["check_pass"] is True


def test_voc_without_val_list_splits_80_20_and_keeps_bak(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    _voc(root, n=10)
    original = (root / "train_anno_list.txt").read_text()
    conversion = convert_dataset("voc", root, seed=3)
    assert conversion.num_images == {"train": 8, "val": 2}
    assert (root / "train_anno_list.txt.bak").read_text() == original
    new_lines = (root / "train_anno_list.txt").read_text().splitlines()
    new_lines += (root / "val_anno_list.txt").read_text().splitlines()
    assert sorted(new_lines) == sorted(original.splitlines())


@pytest.mark.parametrize(
    "breaker, message",
    [
        (
            lambda r: (r / "Annotations" / "img3.xml").write_text("<annotation><filename>"),
            r"Annotations/img3\.xml is not valid XML",
        ),
        (
            lambda r: (r / "Annotations" / "img2.xml").unlink(),
            r"train_anno_list\.txt line 3: Annotations/img2\.xml does not exist",
        ),
        (lambda r: (r / "train_anno_list.txt").unlink(), r"train_anno_list\.txt does not exist"),
    ],
    ids=["malformed xml", "listed file missing", "no train list"],
)
def test_voc_failure_changes_nothing(tmp_path: Path, breaker: Any, message: str) -> None:
    root = tmp_path / "voc"
    _voc(root, n=5)
    breaker(root)
    before = snapshot(root)
    with pytest.raises(ConvertFailedError, match=message):
        convert_dataset("voc", root)
    assert snapshot(root) == before


def test_voc_unlabeled_moves_list_and_requires_it(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    _voc(root, val_list=True)
    before = snapshot(root)
    with pytest.raises(ConvertFailedError, match=r"unlabeled\.txt does not exist"):
        convert_dataset("voc-unlabeled", root)
    assert snapshot(root) == before
    (root / "unlabeled.txt").write_text("images/img0.jpg\n")
    convert_dataset("voc-unlabeled", root)
    assert (root / "annotations" / "unlabeled.txt").read_text() == "images/img0.jpg\n"
    assert not (root / "unlabeled.txt").exists()


def test_failure_while_writing_rolls_everything_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk error after some files are in place still leaves the dataset as it was."""
    root = tmp_path / "voc"
    _voc(root, n=10)
    (root / "annotations").mkdir()
    (root / "annotations" / "instance_val.json").write_text("old val")
    (root / "train_anno_list.txt.bak").write_text("an older backup")
    before = snapshot(root)

    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(src: Any, dst: Any) -> None:
        calls["n"] += 1
        if str(src).endswith(".tmp") and str(dst).endswith("instance_val.json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        convert_dataset("voc", root)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert calls["n"] > 3  # the list move and rewrites happened before the failure
    assert snapshot(root) == before


# --- LabelMe -----------------------------------------------------------------------------------


def _labelme(root: Path, shape_type: str = "rectangle") -> None:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    lines = []
    for i in range(5):
        Image.new("RGB", (50, 50)).save(root / "images" / f"p{i}.jpg")
        shapes = [
            {"label": "person", "points": [[30, 40], [10, 5]], "shape_type": "rectangle"},
            {"label": "bike", "points": [[1, 1], [5, 9]], "shape_type": shape_type if i == 3 else "rectangle"},
        ]
        data = {"imagePath": f"..\\images\\p{i}.jpg", "imageWidth": 50, "imageHeight": 50, "shapes": shapes}
        (root / "labels" / f"p{i}.json").write_text(json.dumps(data))
        lines.append(f"labels/p{i}.json\n")
    (root / "train_anno_list.txt").write_text("".join(lines[:4]))
    (root / "val_anno_list.txt").write_text(lines[4])


def test_labelme_rectangles(tmp_path: Path) -> None:
    root = tmp_path / "lm"
    _labelme(root)
    assert run_cli("convert", "--from", "labelme", str(root)) == 0
    train = _json(root / "annotations" / "instance_train.json")
    assert train["images"][0] == {"id": 1, "file_name": "p0.jpg", "width": 50, "height": 50}
    assert train["annotations"][0]["bbox"] == [10.0, 5.0, 20.0, 35.0]
    assert train["categories"] == [{"id": 1, "name": "person"}, {"id": 2, "name": "bike"}]
    assert check_dataset(root, tmp_path / "check")[0]["check_pass"] is True


def test_labelme_polygon_fails_naming_file_and_shape(tmp_path: Path) -> None:
    root = tmp_path / "lm"
    _labelme(root, shape_type="polygon")
    before = snapshot(root)
    with pytest.raises(ConvertFailedError, match=r"labels/p3\.json: shapes\[1\] \('bike'\) is a 'polygon'"):
        convert_dataset("labelme", root)
    assert run_cli("convert", "--from", "labelme", str(root)) == 1
    assert snapshot(root) == before
