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


def find_root(path: Path) -> Path:
    """The dataset root at or below `path`, as PaddleX finds it.

    PaddleX accepts a folder that holds the dataset one or more levels down (an unpacked archive)
    when exactly one `images/` folder lies below it. A folder with its own `images/` or
    `annotations/` is the root whatever lies deeper.
    """
    path = Path(path)
    if not path.is_dir() or (path / IMAGES_DIR).is_dir() or (path / ANNOTATIONS_DIR).is_dir():
        return path
    found = [p for p in path.glob(f"**/{IMAGES_DIR}") if p.is_dir()]
    return found[0].parent if len(found) == 1 else path
