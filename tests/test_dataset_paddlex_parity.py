"""Dataset check, conversion and split against PaddleX 3.7.2's own dataset checker.

PaddleX runs in its own environment (`make setup-paddlex`, or SODD_PADDLEX_PYTHON); its dataset
checker also needs pycocotools there. Without either the tests skip and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import pytest

from sodd.datasets.check import check_dataset
from sodd.datasets.convert import convert_dataset
from sodd.datasets.split import split_dataset
from tests.conftest import paddlex_python
from tests.test_dataset_check import SAHI, _good, _terrain
from tests.test_dataset_convert import _labelme, _voc

CHECKER = "paddlex.modules.object_detection.dataset_checker.dataset_src"
FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def paddlex(code: str) -> Any:
    """Run `code` under PaddleX's Python; it prints one JSON value last."""
    python = paddlex_python()
    probe = subprocess.run([python, "-c", "import pycocotools"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{python} has no pycocotools, which PaddleX's dataset checker needs")
    env = {**os.environ, "PADDLE_PDX_LOCAL_FONT_FILE_PATH": str(FONT), "PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True"}
    result = subprocess.run([python, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def paddlex_check(root: Path, output: Path) -> dict[str, Any]:
    return paddlex(
        f"""
        import json
        from {CHECKER}.check_dataset import check
        try:
            print(json.dumps({{"attributes": check({str(root)!r}, {str(output)!r})}}))
        except Exception as exc:
            print(json.dumps({{"err_type": type(exc).__name__, "err_msg": str(exc)}}))
        """
    )


def test_check_attributes_match_paddlex(tmp_path: Path) -> None:
    roots = [_terrain(tmp_path)] if SAHI.is_dir() else []
    _good(tmp_path / "small")
    roots.append(tmp_path / "small")
    for root in roots:
        ours, _ = check_dataset(root, tmp_path / "ours" / root.name)
        theirs = paddlex_check(root, tmp_path / "theirs" / root.name / "check_dataset")
        assert ours["attributes"] == theirs["attributes"], root.name


def test_missing_image_fails_like_paddlex(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _good(root)
    (root / "images" / "train2.jpg").unlink()
    ours, _ = check_dataset(root, tmp_path / "ours")
    theirs = paddlex_check(root, tmp_path / "theirs" / "check_dataset")
    assert ours["err_type"] == theirs["err_type"] == "DatasetFileNotFoundError"
    assert "images/train2.jpg does not exist" in ours["err_msg"]
    assert f"{root}/images/train2.jpg does not exist" in theirs["err_msg"]


@pytest.mark.parametrize("fmt", ["voc", "labelme"])
def test_conversion_matches_paddlex(tmp_path: Path, fmt: str) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    if fmt == "voc":
        _voc(ours, n=6, val_list=True)
    else:
        _labelme(ours)
        for label in (ours / "labels").iterdir():  # PaddleX reads only forward-slash image paths
            data = json.loads(label.read_text())
            data["imagePath"] = data["imagePath"].replace("\\", "/")
            label.write_text(json.dumps(data))
    shutil.copytree(ours, theirs, symlinks=True)
    convert_dataset(fmt, ours)
    paddlex(
        f"""
        from {CHECKER}.convert_dataset import convert
        convert({"VOC" if fmt == "voc" else "LabelMe"!r}, {str(theirs)!r})
        print("null")
        """
    )
    for split in ("train", "val"):
        a = json.loads((ours / "annotations" / f"instance_{split}.json").read_text())
        b = json.loads((theirs / "annotations" / f"instance_{split}.json").read_text())
        assert {k: v for k, v in a.items() if k != "categories"} == {k: v for k, v in b.items() if k != "categories"}
        # PaddleX lists in the train file only the categories seen so far; we list all of them.
        assert a["categories"][: len(b["categories"])] == b["categories"]
        if split == "val":
            assert a["categories"] == b["categories"]


def test_split_matches_paddlex_shape(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    _good(ours)
    shutil.copytree(ours, theirs)
    split_dataset(ours, 75, 25, seed=0)
    paddlex(
        f"""
        from {CHECKER}.split_dataset import split_dataset
        split_dataset({str(theirs)!r}, 75, 25)
        print("null")
        """
    )
    for root in (ours, theirs):
        assert sorted(p.name for p in (root / "annotations").iterdir()) == [
            "instance_train.json",
            "instance_train.json.bak",
            "instance_val.json",
            "instance_val.json.bak",
        ]
    summary = {}
    for name, root in (("ours", ours), ("theirs", theirs)):
        files = {s: json.loads((root / "annotations" / f"instance_{s}.json").read_text()) for s in ("train", "val")}
        summary[name] = {
            "sizes": [len(files[s]["images"]) for s in ("train", "val")],
            "images": sorted(i["file_name"] for s in files for i in files[s]["images"]),
            "ann_ids": [[a["id"] for a in files[s]["annotations"]] for s in ("train", "val")],
            "categories": files["train"]["categories"],
        }
    assert summary["ours"]["sizes"] == summary["theirs"]["sizes"] == [3, 1]
    assert summary["ours"]["images"] == summary["theirs"]["images"]
    assert summary["ours"]["categories"] == summary["theirs"]["categories"]
    for ids in summary["ours"]["ann_ids"] + summary["theirs"]["ann_ids"]:
        assert ids == list(range(1, len(ids) + 1))
