"""COCO box evaluation through pycocotools' COCOeval.

The numbers must match what PaddleX (PaddleDetection's `cocoapi_eval`) reports, so the evaluation
itself is delegated to pycocotools unchanged; this module only prepares inputs, keeps pycocotools
quiet and reads its results into a small value object.

A metric of -1 follows pycocotools: the dataset holds no ground truth for that area range or class.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["CocoMetrics", "class_names", "evaluate_coco"]

# Order of COCOeval.stats for iouType "bbox".
_STAT_NAMES = (
    "ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
    "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large",
)  # fmt: skip


@dataclass(frozen=True)
class CocoMetrics:
    """COCO box metrics, all in 0..1 (-1 where there is no ground truth)."""

    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    ar1: float = -1.0
    ar10: float = -1.0
    ar100: float = -1.0
    ar_small: float = -1.0
    ar_medium: float = -1.0
    ar_large: float = -1.0
    # Category name -> AP@[0.5:0.95] and AP@0.5, in the dataset's category-id order.
    per_class: Mapping[str, float] = field(default_factory=dict)
    per_class_ap50: Mapping[str, float] = field(default_factory=dict)
    num_images: int = 0
    num_ground_truth: int = 0
    num_detections: int = 0
    max_dets: int = 100  # the per-image cap behind ap..ap_large and ar100

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in _STAT_NAMES}
        out["per_class"] = dict(self.per_class)
        out["per_class_ap50"] = dict(self.per_class_ap50)
        out["num_images"] = self.num_images
        out["num_ground_truth"] = self.num_ground_truth
        out["num_detections"] = self.num_detections
        out["max_dets"] = self.max_dets
        return out


def evaluate_coco(
    gt: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    *,
    max_dets: int = 100,
    verbose: bool = False,
) -> CocoMetrics:
    """Evaluate COCO result dicts `{image_id, category_id, bbox [x, y, w, h], score}` against `gt`.

    `max_dets` is the per-image detection cap of the headline AP (COCO's and PaddleX's 100).
    pycocotools prints progress and the summary table; that is only shown when `verbose` is set.
    Neither argument is modified.
    """
    known_images = {img["id"] for img in gt.get("images", [])}
    unknown = {d["image_id"] for d in detections} - known_images
    if unknown:
        raise ValueError(f"detections refer to image ids not in the ground truth: {sorted(unknown)[:10]}")

    sink: contextlib.AbstractContextManager[Any] = (
        contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    )
    with sink:
        coco_gt = _ground_truth(gt)
        coco_dt = _results(coco_gt, detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    stats = [float(s) for s in evaluator.stats]
    per_class, per_class_ap50 = _per_class(coco_gt, evaluator)
    return CocoMetrics(
        **dict(zip(_STAT_NAMES, stats, strict=True)),
        per_class=per_class,
        per_class_ap50=per_class_ap50,
        num_images=len(coco_gt.getImgIds()),
        num_ground_truth=len(coco_gt.getAnnIds()),
        num_detections=len(detections),
        max_dets=max_dets,
    )


def _ground_truth(gt: Mapping[str, Any]) -> COCO:
    dataset = copy.deepcopy(dict(gt))
    dataset.setdefault("images", [])
    dataset.setdefault("categories", [])
    dataset.setdefault("annotations", [])
    for ann in dataset["annotations"]:
        # COCOeval needs `area` (size ranges) and `iscrowd`; hand-made files often leave them out.
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _results(coco_gt: COCO, detections: Sequence[Mapping[str, Any]]) -> COCO:
    anns = [dict(d) for d in detections]
    if anns:
        return coco_gt.loadRes(anns)
    # loadRes indexes the first result, so an empty list needs the same object built by hand.
    coco = COCO()
    coco.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    coco.createIndex()
    return coco


def _per_class(coco_gt: COCO, evaluator: COCOeval) -> tuple[dict[str, float], dict[str, float]]:
    """AP per category as PaddleDetection computes it: area "all", the largest maxDets."""
    precision = evaluator.eval["precision"]  # [iou, recall, category, area, maxDets]
    ap: dict[str, float] = {}
    ap50: dict[str, float] = {}
    names = class_names({c: str(coco_gt.cats[c].get("name", c)) for c in evaluator.params.catIds})
    for k, cat_id in enumerate(evaluator.params.catIds):
        name = names[cat_id]
        ap[name] = _mean_valid(precision[:, :, k, 0, -1])
        ap50[name] = _mean_valid(precision[0, :, k, 0, -1])
    return ap, ap50


def class_names(categories: Mapping[int, str]) -> dict[int, str]:
    """Category id -> the key of `per_class`: its name, with the id added when names clash."""
    counts = Counter(categories.values())
    return {c: name if counts[name] == 1 else f"{name} (id {c})" for c, name in categories.items()}


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    if valid.size == 0:
        return -1.0
    mean = float(np.mean(valid))
    return mean if math.isfinite(mean) else -1.0
