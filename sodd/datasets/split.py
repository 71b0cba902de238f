"""`sodd dataset split`: re-cut train and val, by PaddleX's rules.

Both annotation files are merged (val image ids offset past train's so they stay unique),
shuffled by image and cut at `train_percent`; the old files are kept as `instance_*.json.bak` and
annotation ids count from 1 in each new file. The cut is computed in full before anything is
written, and written through `AtomicChanges`.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

from sodd.datasets.atomic import AtomicChanges
from sodd.datasets.coco import read_json, validate_coco
from sodd.datasets.errors import CheckFailedError, SplitFailedError
from sodd.datasets.layout import SPLITS, annotation_path, find_root, relative
from sodd.datasets.plan import Conversion


def split_dataset(
    root: Path, train_percent: float, val_percent: float, *, seed: int | None = None, dry_run: bool = False
) -> Conversion:
    root = find_root(Path(root))
    if train_percent <= 0 or val_percent <= 0:
        raise SplitFailedError(f"train ({train_percent}) and val ({val_percent}) percentages must both be above 0")
    if abs(train_percent + val_percent - 100) > 1e-9:
        raise SplitFailedError(f"train ({train_percent}) + val ({val_percent}) must equal 100")

    images: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    categories: dict[int, dict[str, Any]] = {}
    offset = 0
    found = []
    for name in SPLITS:
        path = annotation_path(root, name)
        if not path.exists():
            continue  # PaddleX splits whatever annotation files exist
        found.append(path)
        coco = _read(path, root)
        for cat in coco["categories"]:
            categories.setdefault(cat["id"], cat)
        items, offset = _with_unique_ids(coco, offset)
        images.extend(items)
    if not found:
        raise SplitFailedError(f"neither {relative(annotation_path(root, 'train'), root)} nor instance_val.json exists")

    random.Random(seed).shuffle(images)  # seed None: a fresh shuffle each run, as PaddleX does
    n_train = round(len(images) * train_percent / 100)
    parts = {"train": images[:n_train], "val": images[n_train:]}
    for name, part in parts.items():
        if not part:
            raise SplitFailedError(
                f"{train_percent}/{val_percent} of {len(images)} image(s) leaves the {name} split empty"
            )

    changes = AtomicChanges()
    splits = {}
    for name, part in parts.items():
        annotations = [dict(ann, id=i) for i, ann in enumerate((a for _, anns in part for a in anns), 1)]
        coco = {
            "categories": list(categories.values()),
            "images": [img for img, _ in part],
            "annotations": annotations,
        }
        splits[name] = coco
        path = annotation_path(root, name)
        if path.exists():
            changes.move(path, path.with_name(path.name + ".bak"))
        changes.write_json(path, coco)
    conversion = Conversion(splits, changes)
    if not dry_run:
        changes.commit()
    return conversion


def _read(path: Path, root: Path) -> dict[str, Any]:
    try:
        coco = read_json(path, root)
        validate_coco(coco, relative(path, root), None, allow_empty=True)
    except CheckFailedError as exc:
        raise SplitFailedError(str(exc)) from exc
    return coco


def _with_unique_ids(
    coco: dict[str, Any], offset: int
) -> tuple[list[tuple[dict[str, Any], list[dict[str, Any]]]], int]:
    """(image, its annotations) with image ids shifted by `offset`; returns the next offset."""
    by_image: dict[Any, list[dict[str, Any]]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(copy.deepcopy(ann))
    items = []
    top = offset
    for img in coco["images"]:
        new_id = img["id"] + offset
        top = max(top, new_id)
        anns = by_image[img["id"]]
        for ann in anns:
            ann["image_id"] = new_id
        items.append((dict(img, id=new_id), anns))
    return items, top
