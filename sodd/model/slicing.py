"""Sliced inference: cut a large image into overlapping windows, detect in each, merge the boxes.

Tiny objects vanish when a 1920x1080 frame is shrunk to a 640x640 network input; run on windows
of about the network's size they keep their pixels. This module is pure numpy: it plans the
windows, shifts each window's rows into image pixels and merges them. The caller supplies the
function that runs crops through the model, so the daemon can batch them on its engine.

Windows follow SAHI's `get_slice_bboxes`: row by row from the top left, a step of
`size - int(overlap_ratio * size)`, and the last window of a row or column moved back so that it
ends flush with the image border (never a partial window). Merging follows SAHI 0.12.8's
postprocess definitions (docs/slicing.md states them); the code here is our own.

Rows are the network's raw box rows `[cls, score, x1, y1, x2, y2]` (float32), the form
`sodd.model.postprocess.finish` takes; thresholding, clipping to the image and labels stay there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sodd.errors import InvalidArgument
from sodd.model.overlap import box_areas, overlap_terms
from sodd.model.postprocess import Threshold, apply_threshold

MergeMethod = Literal["nms", "nmm", "greedynmm"]
MatchMetric = Literal["iou", "ios"]
Window = tuple[int, int, int, int]  # x1, y1, x2, y2 in image pixels, x2/y2 exclusive
RunBatch = Callable[[list[np.ndarray]], Sequence[np.ndarray]]

MERGE_METHODS: tuple[str, ...] = ("nms", "nmm", "greedynmm")
MATCH_METRICS: tuple[str, ...] = ("iou", "ios")
# A request can ask for tiny windows on a huge image; beyond this many it is refused rather than
# tying a device up for minutes.
MAX_SLICES = 256
MIN_SLICE_SIZE = 32
# The automatic mode grows its windows until the plan needs at most this many (see auto_slice_size).
AUTO_MAX_SLICES = 32
AUTO_GROWTH = 1.25


@dataclass(frozen=True)
class SliceOptions:
    """How one request is sliced and merged.

    Defaults: PaddleDetection's overlap (0.25) and merge (NMS), SAHI's match rule (IoS >= 0.5);
    NMS keeps the network's own boxes, which measured best (docs/slicing.md).

    `auto` picks the window size (see `auto_slice_size`); the explicit sizes must then be 0.
    """

    slice_height: int = 0
    slice_width: int = 0
    overlap_height_ratio: float = 0.25
    overlap_width_ratio: float = 0.25
    full_image: bool = True
    merge: MergeMethod = "nms"
    match_metric: MatchMetric = "ios"
    match_threshold: float = 0.5
    class_agnostic: bool = False
    auto: bool = False

    def __post_init__(self) -> None:
        validate(self)


def validate(options: SliceOptions) -> None:
    """Raise InvalidArgument naming the first field that is out of range."""
    for name in ("slice_height", "slice_width"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"slicing.{name} must be an integer, got {value!r}")
        if options.auto and value != 0:
            raise InvalidArgument(f"slicing.{name} must be 0 when slicing.auto is set (got {value})")
        if not options.auto and value < MIN_SLICE_SIZE:
            raise InvalidArgument(
                f"slicing.{name} must be at least {MIN_SLICE_SIZE} pixels (got {value}); "
                "or set slicing.auto to let the daemon choose")
    for name in ("overlap_height_ratio", "overlap_width_ratio"):
        value = getattr(options, name)
        if not _is_real(value) or not 0.0 <= value < 1.0:
            raise InvalidArgument(f"slicing.{name} must be in [0, 1), got {value!r}")
    if options.merge not in MERGE_METHODS:
        raise InvalidArgument(f"slicing.merge must be one of {', '.join(MERGE_METHODS)}; got {options.merge!r}")
    if options.match_metric not in MATCH_METRICS:
        raise InvalidArgument(
            f"slicing.match_metric must be one of {', '.join(MATCH_METRICS)}; got {options.match_metric!r}")
    if not _is_real(options.match_threshold) or not 0.0 < options.match_threshold <= 1.0:
        # 0 would make every pair a match and fold the whole image into one box.
        raise InvalidArgument(f"slicing.match_threshold must be in (0, 1], got {options.match_threshold!r}")
    for name in ("full_image", "class_agnostic", "auto"):
        if not isinstance(getattr(options, name), bool):
            raise InvalidArgument(f"slicing.{name} must be a boolean, got {getattr(options, name)!r}")


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------

def axis_count(length: int, size: int, overlap_ratio: float) -> int:
    """How many windows `axis_windows` returns, in O(1): admission counts before anything is planned."""
    if length <= 0:
        return 0
    if size >= length:
        return 1
    step = size - int(overlap_ratio * size)  # at least 1, as the ratio is below 1
    return -(-(length - size) // step) + 1


def axis_windows(length: int, size: int, overlap_ratio: float) -> list[tuple[int, int]]:
    """(start, end) along one axis, SAHI's rule: step `size - int(ratio * size)`, last one flush."""
    overlap = int(overlap_ratio * size)
    spans: list[tuple[int, int]] = []
    start = end = 0
    while end < length:
        end = start + size
        if end > length:
            end = length
            start = max(0, end - size)
        spans.append((start, end))
        start = end - overlap
    return spans


