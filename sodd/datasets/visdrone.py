"""VisDrone-DET txt ground truth to PaddleX's COCO layout.

Each txt line is `x,y,w,h,score,category,truncation,occlusion` in full-image pixels. Category 0
(ignored region) and 11 (others) are not objects to detect and are dropped; 1..10 become category
ids 0..9, so a model's class id equals the category id (the labels PaddleX's SOD models use). Boxes
are clipped to the image, and boxes left without area are dropped, so the result passes the check.

A source folder is either VisDrone's release layout (`images/` and `annotations/`) or images with
their txt files side by side. Without a val folder the images are shuffled and cut 80/20, as
PaddleX does for a dataset without a val list; or a folder is converted whole as one split.
"""

from __future__ import annotations

import filecmp
import random
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from sodd.datasets.atomic import AtomicChanges
from sodd.datasets.errors import ConvertFailedError
from sodd.datasets.layout import ANNOTATIONS_DIR, IMAGES_DIR, annotation_path
from sodd.datasets.plan import Conversion, Indexer

LABELS = (
    "pedestrian", "people", "bicycle", "car", "van",
    "truck", "tricycle", "awning-tricycle", "bus", "motorcycle",
)  # fmt: skip
DROPPED = {0: "ignored region", 11: "others"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
TRAIN_FRACTION = 0.8


def plan_visdrone(
    root: Path,
    *,
    output: Path | None = None,
    val_dir: Path | None = None,
    only: str | None = None,
    seed: int | None = None,
) -> Conversion:
    """Plan the conversion of `root` (and `val_dir`) into `output` (default: in place).

    `only` ("train" or "val") converts the whole folder into that one annotation file and leaves
    the other alone, so train and val folders can be converted by two runs into one dataset, or a
    val folder alone for evaluation.
    """
    root = Path(root)
    dst = Path(output) if output is not None else root
    if only is not None and val_dir is not None:
        raise ConvertFailedError("give a separate val folder or convert one folder as one split, not both")
    if only not in (None, "train", "val"):
        raise ConvertFailedError(f"a folder converts as 'train' or 'val', not {only!r}")
    train_pairs = _pairs(root)
    if only is not None:
        split_pairs = {only: train_pairs}
    elif val_dir is not None:
        split_pairs = {"train": train_pairs, "val": _pairs(Path(val_dir))}
    else:
        shuffled = list(train_pairs)
        random.Random(seed).shuffle(shuffled)
        cut = int(len(shuffled) * TRAIN_FRACTION)
        split_pairs = {"train": sorted(shuffled[:cut]), "val": sorted(shuffled[cut:])}
    for name, pairs in split_pairs.items():
        if not pairs:
            raise ConvertFailedError(
                f"the {name} split would be empty: an 80/20 cut of the {len(train_pairs)} image(s) in {root}; "
                "give a separate val folder, or convert the folder as one split (train or val)"
            )

    changes = AtomicChanges()
    placed: dict[str, Path] = {}  # file name under images/ -> source image
    image_ids = Indexer()
    counts: Counter[str] = Counter()
    splits: dict[str, dict[str, Any]] = {}
    for name, pairs in split_pairs.items():
        coco: dict[str, Any] = {
            "images": [],
            "annotations": [],
            "categories": [{"id": i, "name": label} for i, label in enumerate(LABELS)],
        }
        for image_file, txt_file in pairs:
            _place_image(image_file, dst, placed, changes)
            with Image.open(image_file) as img:
                width, height = img.size
            image_id = image_ids.get(image_file.name)
            coco["images"].append({"id": image_id, "file_name": image_file.name, "width": width, "height": height})
            for category_id, bbox in _objects(txt_file, width, height, counts, name):
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": category_id,
                        "bbox": bbox,
                        "area": bbox[2] * bbox[3],
                        "iscrowd": 0,
                        "ignore": 0,
                    }
                )
        splits[name] = coco
        changes.write_json(annotation_path(dst, name), coco)

    notes = [f"{what}: {n}" for what, n in sorted(counts.items())]
    return Conversion(splits, changes, notes)


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(image, txt) pairs of a VisDrone folder, by image name."""
    if not folder.is_dir():
        raise ConvertFailedError(f"{folder} does not exist or is not a directory")
    if (folder / IMAGES_DIR).is_dir():
        image_dir, txt_dir = folder / IMAGES_DIR, folder / ANNOTATIONS_DIR
    else:
        image_dir = txt_dir = folder
    pairs = []
    for image_file in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        txt_file = txt_dir / f"{image_file.stem}.txt"
        if not txt_file.is_file():
            raise ConvertFailedError(f"{txt_file} does not exist: it is the ground truth of {image_file}")
        pairs.append((image_file, txt_file))
    if not pairs:
        raise ConvertFailedError(f"no images in {image_dir}")
    return pairs


def _place_image(image_file: Path, dst: Path, placed: dict[str, Path], changes: AtomicChanges) -> None:
    name = image_file.name
    if name in placed:
        if placed[name].resolve() != image_file.resolve():
            raise ConvertFailedError(f"two different images share the name {name}: {placed[name]} and {image_file}")
        return
    placed[name] = image_file
    target = dst / IMAGES_DIR / name
    if target.exists() and target.resolve() != image_file.resolve():
        if filecmp.cmp(target, image_file, shallow=False):
            return  # already there (a second run, or the other split's run)
        raise ConvertFailedError(f"{target} already exists and differs from {image_file}; not overwriting it")
    if not target.exists():
        changes.copy_file(image_file, target)


def _objects(
    txt_file: Path, width: int, height: int, counts: Counter[str], split: str
) -> list[tuple[int, list[float]]]:
    objects = []
    for line_no, line in enumerate(txt_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = [f for f in line.strip().split(",") if f.strip() != ""]
        if len(fields) < 6:
            raise ConvertFailedError(f"{txt_file} line {line_no}: expected at least 6 fields: {line!r}")
        try:
            x, y, w, h, _score, category = (int(float(f)) for f in fields[:6])
        except ValueError as exc:
            raise ConvertFailedError(f"{txt_file} line {line_no}: not a VisDrone line: {line!r}") from exc
        if category in DROPPED:
            counts[f"{split}: {DROPPED[category]} objects dropped"] += 1
            continue
        if not 1 <= category <= len(LABELS):
            raise ConvertFailedError(f"{txt_file} line {line_no}: category {category} is not 0..11")
        x1, y1 = max(0, x), max(0, y)
        x2, y2 = min(width, x + w), min(height, y + h)
        if x2 <= x1 or y2 <= y1:
            counts[f"{split}: boxes without area inside the image dropped"] += 1
            continue
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            counts[f"{split}: boxes clipped to the image"] += 1
        objects.append((category - 1, [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]))
    return objects
