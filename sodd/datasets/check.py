"""`sodd dataset check`: validate a dataset and write PaddleX's check_dataset_result.json."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sodd.datasets.analysis import draw_histogram
from sodd.datasets.coco import Dataset, load_dataset
from sodd.datasets.drawing import draw_annotations
from sodd.datasets.errors import CheckFailedError, DatasetError
from sodd.datasets.layout import image_path

RESULT_FILE = "check_dataset_result.json"
CHECK_DIR = "check_dataset"
HISTOGRAM = f"{CHECK_DIR}/histogram.png"
SAMPLE_NUM = 10  # images drawn per split, as PaddleX does


def check_dataset(root: Path, output: Path, sample_num: int = SAMPLE_NUM) -> tuple[dict[str, Any], Dataset | None]:
    """Check `root` and write the result under `output`; returns the result and, on success, the data.

    A broken dataset is not an exception here: it is a result with `check_pass: false`.
    """
    root, output = Path(root), Path(output)
    try:
        dataset = load_dataset(root)
        result = _passed(dataset, output, sample_num)
    except DatasetError as exc:
        dataset = None
        result = failed_result(exc)
    write_result(output / RESULT_FILE, result)
    return result, dataset


def failed_result(exc: DatasetError) -> dict[str, Any]:
    # PaddleX writes done_flag/err_type/err_msg on failure; check_pass is kept for readers of success.
    return {"done_flag": False, "check_pass": False, "err_type": exc.err_type, "err_msg": str(exc)}


def write_result(path: Path, result: Any) -> None:
    """Write JSON as PaddleX does (indent 2, UTF-8), replacing any old file in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=2)
    os.chmod(name, 0o644)  # mkstemp makes owner-only files; results are for everyone to read
    os.replace(name, path)


def _passed(dataset: Dataset, output: Path, sample_num: int) -> dict[str, Any]:
    check_dir = output / CHECK_DIR
    draw_histogram(dataset, output / HISTOGRAM)
    attributes: dict[str, Any] = {"num_classes": len(dataset.categories)}
    for name, split in dataset.splits.items():
        attributes[f"{name}_samples"] = split.num_images
        attributes[f"{name}_sample_paths"] = _draw_samples(dataset, name, check_dir, sample_num)
    return {
        "done_flag": True,
        "check_pass": True,
        "attributes": attributes,
        "analysis": {"histogram": HISTOGRAM},
        "dataset_path": dataset.root.resolve().name,
        "show_type": "image",
        "dataset_type": "COCODetDataset",
    }


def _draw_samples(dataset: Dataset, split_name: str, check_dir: Path, sample_num: int) -> list[str]:
    split = dataset.splits[split_name]
    names = split.categories
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in split.coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    demo_dir = check_dir / "demo_img"
    paths = []
    for img in split.coco["images"][:sample_num]:
        out = _inside(demo_dir, img["file_name"])
        source = image_path(dataset.root, img["file_name"])
        try:
            draw_annotations(source, by_image.get(img["id"], []), names, out)
        except (OSError, SyntaxError, ValueError) as exc:  # a file whose header reads but whose pixels do not
            raise CheckFailedError(
                f"{source.relative_to(dataset.root).as_posix()} cannot be decoded: it is "
                f"{split.path.relative_to(dataset.root).as_posix()}: image id {img['id']}: {exc}"
            ) from exc
        paths.append(f"{CHECK_DIR}/{out.relative_to(check_dir).as_posix()}")
    return paths


def _inside(directory: Path, file_name: str) -> Path:
    """`directory/file_name`, unless the name would climb out of it (then its base name)."""
    candidate = (directory / file_name).resolve()
    if directory.resolve() in candidate.parents:
        return directory / file_name
    return directory / Path(file_name).name
