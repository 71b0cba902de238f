"""`sodd dataset convert`: VOC, LabelMe and VisDrone to PaddleX's COCO layout.

The VOC and LabelMe rules are PaddleX's: `train_anno_list.txt` (and optionally
`val_anno_list.txt`) list the label files; without a val list the train list is shuffled and cut
80/20 and the original kept as `train_anno_list.txt.bak`; category and image ids count from 1 in
order of first appearance, shared by both splits; annotation ids count from 1 in each file.

One deliberate difference: both files list every category, where PaddleX writes into the train file
only the categories seen so far. A category present only in val would otherwise be missing from
the train file, and the class ids a model learns would not line up with the val file.

Everything is computed before anything is written, and written through `AtomicChanges`, so a
failed conversion leaves the dataset as it was.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sodd.datasets.atomic import AtomicChanges
from sodd.datasets.errors import ConvertFailedError
from sodd.datasets.labelme import read_labelme
from sodd.datasets.layout import ANNOTATIONS_DIR, annotation_path, find_root, relative
from sodd.datasets.plan import Conversion, Indexer
from sodd.datasets.visdrone import plan_visdrone
from sodd.datasets.voc import read_voc

FORMATS = ("voc", "labelme", "voc-unlabeled", "labelme-unlabeled", "visdrone")
TRAIN_LIST = "train_anno_list.txt"
VAL_LIST = "val_anno_list.txt"
UNLABELED_LIST = "unlabeled.txt"
TRAIN_FRACTION = 0.8  # PaddleX's cut when there is no val list


# A reader turns one label file into (image entry without id, [(label, bbox)]) or None to skip it.
Reader = Callable[[Path, Path, list[str]], "tuple[dict[str, Any], list[tuple[str, list[float]]]] | None"]


def convert_dataset(
    fmt: str, root: Path, *, seed: int | None = None, dry_run: bool = False, **visdrone: Any
) -> Conversion:
    """Convert the dataset at `root`; with `dry_run` nothing is written."""
    if fmt not in FORMATS:
        raise ConvertFailedError(f"unknown source format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "visdrone":
        conversion = plan_visdrone(root, seed=seed, **visdrone)
    else:
        reader: Reader = read_voc if fmt.startswith("voc") else read_labelme
        conversion = _plan_listed(find_root(Path(root)), reader, fmt.endswith("-unlabeled"), seed)
    if not dry_run:
        conversion.changes.commit()
    return conversion


def _plan_listed(root: Path, reader: Reader, unlabeled: bool, seed: int | None) -> Conversion:
    root = Path(root)
    changes = AtomicChanges()
    notes: list[str] = []
    train = _read_list(root, TRAIN_LIST, required=True) or []
    val = _read_list(root, VAL_LIST, required=False)
    lists = {"train": train}
    if val is None:
        lines = list(train)
        random.Random(seed).shuffle(lines)  # seed None: a fresh shuffle each run, as PaddleX does
        cut = int(len(lines) * TRAIN_FRACTION)
        lists = {"train": lines[:cut], "val": lines[cut:]}
        changes.move(root / TRAIN_LIST, root / f"{TRAIN_LIST}.bak")
        for name, list_file in (("train", TRAIN_LIST), ("val", VAL_LIST)):
            text = "".join(f"{line}\n" for line, _ in lists[name])
            changes.write_bytes(root / list_file, text.encode("utf-8"))
        notes.append(
            f"{VAL_LIST} is absent: split {TRAIN_LIST} 80/20 into {len(lists['train'])} train and "
            f"{len(lists['val'])} val; the original is kept as {TRAIN_LIST}.bak"
        )
    else:
        lists["val"] = val

    if unlabeled and not (root / UNLABELED_LIST).is_file():
        raise ConvertFailedError(f"{root / UNLABELED_LIST} does not exist (the -unlabeled formats need it)")
    if (root / UNLABELED_LIST).is_file():
        # PaddleX keeps the list of unlabeled images (semi-supervised training) beside the annotations.
        changes.move(root / UNLABELED_LIST, root / ANNOTATIONS_DIR / UNLABELED_LIST)

    categories, images = Indexer(), Indexer()
    splits: dict[str, dict[str, Any]] = {}
    for name, entries in lists.items():
        coco: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
        if reader is read_voc:
            coco["type"] = "instances"  # PaddleX's VOC converter writes it; keep files identical
        for _, label_file in entries:
            parsed = reader(root / label_file, root, notes)
            if parsed is None:
                continue
            image, objects = parsed
            image = {"id": images.get(image["file_name"]), **image}
            coco["images"].append(image)
            for label, (x, y, w, h) in objects:
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image["id"],
                        "category_id": categories.get(label),
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                        "ignore": 0,
                    }
                )
        splits[name] = coco
    for coco in splits.values():
        coco["categories"] = [{"id": i, "name": n} for n, i in categories.ids.items()]
    _require_nonempty(splits)
    for name, coco in splits.items():
        changes.write_json(annotation_path(root, name), coco)
    return Conversion(splits, changes, notes)


def _read_list(root: Path, name: str, required: bool) -> list[tuple[str, str]] | None:
    """(line, label file) for each line of a list; the label file is the last field and must exist."""
    path = root / name
    if not path.is_file():
        if required:
            raise ConvertFailedError(f"{path} does not exist: it lists the label files to convert")
        return None
    entries = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.strip().split(" ")
        if not fields[-1]:
            continue
        label_file = fields[-1]
        if not (root / label_file).is_file():
            raise ConvertFailedError(f"{name} line {line_no}: {relative(root / label_file, root)} does not exist")
        entries.append((line.strip(), label_file))
    return entries


def _require_nonempty(splits: dict[str, dict[str, Any]]) -> None:
    for name, coco in splits.items():
        if not coco["images"]:
            raise ConvertFailedError(
                f"the {name} split would be empty (no images): give more labelled images or a val list"
            )