def auto_slice_size(width: int, height: int, options: SliceOptions,
                    model_input_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the windows the automatic mode uses, for the options' overlap ratios.

    1. Start from the network's input size: a window that size reaches the network unshrunk.
       While that takes more than AUTO_MAX_SLICES windows (a 4K frame on a 640 model), grow
       both sides by 25% at a time: a bounded cost per image matters more to a server.
    2. Shrink the windows as far as the same number of windows still covers the image, one
       scale for both sides so the network sees undistorted objects. Same number of network
       runs, but the last window is no longer pushed back over its neighbour, and every object
       is enlarged by the network's resize instead (small objects gain the most).
    A side never exceeds the image: an image no larger than the input is one window.
    """
    in_h, in_w = max(1, int(model_input_hw[0])), max(1, int(model_input_hw[1]))
    r_h, r_w = options.overlap_height_ratio, options.overlap_width_ratio
    grow = 1.0
    while True:
        base_h, base_w = math.ceil(in_h * grow), math.ceil(in_w * grow)
        n_h = axis_count(height, min(base_h, height), r_h)
        n_w = axis_count(width, min(base_w, width), r_w)
        if n_h * n_w <= AUTO_MAX_SLICES or (base_h >= height and base_w >= width):
            break
        grow *= AUTO_GROWTH
    scale = max(_smallest_cover(height, min(base_h, height), r_h, n_h) / base_h,
                _smallest_cover(width, min(base_w, width), r_w, n_w) / base_w)
    return min(height, math.ceil(base_h * scale)), min(width, math.ceil(base_w * scale))


def _smallest_cover(length: int, size: int, overlap_ratio: float, count: int) -> int:
    """The smallest window side, at most `size` and at least MIN_SLICE_SIZE, that covers `length`
    in at most `count` windows. The count never grows with the side (the step never shrinks and
    the rest to cover does), so a bisection finds it in O(log size) counts."""
    low, high = min(MIN_SLICE_SIZE, size), size  # high always fits
    while low < high:
        middle = (low + high) // 2
        if axis_count(length, middle, overlap_ratio) <= count:
            high = middle
        else:
            low = middle + 1
    return high


def slice_size(width: int, height: int, options: SliceOptions,
               model_input_hw: tuple[int, int] | None) -> tuple[int, int]:
    """(h, w) of the windows for an image of `width` x `height`: the options' or the automatic ones."""
    if width <= 0 or height <= 0:
        raise InvalidArgument(f"cannot slice an empty image ({width}x{height})")
    if options.auto:
        if model_input_hw is None:
            raise InvalidArgument("slicing.auto needs a model with a fixed input size; give slice_height/width")
        return auto_slice_size(width, height, options, model_input_hw)
    return options.slice_height, options.slice_width


def crop_count(width: int, height: int, options: SliceOptions, model_input_hw: tuple[int, int] | None) -> int:
    """Network runs slicing an image of this size takes (the full-image pass included), from the
    size alone: admission calls it before the image is decoded or any window is listed."""
    slice_h, slice_w = slice_size(width, height, options, model_input_hw)
    rows = axis_count(height, slice_h, options.overlap_height_ratio)
    cols = axis_count(width, slice_w, options.overlap_width_ratio)
    whole_is_a_window = rows == cols == 1 and slice_h >= height and slice_w >= width
    return rows * cols + (1 if options.full_image and not whole_is_a_window else 0)


def plan_slices(width: int, height: int, options: SliceOptions,
                model_input_hw: tuple[int, int] | None) -> list[Window]:
    """The windows to run, row by row, as (x1, y1, x2, y2) in image pixels.

    A window side larger than the image is cut to the image. The full-image pass is not part of
    the plan (`crops_for` adds it). Raises InvalidArgument when the plan exceeds MAX_SLICES, before
    listing a single window.
    """
    slice_h, slice_w = slice_size(width, height, options, model_input_hw)
    count = axis_count(height, slice_h, options.overlap_height_ratio) * axis_count(
        width, slice_w, options.overlap_width_ratio)
    if count > MAX_SLICES:
        raise InvalidArgument(
            f"slicing a {width}x{height} image into {slice_w}x{slice_h} windows takes "
            f"{count} slices; at most {MAX_SLICES} are allowed, use larger slices")
    rows = axis_windows(height, slice_h, options.overlap_height_ratio)
    cols = axis_windows(width, slice_w, options.overlap_width_ratio)
    return [(x1, y1, x2, y2) for y1, y2 in rows for x1, x2 in cols]


# --------------------------------------------------------------------------------------------
# Merging (SAHI 0.12.8's definitions)
# --------------------------------------------------------------------------------------------

def _score_order(rows: np.ndarray) -> np.ndarray:
    """Score descending, ties by x1, y1, x2, y2 ascending: SAHI's deterministic order."""
    return np.lexsort((rows[:, 5], rows[:, 4], rows[:, 3], rows[:, 2], -rows[:, 1]))


_PRUNE_FROM = 256


class _Matcher:
    """Which boxes match box i, a row at a time, so memory stays linear in the number of boxes.

    Values are computed in float32 exactly as SAHI's pairwise matrix (0 where undefined), but
    only against boxes whose x-range can meet box i's: on a whole image's worth of slice boxes
    that is a small neighbourhood instead of every box.
    """

    def __init__(self, rows: np.ndarray, metric: str, threshold: float) -> None:
        self.boxes = rows[:, 2:6]
        self.areas = box_areas(self.boxes)
        self.metric = metric
        self.threshold = np.float32(threshold)
        widths = self.boxes[:, 2] - self.boxes[:, 0]
        # Pruning by x-range is only sound when a match needs an overlap (threshold > 0) and
        # every box is an ordinary one; below a few hundred boxes it costs more than it saves.
        self.prune = bool(threshold > 0 and len(rows) > _PRUNE_FROM and np.isfinite(self.boxes).all()
                          and (widths >= 0).all())
        if self.prune:
            self.by_x1 = np.argsort(self.boxes[:, 0], kind="stable")
            self.x1_sorted = self.boxes[self.by_x1, 0].astype(np.float64)
            self.reach = float(widths.max()) + 1.0  # a pixel of slack against rounding

    def matches(self, i: int) -> np.ndarray:
        """Ascending indices j (i itself included when it matches itself) with metric >= threshold."""
        if self.prune:
            lo = np.searchsorted(self.x1_sorted, float(self.boxes[i, 0]) - self.reach, side="left")
            hi = np.searchsorted(self.x1_sorted, float(self.boxes[i, 2]), side="right")
            near = np.sort(self.by_x1[lo:hi])
        else:
            near = np.arange(len(self.boxes))
        inter, denominator = overlap_terms(self.boxes[i], self.boxes[near], self.areas[i], self.areas[near],
                                           metric=self.metric)
        values = np.zeros(len(near), dtype=np.float32)
        np.divide(inter, denominator, out=values, where=denominator > 0)
        return near[values >= self.threshold]


def _pair_matches(a: Sequence[float], b: Sequence[float], metric: str, threshold: float) -> bool:
    """The pairwise re-check SAHI makes while merging, in float64 on the (grown) keeper box."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    denominator = area_a + area_b - inter if metric == "iou" else min(area_a, area_b)
    if denominator <= 0:  # SAHI divides and gets nan, which never matches
        return False
    return inter / denominator >= threshold


def _nms(rows: np.ndarray, metric: str, threshold: float) -> list[tuple[int, list[int]]]:
    matcher = _Matcher(rows, metric, threshold)
    suppressed = np.zeros(len(rows), dtype=bool)
    groups: list[tuple[int, list[int]]] = []
    for i in _score_order(rows).tolist():
        if suppressed[i]:
            continue
        groups.append((i, []))
        suppressed[matcher.matches(i)] = True
    return groups


def _greedy_nmm(rows: np.ndarray, metric: str, threshold: float) -> list[tuple[int, list[int]]]:
    """Each keeper takes the lower-ranked, unclaimed boxes that match it directly."""
    matcher = _Matcher(rows, metric, threshold)
    order = _score_order(rows)
    rank = np.empty(len(rows), dtype=np.intp)
    rank[order] = np.arange(len(rows))
    claimed = np.zeros(len(rows), dtype=bool)
    groups: list[tuple[int, list[int]]] = []
    for position, i in enumerate(order.tolist()):
        if claimed[i]:
            continue
        members = matcher.matches(i)
        members = members[(rank[members] > position) & ~claimed[members]]
        members = members[np.argsort(rank[members])]  # in score order, as SAHI lists them
        claimed[members] = True
        groups.append((i, members.tolist()))
    return groups


def _nmm(rows: np.ndarray, metric: str, threshold: float) -> list[tuple[int, list[int]]]:
    """Transitive merging: a box merged into a keeper brings along what it matches in turn.

    A box may claim another that scores lower, or scores the same without sorting before it by
    coordinates (SAHI's dominance rule); keepers are never claimed. Members are listed in the
    order they were claimed, candidates of one box by ascending input index, as SAHI does.
    """
    matcher = _Matcher(rows, metric, threshold)
    owner = np.full(len(rows), -1, dtype=np.intp)
    members_of: dict[int, list[int]] = {}
    groups: list[tuple[int, list[int]]] = []
    for i in _score_order(rows).tolist():
        matched = matcher.matches(i)
        matched = matched[(matched != i) & _dominated(rows, i, matched)]
        if owner[i] < 0:
            owner[i] = i
            members_of[i] = []
            groups.append((i, members_of[i]))
        keeper = int(owner[i])
        for m in matched.tolist():
            if owner[m] < 0:
                members_of[keeper].append(m)
                owner[m] = keeper
    return groups


def _dominated(rows: np.ndarray, i: int, others: np.ndarray) -> np.ndarray:
    """Which of `others` box i may claim: a lower score, or the same score and box i not sorting
    before it by (x1, y1, x2, y2), which is SAHI's rule."""
    score, other_scores = rows[i, 1], rows[others, 1]
    boxes = rows[others, 2:6]
    i_first = np.zeros(len(others), dtype=bool)
    still_equal = np.ones(len(others), dtype=bool)
    for c in range(4):
        i_first |= still_equal & (rows[i, 2 + c] < boxes[:, c])
        still_equal &= rows[i, 2 + c] == boxes[:, c]
    return (score > other_scores) | ((score == other_scores) & ~i_first)


_GROUPERS: dict[str, Callable[[np.ndarray, str, float], list[tuple[int, list[int]]]]] = {
    "nms": _nms,
    "greedynmm": _greedy_nmm,
    "nmm": _nmm,
}


@dataclass(frozen=True)
class MergedBox:
    """One output box and the input rows it was made from (`keeper` first, then `members`)."""

    row: np.ndarray  # float32 [cls, score, x1, y1, x2, y2]
    keeper: int
    members: tuple[int, ...]  # rows folded into it; NMS folds none (it only suppresses)


def group_rows(rows: np.ndarray, method: str, metric: str, threshold: float) -> list[tuple[int, list[int]]]:
    """The grouping step of a merge, before members are folded into their keeper: (keeper, the
    rows it claims) in the order the method makes them. NMS claims none; NMM and greedy NMM list
    members as SAHI does. The fold then re-checks each member against the grown box."""
    return _GROUPERS[method](rows, metric, threshold)


def merge_boxes(rows: np.ndarray, method: str, metric: str, threshold: float,
                class_agnostic: bool) -> list[MergedBox]:
    """Merge raw rows by SAHI's rules; the result is in score order (ties by box, as `_score_order`).

    NMS keeps the best box of each overlapping group. NMM and greedy NMM grow the keeper to the
    union of its members, one member at a time, re-checking each member against the grown box
    and dropping those that no longer match; the score is the highest and the class that of the
    higher-scoring box (on a tie, the member's). Without `class_agnostic` each class is merged
    on its own.
    """
    rows = np.asarray(rows, dtype=np.float32).reshape(-1, 6)
    if method not in _GROUPERS:
        raise InvalidArgument(f"slicing.merge must be one of {', '.join(MERGE_METHODS)}; got {method!r}")
    if metric not in MATCH_METRICS:
        raise InvalidArgument(f"slicing.match_metric must be one of {', '.join(MATCH_METRICS)}; got {metric!r}")
    if class_agnostic:
        subsets = [np.arange(len(rows))]
    else:
        subsets = [np.flatnonzero(rows[:, 0] == cls) for cls in np.unique(rows[:, 0])]
    merged: list[MergedBox] = []
    for index in subsets:
        for keeper, members in group_rows(rows[index], method, metric, threshold):
            merged.append(_fold(rows, int(index[keeper]), [int(index[m]) for m in members], metric, threshold))
    if merged:
        keys = np.array([m.row for m in merged], dtype=np.float32)
        merged = [merged[i] for i in _score_order(keys).tolist()]
    return merged


def _fold(rows: np.ndarray, keeper: int, members: list[int], metric: str, threshold: float) -> MergedBox:
    cls, score = float(rows[keeper, 0]), float(rows[keeper, 1])
    box = [float(v) for v in rows[keeper, 2:6]]
    folded: list[int] = []
    for m in members:
        other = [float(v) for v in rows[m, 2:6]]
        if not _pair_matches(box, other, metric, threshold):
            continue  # SAHI drops such a member: it is neither merged nor kept
        m_cls, m_score = float(rows[m, 0]), float(rows[m, 1])
        cls = cls if score > m_score else m_cls
        score = max(score, m_score)
        box = [min(box[0], other[0]), min(box[1], other[1]), max(box[2], other[2]), max(box[3], other[3])]
        folded.append(m)
    return MergedBox(np.array([cls, score, *box], dtype=np.float32), keeper, tuple(folded))


def merge_rows(rows: np.ndarray, options: SliceOptions) -> np.ndarray:
    """Merged rows [M, 6] float32 with the options' method, metric, threshold and class rule."""
    merged = merge_boxes(rows, options.merge, options.match_metric, options.match_threshold, options.class_agnostic)
    if not merged:
        return np.zeros((0, 6), dtype=np.float32)
    return np.stack([m.row for m in merged]).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SlicedDetection:
    rows: np.ndarray  # merged raw rows [M, 6] float32 in original-image pixels, before `finish`
    slices_run: int  # crops sent to the model, the full-image pass included
    windows: tuple[Window, ...]  # the crops in the order they were sent


def to_image_rows(rows: np.ndarray, window: Window) -> np.ndarray:
    """Clip a crop's rows to the crop, shift them into image pixels, drop empty and padding rows.

    Clipping first keeps only what the crop saw; the part of a box beyond the crop border is the
    network's guess, and leaving it would inflate areas and so the overlap used in merging.
    """
    x1, y1, x2, y2 = window
    rows = np.array(rows, dtype=np.float32).reshape(-1, 6)
    rows[:, 2] = np.clip(rows[:, 2], 0, x2 - x1) + x1
    rows[:, 3] = np.clip(rows[:, 3], 0, y2 - y1) + y1
    rows[:, 4] = np.clip(rows[:, 4], 0, x2 - x1) + x1
    rows[:, 5] = np.clip(rows[:, 5], 0, y2 - y1) + y1
    # Class -1 marks padding rows, which PaddleX never shows either.
    return rows[(rows[:, 4] > rows[:, 2]) & (rows[:, 5] > rows[:, 3]) & (rows[:, 0] > -1)]


def crops_for(image_bgr: np.ndarray, options: SliceOptions,
              model_input_hw: tuple[int, int] | None) -> tuple[list[Window], list[np.ndarray]]:
    """The windows to run (row by row, the whole image last when asked) and their crops.

    Crops are views into the image, not copies: preprocessing reads them where they lie. For
    callers that run the crops themselves, e.g. asynchronously; then `merge_crop_rows`.
    """
    height, width = image_bgr.shape[:2]
    windows = plan_slices(width, height, options, model_input_hw)
    whole: Window = (0, 0, width, height)
    if options.full_image and whole not in windows:
        windows.append(whole)
    return windows, [image_bgr[y1:y2, x1:x2] for x1, y1, x2, y2 in windows]


def merge_crop_rows(outputs: Sequence[np.ndarray], windows: Sequence[Window], options: SliceOptions,
                    threshold: Threshold | None = None) -> np.ndarray:
    """Each crop's raw rows (crop pixels) into image pixels, pre-filtered, merged: [M, 6] float32.

    `threshold` is the request's resolved threshold, applied to each crop's rows before merging,
    as SAHI applies its confidence threshold per slice: a box the user would not see must not
    stretch one they will (NMM). NMS results above the threshold are the same either way, since
    a lower-scored box never suppresses a higher one. Pass None to merge everything (e.g. for
    mAP); with NMM low-scoring boxes then grow the kept ones, which is why SAHI uses NMS there.
    """
    if len(outputs) != len(windows):
        raise ValueError(f"{len(outputs)} results for {len(windows)} crops")
    parts = [np.zeros((0, 6), dtype=np.float32)]
    for rows, window in zip(outputs, windows, strict=True):
        rows = to_image_rows(rows, window)
        parts.append(rows if threshold is None else apply_threshold(rows, threshold))
    return merge_rows(np.concatenate(parts), options)


def detect_sliced(image_bgr: np.ndarray, options: SliceOptions, model_input_hw: tuple[int, int] | None,
                  run_batch: RunBatch, threshold: Threshold | None = None) -> SlicedDetection:
    """Detect on every window of the plan (plus the whole image when asked) and merge.

    `run_batch(crops)` gets all crops in one list (windows row by row, the whole image last) and
    returns raw rows per crop in that crop's pixels; it decides how to batch them. `threshold`
    pre-filters each crop's rows (see `merge_crop_rows`); `sodd.model.postprocess.finish` with the
    same threshold turns the result's rows into boxes.
    """
    windows, crops = crops_for(image_bgr, options, model_input_hw)
    outputs = list(run_batch(crops))
    if len(outputs) != len(crops):
        raise ValueError(f"run_batch returned {len(outputs)} results for {len(crops)} crops")
    return SlicedDetection(rows=merge_crop_rows(outputs, windows, options, threshold), slices_run=len(crops),
                           windows=tuple(windows))
