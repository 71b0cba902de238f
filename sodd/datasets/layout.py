"""Where things live in a PaddleX COCO detection dataset."""

from __future__ import annotations

from pathlib import Path

IMAGES_DIR = "images"
ANNOTATIONS_DIR = "annotations"
SPLITS = ("train", "val")


def annotation_path(root: Path, split: str) -> Path:
    return root / ANNOTATIONS_DIR / f"instance_{split}.json"


def image_path(root: Path, file_name: str) -> Path:
    """COCO `file_name` is relative to `images/`."""
    return root / IMAGES_DIR / file_name


def relative(path: Path, root: Path) -> str:
    """A path as the user knows it: relative to the dataset root when inside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
