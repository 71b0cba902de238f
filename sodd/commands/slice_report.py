"""`sodd slice-report`: plain against sliced inference on real images, for every merge method.

Runs a model directory in-process on a VisDrone image with its ground truth (recall of one class
at IoU 0.5, for all objects and for those under 32x32 px, and that class's COCO AP at IoU 0.5)
and on further images without ground truth (box counts), times each way, draws them side by side
and prints the tables as Markdown. docs/slicing.md holds its output for the shared test images.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sodd.model.overlap import box_areas, overlap_terms
from sodd.model.postprocess import Box, Threshold, finish
from sodd.model.slicing import MERGE_METHODS, SliceOptions, crops_for, merge_crop_rows, plan_slices

SMALL_AREA = 32 * 32  # COCO's "small"
RECALL_IOU = 0.5
VISDRONE_CAR = 4  # VisDrone categories 1..10: pedestrian, people, bicycle, car, ...


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "slice-report",
        help="compare plain and sliced inference on real images (recall, AP50, slices, latency)",
        description="Plain against sliced inference for each merge method; prints Markdown tables and "
                    "writes side-by-side drawings.")
    parser.add_argument("--model", type=Path, required=True, help="a model directory")
    parser.add_argument("--visdrone", type=Path, required=True,
                        help="a VisDrone image; its .txt ground truth beside it")
    parser.add_argument("--coco", nargs=3, action="append", default=[], metavar=("IMAGE", "JSON", "CLASS_ID"),
                        help="an image with COCO ground truth (every box in JSON for that file name counts) and "
                             "the model class it shows; may repeat")
    parser.add_argument("--images", type=Path, nargs="*", default=[], help="further images, without ground truth")
    parser.add_argument("--class-id", type=int, default=2, help="the model's class compared (default 2, COCO car)")
    parser.add_argument("--visdrone-category", type=int, default=VISDRONE_CAR,
                        help="the VisDrone category it corresponds to (default 4, car)")
    parser.add_argument("--score", type=float, default=0.3, help="score a box must exceed to count (default 0.3)")
    parser.add_argument("--ap-score", type=float, default=0.1,
                        help="threshold for the boxes behind AP50 (default 0.1, SAHI's low-confidence level)")
    parser.add_argument("--slice", type=int, nargs="*", default=[384],
                        help="explicit square window sizes to report besides the automatic one (default 384)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per way, the median is shown (default 3)")
    parser.add_argument("--drawings", type=Path, default=Path("docs/img"),
                        help="folder for the drawings (default docs/img)")
    parser.set_defaults(func=run)


# --------------------------------------------------------------------------------------------
# Ground truth and matching
# --------------------------------------------------------------------------------------------

def read_visdrone(path: Path, category: int) -> np.ndarray:
    """[N, 4] x1, y1, x2, y2 of one category from a VisDrone annotation file."""
    boxes = []
    for line in path.read_text().splitlines():
        fields = [f for f in line.strip().split(",") if f != ""]
        if len(fields) >= 6 and int(fields[5]) == category:
            x, y, w, h = (float(v) for v in fields[:4])
            boxes.append((x, y, x + w, y + h))
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def read_coco(path: Path, image_name: str) -> np.ndarray:
    """[N, 4] x1, y1, x2, y2 of every annotation of one image in a COCO file."""
    import json

    data = json.loads(path.read_text())
    ids = {img["id"] for img in data.get("images", []) if Path(img["file_name"]).name == image_name}
    boxes = [(x, y, x + w, y + h) for ann in data.get("annotations", []) if ann["image_id"] in ids
             for x, y, w, h in [ann["bbox"]]]
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def matched(truth: np.ndarray, boxes: Sequence[Box], iou: float = RECALL_IOU) -> np.ndarray:
    """Which ground-truth boxes a detection claims: best score first, one detection per object."""
    found = np.zeros(len(truth), dtype=bool)
    if not len(truth):
        return found
    areas = box_areas(truth)
    for box in sorted(boxes, key=lambda b: -b.score):
        corners = np.array([box.xmin, box.ymin, box.xmax, box.ymax], dtype=np.float64)
        inter, union = overlap_terms(truth, corners, areas, box_areas(corners))
        overlap = inter / union
        overlap[found] = -1.0
        best = int(np.argmax(overlap))
        if overlap[best] >= iou:
            found[best] = True
    return found


def recall(truth: np.ndarray, boxes: Sequence[Box]) -> tuple[float, float]:
    """Recall of all objects and of those under 32x32 px in area."""
    found = matched(truth, boxes)
    small = (truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1]) < SMALL_AREA
    return float(found.mean()) if len(found) else 0.0, float(found[small].mean()) if small.any() else 0.0


def ap50(truth: np.ndarray, boxes: Sequence[Box], width: int, height: int) -> float:
    from sodd.training.evaluation import evaluate_coco

    gt = {
        "images": [{"id": 1, "width": width, "height": height}],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]} for i, b in enumerate(truth.tolist())],
    }
    detections = [{"image_id": 1, "category_id": 1, "score": b.score,
                   "bbox": [b.xmin, b.ymin, b.xmax - b.xmin, b.ymax - b.ymin]} for b in boxes]
    return evaluate_coco(gt, detections).ap50


# --------------------------------------------------------------------------------------------
# Running the ways
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Way:
    name: str
    options: SliceOptions | None  # None: the whole image, as the daemon runs it without slicing


@dataclass
class Outcome:
    way: Way
    boxes: list[Box]  # the compared class, score above --score
    ap_boxes: list[Box]  # the compared class, score above --ap-score
    slices: int
    seconds: float  # one detection: network runs (median wall time) + merge and final step
    cpu_seconds: float  # the network runs' median CPU time over all threads
    merge_ms: float  # median wall time of merging the crops' rows and the final step


def ways(slices: Sequence[int]) -> list[Way]:
    out = [Way("plain", None)]
    sizes: list[tuple[str, dict]] = [("auto", {"auto": True})]
    sizes += [(f"{s}px", {"slice_height": s, "slice_width": s}) for s in slices]
    for label, size in sizes:
        for method in MERGE_METHODS:
            for metric in ("ios", "iou"):
                out.append(Way(f"{label} {method} {metric}", SliceOptions(**size, merge=method, match_metric=metric)))
    return out


def raw_runner(detector) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """The network's rows per image before any threshold, from the daemon's engine. The report
    runs the detection core's steps one by one because every merge way shares one network pass."""
    from sodd.model.preprocess import prepare

    served = detector.served

    def run(images: list[np.ndarray]) -> list[np.ndarray]:
        prepared = [prepare(image, served.model_dir.preprocess) for image in images]
        return [result.rows for result in served.runner.run_images_sync(prepared)]

    return run


