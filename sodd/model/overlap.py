"""How much two boxes overlap: the one computation behind NMS, slice merging, backend agreement
and recall matching.

`overlap_terms` gives the intersection of boxes `a` and `b` (xyxy, last axis; any shapes that
broadcast: one box against many, or a[:, None] against b[None]) and the denominator of the chosen
metric: IoU divides by the union, IoS by the smaller area. Callers divide and decide what an
undefined value (a zero or negative denominator) means, because that is where their references
differ: Paddle's NMS kernel zeroes disjoint pairs, SAHI zeroes undefined values, the backend
check treats two degenerate boxes as equal when their corners are. The steps and their order are
fixed, so every caller gets the bits it got before this was shared (Paddle's NMS byte for byte).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Metric = Literal["iou", "ios"]


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """(x2 - x1) * (y2 - y1) of each box, as they are (negative for an inverted box)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def overlap_terms(a: np.ndarray, b: np.ndarray, a_areas: np.ndarray, b_areas: np.ndarray, *,
                  metric: Metric = "iou", offset: np.floating | None = None,
                  clip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(intersection, denominator) of boxes `a` and `b` with the given areas.

    `offset` is added to the intersection's width and height (Paddle's `+1` pixel convention for
    unnormalised boxes adds 1; its normalised path adds 0, which the kernel also does). `clip`
    floors widths and heights at 0; Paddle's kernel does not, it masks disjoint pairs instead.
    """
    inter_w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    inter_h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    if offset is not None:
        inter_w, inter_h = inter_w + offset, inter_h + offset
    if clip:
        inter_w, inter_h = np.maximum(0, inter_w), np.maximum(0, inter_h)
    inter = inter_w * inter_h
    denominator = a_areas + b_areas - inter if metric == "iou" else np.minimum(a_areas, b_areas)
    return inter, denominator
