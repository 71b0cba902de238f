"""COCO detection datasets in PaddleX's layout, checked up front so a bad entry fails fast.

A broken annotation stops training before the first step with the file and the entry named, rather
than crashing an hour in or silently teaching the model a wrong box.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


class DatasetError(ValueError):
    """A dataset file or one of its entries is unusable; the message names both."""


@dataclass
class Sample:
    path: Path
    image_id: int
    boxes: np.ndarray  # [n, 4] xyxy pixels of the original image
    labels: np.ndarray  # [n] contiguous class indices


@dataclass
class CocoDataset:
    ann_file: Path
    gt: dict
    samples: list[Sample]
    label_list: list[str]
    category_ids: list[int]  # contiguous index -> COCO category id


def _fail(path: Path, where: str, why: str) -> DatasetError:
    return DatasetError(f"{path}: {where}: {why}")


def load_coco(root: Path, split: str, label_list: list[str] | None = None) -> CocoDataset:
    """Read `<root>/annotations/instance_<split>.json`; images are under `<root>/images/`."""
    root = Path(root)
    path = root / "annotations" / f"instance_{split}.json"
    if not path.is_file():
        raise DatasetError(f"{path}: missing (PaddleX layout: <root>/annotations/instance_{split}.json)")
    try:
        gt = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON: {e}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise _fail(path, f"top level key {key!r}", "missing or not a list")
    cats = sorted(gt["categories"], key=lambda c: c.get("id", 0))
    for i, c in enumerate(cats):
        if not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise _fail(path, f"categories[{i}]", f"needs an integer 'id' and a string 'name', got {c!r}")
    names = [c["name"] for c in cats]
    if label_list is not None and names != list(label_list):
        raise _fail(path, "categories", f"names {names} differ from the training split's {list(label_list)}")
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    images: dict[int, dict] = {}
    for i, im in enumerate(gt["images"]):
        if not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise _fail(path, f"images[{i}]", f"needs an integer 'id' and a string 'file_name', got {im!r}")
        if im["id"] in images:
            raise _fail(path, f"images[{i}] (id {im['id']})", "duplicate image id")
        if not (root / "images" / im["file_name"]).is_file():
            where = f"images[{i}] (id {im['id']})"
            raise _fail(path, where, f"image file {root / 'images' / im['file_name']} not found")
        images[im["id"]] = im
    per_image: dict[int, tuple[list, list]] = {k: ([], []) for k in images}
    for i, a in enumerate(gt["annotations"]):
        where = f"annotations[{i}] (id {a.get('id')}, image_id {a.get('image_id')})"
        if a.get("image_id") not in images:
            raise _fail(path, where, "image_id names no entry of 'images'")
        if a.get("category_id") not in cat_index:
            raise _fail(path, where, f"category_id {a.get('category_id')!r} is not in 'categories'")
        bbox = a.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)):
            raise _fail(path, where, f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise _fail(path, where, f"bbox {bbox} has non-positive width or height")
        im = images[a["image_id"]]
        outside = x >= im.get("width", np.inf) or y >= im.get("height", np.inf) or x + w <= 0 or y + h <= 0
        if outside:
            raise _fail(path, where, f"bbox {bbox} lies outside the {im.get('width')}x{im.get('height')} image")
        if a.get("iscrowd", 0):
            continue
        per_image[a["image_id"]][0].append([x, y, x + w, y + h])
        per_image[a["image_id"]][1].append(cat_index[a["category_id"]])
    samples = [
        Sample(root / "images" / images[k]["file_name"], k,
               np.array(b, np.float32).reshape(-1, 4), np.array(lab, np.int64))
        for k, (b, lab) in per_image.items()
    ]
    return CocoDataset(path, gt, samples, names, [c["id"] for c in cats])


def read_image(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """RGB float32 CHW resized to size x size (as the exported Resize step), boxes scaled to it, and
    the (h, w) scale factors."""
    img = cv2.imread(str(sample.path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"{sample.path}: cannot be decoded as an image")
    h, w = img.shape[:2]
    sy, sx = size / h, size / w
    if (h, w) != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32).transpose(2, 0, 1)
    boxes = sample.boxes * np.array([sx, sy, sx, sy], np.float32)
    return img, boxes, (sy, sx)


@dataclass
class Batch:
    images: np.ndarray  # [B, 3, S, S]
    labels: np.ndarray  # [B, n] int64, padded
    boxes: np.ndarray  # [B, n, 4]
    mask: np.ndarray  # [B, n] float32
    samples: list[Sample]
    scales: np.ndarray  # [B, 2] (h, w)


def collate(items: list[tuple[np.ndarray, np.ndarray, np.ndarray, Sample, tuple[float, float]]]) -> Batch:
    n = max(1, max(len(it[2]) for it in items))
    b = len(items)
    labels = np.zeros((b, n), np.int64)
    boxes = np.zeros((b, n, 4), np.float32)
    mask = np.zeros((b, n), np.float32)
    for i, (_, bx, lab, _, _) in enumerate(items):
        labels[i, : len(lab)] = lab
        boxes[i, : len(bx)] = bx
        mask[i, : len(lab)] = 1
    return Batch(np.stack([it[0] for it in items]), labels, boxes, mask, [it[3] for it in items],
                 np.array([it[4] for it in items], np.float32))


def batches(
    samples: list[Sample], size: int, batch_size: int, rng: np.random.Generator | None, prefetch: int = 4
) -> Iterator[Batch]:
    """Shuffled (when rng is given, with random horizontal flips) batches, decoded in a thread so
    image reading overlaps the training step."""
    order = rng.permutation(len(samples)) if rng is not None else np.arange(len(samples))
    flips = rng.random(len(samples)) < 0.5 if rng is not None else np.zeros(len(samples), bool)
    q: queue.Queue = queue.Queue(maxsize=prefetch)

    def work() -> None:
        try:
            for start in range(0, len(order), batch_size):
                items = []
                for j in order[start : start + batch_size]:
                    s = samples[j]
                    img, bx, scale = read_image(s, size)
                    if flips[j]:
                        img = img[:, :, ::-1].copy()
                        bx = bx.copy()
                        bx[:, [0, 2]] = size - bx[:, [2, 0]]
                    items.append((img, bx, s.labels, s, scale))
                q.put(collate(items))
        except BaseException as e:  # surfaced in the consumer
            q.put(e)
        q.put(None)

    threading.Thread(target=work, daemon=True).start()
    while (item := q.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item
