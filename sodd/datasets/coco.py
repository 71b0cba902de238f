"""Reading and validating the COCO annotation files of a PaddleX detection dataset.

Every rule raises a `DatasetError` whose message names the file and the entry (list index and
id), because a user fixing a dataset by hand needs to find the line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sodd.datasets.errors import CheckFailedError, DatasetFileNotFoundError
from sodd.datasets.layout import SPLITS, annotation_path, find_root, image_path, relative

_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSED = {5, 6, 7, 8}  # orientations that swap width and height

# Boxes may touch the border; allow for float rounding in converted coordinates.
_EDGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SplitData:
    """One validated annotation file."""

    name: str  # "train" or "val"
    path: Path
    coco: dict[str, Any]

    @property
    def categories(self) -> dict[int, str]:
        return {int(c["id"]): str(c["name"]) for c in self.coco["categories"]}

    @property
    def num_images(self) -> int:
        return len(self.coco["images"])

    @property
    def num_annotations(self) -> int:
        return len(self.coco["annotations"])


@dataclass(frozen=True)
class Dataset:
    root: Path
    splits: dict[str, SplitData]
    warnings: list[str] = field(default_factory=list)

    @property
    def categories(self) -> dict[int, str]:
        """Category id -> name over all splits (the first split's name wins on a clash)."""
        merged: dict[int, str] = {}
        for split in self.splits.values():
            for cat_id, name in split.categories.items():
                merged.setdefault(cat_id, name)
        return dict(sorted(merged.items()))


def read_json(path: Path, root: Path) -> Any:
    shown = relative(path, root)
    if not path.is_file():
        raise DatasetFileNotFoundError(f"{shown} does not exist.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckFailedError(f"{shown} is not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise CheckFailedError(f"{shown} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc


def load_dataset(root: Path, splits: tuple[str, ...] = SPLITS, check_images: bool = True) -> Dataset:
    """Read and validate `annotations/instance_<split>.json` for each split."""
    root = find_root(Path(root))
    if not root.is_dir():
        raise DatasetFileNotFoundError(f"{root} does not exist or is not a directory.")
    data = {}
    warnings: list[str] = []
    for split in splits:
        path = annotation_path(root, split)
        coco = read_json(path, root)
        validate_coco(coco, relative(path, root), root if check_images else None)
        if check_images:
            warnings += _check_image_contents(coco["images"], relative(path, root), root)
        data[split] = SplitData(split, path, coco)
    return Dataset(root, data, _category_warnings(data) + warnings)


def validate_coco(coco: Any, shown: str, root: Path | None, allow_empty: bool = False) -> None:
    """Raise `CheckFailedError` on the first broken rule; `root` enables the image file check.

    `allow_empty` accepts a file without images (a split about to be refilled).
    """
    if not isinstance(coco, dict):
        raise CheckFailedError(f"{shown}: the top level must be a JSON object, not {type(coco).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise CheckFailedError(f"{shown}: `{key}` is missing or not a list")

    categories = _validate_categories(coco["categories"], shown)
    images = _validate_images(coco["images"], shown)
    if not images and not allow_empty:
        raise CheckFailedError(f"{shown}: the split is empty (no images)")
    if root is not None:
        _check_image_files(coco["images"], shown, root)
    _validate_annotations(coco["annotations"], shown, images, categories)


def _validate_categories(entries: list[Any], shown: str) -> set[int]:
    ids: set[int] = set()
    for i, cat in enumerate(entries):
        where = f"{shown}: categories[{i}]"
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise CheckFailedError(f"{where} needs an integer `id` and a string `name`, got {cat!r:.120}")
        if cat["id"] in ids:
            raise CheckFailedError(f"{where}: category id {cat['id']} appears twice")
        ids.add(cat["id"])
    return ids


def _validate_images(entries: list[Any], shown: str) -> dict[Any, dict[str, Any]]:
    images: dict[Any, dict[str, Any]] = {}
    for i, img in enumerate(entries):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            raise CheckFailedError(f"{shown}: images[{i}] needs an integer `id`, got {img!r:.120}")
        where = f"{shown}: images[{i}] (id {img['id']})"
        if img["id"] in images:
            raise CheckFailedError(f"{where}: image id {img['id']} appears twice")
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise CheckFailedError(f"{where} has no `file_name`")
        for key in ("width", "height"):
            if not _is_number(img.get(key)) or img[key] <= 0:
                raise CheckFailedError(f"{where} '{img['file_name']}': `{key}` must be a positive number")
        images[img["id"]] = img
    return images


def _check_image_files(entries: list[dict[str, Any]], shown: str, root: Path) -> None:
    missing = [(i, img) for i, img in enumerate(entries) if not image_path(root, img["file_name"]).is_file()]
    if missing:
        i, img = missing[0]
        path = relative(image_path(root, img["file_name"]), root)
        more = f" ({len(missing) - 1} more image files are missing)" if len(missing) > 1 else ""
        raise DatasetFileNotFoundError(
            f"{path} does not exist: it is {shown}: images[{i}] (id {img['id']}, file_name '{img['file_name']}'){more}"
        )


def _check_image_contents(entries: list[dict[str, Any]], shown: str, root: Path) -> list[str]:
    """Fail on an image that cannot be read; warn when its size is not the one the file states.

    The size is taken after EXIF orientation, as the model sees the image. A wrong size is only a
    warning because PaddleX accepts it, but boxes are then checked against the wrong frame.
    """
    mismatched = []
    for i, img in enumerate(entries):
        path = image_path(root, img["file_name"])
        try:
            with Image.open(path) as opened:
                width, height = opened.size
                if opened.getexif().get(_EXIF_ORIENTATION, 1) in _EXIF_TRANSPOSED:
                    width, height = height, width
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's ways of saying "not an image"
            raise CheckFailedError(
                f"{relative(path, root)} is not a readable image: it is {shown}: images[{i}] (id {img['id']}): {exc}"
            ) from exc
        if (width, height) != (img["width"], img["height"]):
            mismatched.append(
                f"{shown}: images[{i}] (id {img['id']}) '{img['file_name']}' states "
                f"{img['width']}x{img['height']}, the image is {width}x{height}"
            )
    if len(mismatched) > 1:
        mismatched[0] += f" ({len(mismatched) - 1} more images differ)"
    return mismatched[:1]


def _validate_annotations(
    entries: list[Any], shown: str, images: dict[Any, dict[str, Any]], categories: set[int]
) -> None:
    ids: set[Any] = set()
    for i, ann in enumerate(entries):
        if not isinstance(ann, dict):
            raise CheckFailedError(f"{shown}: annotations[{i}] must be an object, got {ann!r:.120}")
        where = f"{shown}: annotations[{i}] (id {ann.get('id')})"
        if "id" in ann:
            if ann["id"] in ids:
                raise CheckFailedError(f"{where}: annotation id {ann['id']} appears twice")
            ids.add(ann["id"])
        img = images.get(ann.get("image_id"))
        if img is None:
            raise CheckFailedError(f"{where}: image_id {ann.get('image_id')!r} is not among the images")
        where += f" on image {img['id']} '{img['file_name']}'"
        if ann.get("category_id") not in categories:
            raise CheckFailedError(
                f"{where}: category_id {ann.get('category_id')!r} does not exist (categories: {sorted(categories)})"
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise CheckFailedError(f"{where}: bbox must be [x, y, w, h] numbers, got {bbox!r:.120}")
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            raise CheckFailedError(f"{where}: bbox {bbox} has non-positive size (w {w}, h {h})")
        width, height = img["width"], img["height"]
        tol = _EDGE_TOLERANCE
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            raise CheckFailedError(
                f"{where}: bbox {bbox} (x2 {x + w:g}, y2 {y + h:g}) lies outside the image {width:g}x{height:g}"
            )


def _category_warnings(splits: dict[str, SplitData]) -> list[str]:
    """Splits that disagree on categories still pass (PaddleX accepts them) but deserve a word."""
    if len(splits) < 2:
        return []
    first, *rest = splits.values()
    warnings = []
    for other in rest:
        for cat_id in sorted(set(first.categories) | set(other.categories)):
            a, b = first.categories.get(cat_id), other.categories.get(cat_id)
            if a != b:
                warnings.append(f"category {cat_id} is {a!r} in {first.path.name} but {b!r} in {other.path.name}")
    return warnings


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
