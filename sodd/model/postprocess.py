"""From the network's raw box rows to the boxes PaddleX 3.7.2 returns.

The rules, including PaddleX's quirks, are kept on purpose because users compare our output with
PaddleX's: a float threshold keeps `score > t` in NMS order; a per-class map groups the boxes by
class id in ascending order, 0.5 for classes it does not list; boxes of a class labelled "image"
that cover most of the picture are dropped; then boxes are clipped to the image and empty ones
dropped. PaddleX ignores an integer threshold (a bug); the API only carries floats, and the Python
API here converts an int to float, so `1` means "keep nothing" as it reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

Threshold = float | Mapping[int, float]
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Box:
    cls_id: int
    label: str
    score: float
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def coordinate(self) -> list[float]:
        return [self.xmin, self.ymin, self.xmax, self.ymax]


def resolve_threshold(request: Threshold | None, configured: Threshold | None,
                      draw_threshold: float | None) -> Threshold:
    """Request > daemon configuration > the model's draw_threshold > 0.5."""
    for candidate in (request, configured, draw_threshold):
        if candidate is not None:
            return float(candidate) if isinstance(candidate, int | float) else candidate
    return DEFAULT_THRESHOLD


def split_per_image(boxes: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Cut the batch's [N, 6] rows into one array per image using the per-image counts."""
    boxes = np.asarray(boxes).reshape(-1, 6) if np.asarray(boxes).size else np.zeros((0, 6), np.float32)
    out, start = [], 0
    for n in np.asarray(counts).reshape(-1).tolist():
        out.append(boxes[start:start + int(n)])
        start += int(n)
    return out


def apply_threshold(rows: np.ndarray, threshold: Threshold) -> np.ndarray:
    if not isinstance(threshold, Mapping):
        return rows[(rows[:, 1] > threshold) & (rows[:, 0] > -1)]
    kept = []
    for cls in np.unique(rows[:, 0]):
        group = rows[rows[:, 0] == cls]
        kept.append(group[(group[:, 1] > threshold.get(int(cls), DEFAULT_THRESHOLD)) & (group[:, 0] > -1)])
    return np.vstack(kept) if kept else rows[:0]


def drop_whole_image_boxes(rows: np.ndarray, labels: tuple[str, ...], width: int, height: int) -> np.ndarray:
    """PaddleX drops "image"-class boxes covering more than 82% (landscape) / 93% of the picture."""
    if "image" not in labels or len(rows) <= 1:
        return rows
    image_cls = labels.index("image")
    limit = (0.82 if width > height else 0.93) * width * height
    keep = []
    for row in rows:
        if row[0] == image_cls:
            x1, y1 = max(0, row[2]), max(0, row[3])
            x2, y2 = min(width, row[4]), min(height, row[5])
            keep.append((x2 - x1) * (y2 - y1) <= limit)
        else:
            keep.append(True)
    return rows[np.array(keep, dtype=bool)]


def to_boxes(rows: np.ndarray, labels: tuple[str, ...], width: int, height: int) -> list[Box]:
    boxes = []
    for row in rows:
        # Python's max/min on the float32 values, as PaddleX does: no rounding is introduced.
        xmin, ymin = max(0.0, float(row[2])), max(0.0, float(row[3]))
        xmax, ymax = min(float(width), float(row[4])), min(float(height), float(row[5]))
        if xmax <= xmin or ymax <= ymin:
            continue
        cls_id = int(row[0])
        label = labels[cls_id] if 0 <= cls_id < len(labels) else str(cls_id)
        boxes.append(Box(cls_id, label, float(row[1]), xmin, ymin, xmax, ymax))
    return boxes


def finish(rows: np.ndarray, threshold: Threshold, labels: tuple[str, ...], width: int, height: int,
           max_detections: int = 0) -> list[Box]:
    rows = apply_threshold(np.asarray(rows, dtype=np.float32).reshape(-1, 6), threshold)
    rows = drop_whole_image_boxes(rows, labels, width, height)
    boxes = to_boxes(rows, labels, width, height)
    return boxes[:max_detections] if max_detections > 0 else boxes