@dataclass(frozen=True)
class NetworkRun:
    outputs: list[np.ndarray]
    seconds: float
    cpu_seconds: float


def run_network(detector, crops: list[np.ndarray], repeat: int) -> NetworkRun:
    """Raw rows for the crops, with the median wall and CPU time of `repeat` runs."""
    run = raw_runner(detector)
    timings, cpu, outputs = [], [], []
    for _ in range(max(1, repeat)):
        start, start_cpu = time.perf_counter(), time.process_time()
        outputs = run(crops)
        timings.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return NetworkRun(outputs, statistics.median(timings), statistics.median(cpu))


def measure(detector, image: np.ndarray, way: Way, class_id: int, score: float, ap_score: float,
            repeat: int, cache: dict[tuple, NetworkRun]) -> Outcome:
    """One way on one image. Ways with the same windows share one timed network pass (`cache`):
    the merge methods differ only in what happens after the network."""
    model_dir = detector.served.model_dir
    height, width = image.shape[:2]
    if way.options is None:
        windows, crops = [(0, 0, width, height)], [image]
    else:
        windows, crops = crops_for(image, way.options, model_dir.input_size)
    key = (way.options is None, tuple(windows))
    if key not in cache:
        cache[key] = run_network(detector, crops, repeat)
    network = cache[key]

    def after_network(threshold: Threshold) -> list[Box]:
        rows = network.outputs[0] if way.options is None else merge_crop_rows(
            network.outputs, windows, way.options, threshold)
        return finish(rows, threshold, model_dir.label_list, width, height)

    merge_times = []
    for _ in range(max(5, repeat)):
        start = time.perf_counter()
        boxes = after_network(score)
        merge_times.append(time.perf_counter() - start)
    merge_seconds = statistics.median(merge_times)
    return Outcome(way, [b for b in boxes if b.cls_id == class_id],
                   [b for b in after_network(ap_score) if b.cls_id == class_id], len(crops),
                   network.seconds + merge_seconds, network.cpu_seconds, merge_seconds * 1000)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def draw_side_by_side(image_bgr: np.ndarray, panels: Sequence[Outcome], path: Path, width: int = 1600) -> Path:
    """Panels two per row, each titled, saved as a JPEG small enough for the docs."""
    from PIL import Image, ImageDraw, ImageFont
    from sodd_client.results import draw

    rgb = Image.fromarray(image_bgr[:, :, ::-1])
    drawn = []
    for outcome in panels:
        result = {"boxes": [{"label": b.label, "score": b.score, "coordinate": b.coordinate} for b in outcome.boxes]}
        picture = draw(rgb, result)
        title = f"{outcome.way.name}: {len(outcome.boxes)} boxes, {outcome.slices} run(s)"
        canvas = ImageDraw.Draw(picture)
        font = ImageFont.load_default(size=max(14, picture.width // 40))
        canvas.rectangle(canvas.textbbox((8, 8), title, font=font), fill=(0, 0, 0))
        canvas.text((8, 8), title, fill=(255, 255, 255), font=font)
        drawn.append(picture)
    columns = 2 if len(drawn) > 1 else 1
    rows = (len(drawn) + columns - 1) // columns
    cell_w = width // columns
    cell_h = round(rgb.height * cell_w / rgb.width)
    sheet = Image.new("RGB", (cell_w * columns, cell_h * rows), (255, 255, 255))
    for i, picture in enumerate(drawn):
        sheet.paste(picture.resize((cell_w, cell_h), Image.LANCZOS), ((i % columns) * cell_w, (i // columns) * cell_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    for quality in (80, 70, 60, 50):  # the docs keep each drawing under 300 KB
        sheet.save(path, "JPEG", quality=quality, optimize=True)
        if path.stat().st_size < 300_000:
            break
    return path


def _pct(value: float) -> str:
    return f"{value:.3f}"


def run(args: argparse.Namespace) -> int:
    import cv2

    from sodd.runtime.local import LocalDetector

    truth_file = args.visdrone.with_suffix(".txt")
    coco = [(Path(image), Path(gt), int(class_id)) for image, gt, class_id in args.coco]
    for path in (args.model, args.visdrone, truth_file, *args.images, *(p for c in coco for p in c[:2])):
        if not path.exists():
            print(f"{path} does not exist", file=sys.stderr)
            return 2
    with_truth = [(args.visdrone, read_visdrone(truth_file, args.visdrone_category), args.class_id)]
    with_truth += [(image, read_coco(gt, image.name), class_id) for image, gt, class_id in coco]
    detector = LocalDetector(args.model, threads=args.threads)
    try:
        print(f"Recall at IoU {RECALL_IOU} of boxes scoring above {args.score}; AP50 from boxes scoring above "
              f"{args.ap_score}. Network wall and CPU time are medians of {args.repeat} passes, shared by the "
              "ways with the same windows; latency adds the merge and final step.\n")
        for image_path, truth, class_id in with_truth:
            _section(detector, cv2.imread(str(image_path)), image_path, truth, class_id, args)
        for image_path in args.images:
            _section(detector, cv2.imread(str(image_path)), image_path, None, args.class_id, args)
    finally:
        detector.close()
    return 0


def _section(detector, image: np.ndarray, image_path: Path, truth: np.ndarray | None, class_id: int,
             args: argparse.Namespace) -> None:
    """One image's table and drawing; recall and AP50 columns when there is ground truth."""
    height, width = image.shape[:2]
    labels = detector.labels
    label = labels[class_id] if 0 <= class_id < len(labels) else str(class_id)
    windows = plan_slices(width, height, SliceOptions(auto=True), detector.served.model_dir.input_size)
    auto = f"automatic windows {windows[0][2] - windows[0][0]}x{windows[0][3] - windows[0][1]}"
    if truth is None:
        print(f"#### {image_path.name} ({width}x{height}), no ground truth; {auto}\n")
        print(f"| way | merge | metric | {label} boxes | runs | latency s | network CPU s | merge ms |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    else:
        small = int(((truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1]) < SMALL_AREA).sum())
        print(f"#### {image_path.name} ({width}x{height}), {len(truth)} {label}s, {small} under 32x32 px; {auto}\n")
        print("| way | merge | metric | recall | small recall | AP50 | runs | latency s | network CPU s | merge ms |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    outcomes: list[Outcome] = []
    cache: dict[tuple, NetworkRun] = {}
    for way in ways(args.slice):
        outcome = measure(detector, image, way, class_id, args.score, args.ap_score, args.repeat, cache)
        outcomes.append(outcome)
        size, method, metric = (way.name.split() + ["-", "-"])[:3]
        if truth is None:
            found = f"{len(outcome.boxes)}"
        else:
            r_all, r_small = recall(truth, outcome.boxes)
            small_text = _pct(r_small) if small else "-"
            found = f"{_pct(r_all)} | {small_text} | {_pct(ap50(truth, outcome.ap_boxes, width, height))}"
        print(f"| {size} | {method} | {metric} | {found} | {outcome.slices} | {outcome.seconds:.2f} | "
              f"{outcome.cpu_seconds:.2f} | {outcome.merge_ms:.1f} |", flush=True)
    path = draw_side_by_side(image, _panels(outcomes, args.slice), args.drawings / f"slicing-{image_path.stem}.jpg")
    print(f"\n![plain and sliced]({path.as_posix()})\n")


def _panels(outcomes: Sequence[Outcome], slices: Sequence[int]) -> list[Outcome]:
    """Plain, then each merge method (IoS) at the first explicit size, or the automatic one."""
    size = f"{slices[0]}px" if slices else "auto"
    wanted = ["plain"] + [f"{size} {method} ios" for method in MERGE_METHODS]
    by_name = {o.way.name: o for o in outcomes}
    return [by_name[name] for name in wanted if name in by_name]
