"""`sodd evaluate`: COCO mAP of a model directory, or of the model a daemon serves, on a dataset."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from sodd.datasets.check import write_result
from sodd.datasets.coco import SplitData, load_dataset
from sodd.datasets.errors import DatasetError
from sodd.training.detections import DetectionError, DetectionRun, Detector, class_to_category, run_detector
from sodd.training.evaluation import CocoMetrics, class_names, evaluate_coco

RESULT_FILE = "evaluate_result.json"  # PaddleX's
REPORT_FILE = "evaluate_report.json"
DETECTIONS_FILE = "detections.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="COCO mAP of a model on a dataset (model directory or a running daemon)",
        description=(
            "Evaluate on a PaddleX COCO dataset. Class id i of the model is the i-th smallest "
            "category id of the dataset (PaddleDetection's rule)."
        ),
    )
    parser.add_argument("--dataset", type=Path, required=True, help="dataset root (images/, annotations/)")
    parser.add_argument(
        "--model", help="a model directory; with --server, the name of a served model (default: the default)"
    )
    parser.add_argument("--server", metavar="HOST:PORT", help="evaluate the model a running daemon serves")
    parser.add_argument("--split", default="val", choices=["val", "train"], help="annotation file (default: val)")
    parser.add_argument("--device", default="cpu", help="device for a model directory (default: cpu)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="keep boxes scoring above this (default 0: every box the model's NMS keeps, as mAP needs)",
    )
    parser.add_argument("--max-dets", type=int, default=100, help="boxes per image COCO counts (default 100)")
    parser.add_argument("--output", type=Path, default=Path("output"), help="result folder (default: ./output)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request deadline with --server, s")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.server and not args.model:
        print("give --model DIR, or --server HOST:PORT", file=sys.stderr)
        return 2
    try:
        dataset = load_dataset(args.dataset, splits=(args.split,))
        split = dataset.splits[args.split]
        detections, detector = _detect(args, split, dataset.root)
    except (DatasetError, DetectionError) as exc:
        err_type = exc.err_type if isinstance(exc, DatasetError) else "DetectionError"
        # PaddleX's failure record, so tools reading evaluate_result.json see the outcome either way.
        write_result(args.output / RESULT_FILE, {"done_flag": False, "err_type": err_type, "err_msg": str(exc)})
        print(f"evaluate failed ({err_type}): {exc}", file=sys.stderr)
        return 1

    metrics = evaluate_coco(split.coco, detections.results, max_dets=args.max_dets)
    gt_counts = Counter(ann["category_id"] for ann in split.coco["annotations"])
    print(format_table(metrics, split.categories, gt_counts))
    if detections.unmapped_boxes:
        print(f"warning: {detections.unmapped_boxes} boxes had a class id without a category", file=sys.stderr)

    write_result(args.output / RESULT_FILE, {"done_flag": True, "metrics": {"AP": metrics.ap}})
    write_result(args.output / DETECTIONS_FILE, detections.results)
    report = {
        "dataset": str(dataset.root),
        "split": args.split,
        "annotation_file": str(split.path),
        "detector": detector.description,
        "threshold": args.threshold,
        "max_dets": args.max_dets,
        "class_to_category": {
            i: {"category_id": c, "name": split.categories[c]}
            for i, c in enumerate(class_to_category(split.categories))
        },
        "model_labels": list(detector.labels),
        "images": detections.images,
        "seconds": round(detections.seconds, 3),
        "images_per_second": round(detections.images / detections.seconds, 3) if detections.seconds else None,
        "unmapped_boxes": detections.unmapped_boxes,
        "ground_truth_per_class": {split.categories[c]: gt_counts.get(c, 0) for c in sorted(split.categories)},
        "metrics": metrics.to_dict(),
    }
    write_result(args.output / REPORT_FILE, report)
    print(f"results written to {args.output / RESULT_FILE} and {args.output / REPORT_FILE}")
    return 0


def _detect(args: argparse.Namespace, split: SplitData, root: Path) -> tuple[DetectionRun, Detector]:
    detector = _open_detector(args)
    try:
        _warn_on_label_mismatch(detector, split.categories)
        progress = _progress(args.no_progress, len(split.coco["images"]))
        return run_detector(detector, split, root, progress), detector
    finally:
        detector.close()


def format_table(metrics: CocoMetrics, categories: dict[int, str], gt_counts: Counter[int]) -> str:
    def value(v: float) -> str:
        return "   n/a" if v < 0 else f"{v:6.4f}"  # -1: no ground truth in that range

    rows = [
        ("mAP (0.5:0.95)", metrics.ap),
        ("mAP (0.5)", metrics.ap50),
        ("mAP (0.75)", metrics.ap75),
        ("AP small  (< 32x32 px)", metrics.ap_small),
        ("AP medium (32..96 px)", metrics.ap_medium),
        ("AP large  (> 96x96 px)", metrics.ap_large),
        (f"AR (max {metrics.max_dets} boxes)", metrics.ar100),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{name:<{width}}  {value(v)}" for name, v in rows]
    name_width = max([len("class"), *(len(n) for n in categories.values())])
    lines += ["", f"{'id':>4}  {'class':<{name_width}}  {'objects':>7}  {'AP':>6}  {'AP50':>6}"]
    lines.append(f"{'-' * 4}  {'-' * name_width}  {'-' * 7}  {'-' * 6}  {'-' * 6}")
    hidden = 0
    keys = class_names(categories)
    for cat_id in sorted(categories):
        name = categories[cat_id]
        ap, ap50 = metrics.per_class.get(keys[cat_id], -1.0), metrics.per_class_ap50.get(keys[cat_id], -1.0)
        if not gt_counts.get(cat_id) and ap < 0:
            hidden += 1  # a category without objects has no AP; 80 such rows would hide the rest
            continue
        lines.append(f"{cat_id:>4}  {name:<{name_width}}  {gt_counts.get(cat_id, 0):>7}  {value(ap)}  {value(ap50)}")
    if hidden:
        lines.append(f"({hidden} categories without objects not shown)")
    lines.append(f"{metrics.num_images} images, {metrics.num_ground_truth} objects, {metrics.num_detections} boxes")
    return "\n".join(lines)


def _open_detector(args: argparse.Namespace) -> Detector:
    from sodd.training.detections import LocalModel, ServedModel

    if args.server:
        return ServedModel(args.server, args.model or "", args.threshold, timeout=args.timeout)
    return LocalModel(Path(args.model), args.device, args.threshold)


def _warn_on_label_mismatch(detector: Detector, categories: dict[int, str]) -> None:
    expected = [categories[c] for c in class_to_category(categories)]
    labels = list(detector.labels)
    if not labels:
        return
    if len(labels) != len(expected):
        print(
            f"warning: the model has {len(labels)} classes, the dataset {len(expected)} categories",
            file=sys.stderr,
        )
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(labels, expected, strict=False)) if a != b]
    if differ:
        shown = ", ".join(f"class {i} '{a}' -> category '{b}'" for i, a, b in differ[:5])
        print(f"warning: model labels and dataset categories differ: {shown}", file=sys.stderr)


def _progress(disabled: bool, total: int) -> Any:
    from tqdm import tqdm

    return lambda items: tqdm(items, total=total, desc="evaluate", unit="img", disable=disabled, file=sys.stderr)
