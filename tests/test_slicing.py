"""Slicing options, window plans, the orchestrator, and merge properties (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sodd.errors import InvalidArgument
from sodd.model.slicing import (
    MAX_SLICES,
    SliceOptions,
    auto_slice_size,
    detect_sliced,
    merge_boxes,
    merge_rows,
    plan_slices,
)

# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"slice_height": 0, "slice_width": 416}, "slice_height"),
    ({"slice_height": 416, "slice_width": 16}, "slice_width"),
    ({"slice_height": 416.0, "slice_width": 416}, "slice_height"),
    ({"auto": True, "slice_height": 416}, "slice_height"),
    ({"slice_height": 416, "slice_width": 416, "overlap_height_ratio": 1.0}, "overlap_height_ratio"),
    ({"slice_height": 416, "slice_width": 416, "overlap_width_ratio": -0.1}, "overlap_width_ratio"),
    ({"slice_height": 416, "slice_width": 416, "overlap_width_ratio": float("nan")}, "overlap_width_ratio"),
    ({"slice_height": 416, "slice_width": 416, "merge": "wbf"}, "merge"),
    ({"slice_height": 416, "slice_width": 416, "match_metric": "giou"}, "match_metric"),
    ({"slice_height": 416, "slice_width": 416, "match_threshold": 0.0}, "match_threshold"),
    ({"slice_height": 416, "slice_width": 416, "match_threshold": 1.5}, "match_threshold"),
    ({"slice_height": 416, "slice_width": 416, "full_image": 1}, "full_image"),
    ({"slice_height": 416, "slice_width": 416, "class_agnostic": "yes"}, "class_agnostic"),
])
def test_invalid_options_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"slicing\.{field}\b"):
        SliceOptions(**kwargs)


def test_valid_options() -> None:
    SliceOptions(auto=True)
    SliceOptions(slice_height=32, slice_width=2048, overlap_height_ratio=0.0, merge="nmm", match_metric="iou",
                 match_threshold=1.0, class_agnostic=True, full_image=False)


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------


def test_plan_covers_the_image_and_ends_flush() -> None:
    windows = plan_slices(1360, 765, SliceOptions(slice_height=416, slice_width=416), None)
    xs = sorted({w[0] for w in windows})
    ys = sorted({w[1] for w in windows})
    assert xs == [0, 312, 624, 936, 944] and ys == [0, 312, 349]
    assert all(x2 - x1 == 416 and y2 - y1 == 416 for x1, y1, x2, y2 in windows)
    assert max(w[2] for w in windows) == 1360 and max(w[3] for w in windows) == 765


def test_plan_window_larger_than_image_is_the_image() -> None:
    assert plan_slices(300, 200, SliceOptions(slice_height=416, slice_width=416), None) == [(0, 0, 300, 200)]


def test_plan_too_many_slices_is_refused() -> None:
    options = SliceOptions(slice_height=32, slice_width=32, overlap_height_ratio=0.5, overlap_width_ratio=0.5)
    with pytest.raises(InvalidArgument, match=f"at most {MAX_SLICES}"):
        plan_slices(4000, 3000, options, None)


def test_auto_needs_a_fixed_input_size() -> None:
    with pytest.raises(InvalidArgument, match="slicing.auto"):
        plan_slices(1920, 1080, SliceOptions(auto=True), None)


@pytest.mark.parametrize(("size", "input_hw", "expected_hw", "count"), [
    ((1360, 765), (416, 416), (340, 340), 15),  # 5 x 3 windows, as 416 would take, made smaller
    ((1920, 1080), (640, 640), (617, 617), 8),
    ((3840, 2160), (640, 640), (698, 698), 28),  # 640 would take 40 windows: grown to fit 32
    ((400, 300), (640, 640), (300, 400), 1),  # smaller than the input: one window, the image
])
def test_auto_rule(size: tuple[int, int], input_hw: tuple[int, int], expected_hw: tuple[int, int],
                   count: int) -> None:
    options = SliceOptions(auto=True)
    assert auto_slice_size(*size, options, input_hw) == expected_hw
    assert len(plan_slices(*size, options, input_hw)) == count


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.sampled_from([(416, 416), (640, 640), (1920, 1920)]),
       st.sampled_from([0.0, 0.2, 0.25, 0.5]))
def test_auto_plan_covers_the_image_with_bounded_cost(width: int, height: int, input_hw: tuple[int, int],
                                                      overlap: float) -> None:
    options = SliceOptions(auto=True, overlap_height_ratio=overlap, overlap_width_ratio=overlap)
    windows = plan_slices(width, height, options, input_hw)
    assert len(windows) <= 32
    assert all(0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height for x1, y1, x2, y2 in windows)
    # The plan is a grid (every column in every row), so covering both axes covers the image.
    columns = sorted({(x1, x2) for x1, _, x2, _ in windows})
    rows = sorted({(y1, y2) for _, y1, _, y2 in windows})
    assert len(windows) == len(columns) * len(rows)
    for spans, length in ((columns, width), (rows, height)):
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(nxt[0] <= cur[1] for cur, nxt in zip(spans, spans[1:], strict=False))


# ---------------------------------------------------------------------------------------------
# Orchestrator
# ---------------------------------------------------------------------------------------------


def test_detect_sliced_shifts_clips_prefilters_and_counts() -> None:
    image = np.zeros((100, 150, 3), dtype=np.uint8)
    options = SliceOptions(slice_height=100, slice_width=100, overlap_width_ratio=0.5, full_image=True)
    seen: list[tuple[int, int]] = []

    def run_batch(crops: list[np.ndarray]) -> list[np.ndarray]:
        seen.extend(c.shape[:2] for c in crops)
        out = []
        for crop in crops:
            if crop.shape[1] == 150:  # the whole image: one box spilling past the border, one weak one
                out.append(np.array([[1, 0.9, -5, 10, 20, 30], [1, 0.2, 60, 60, 70, 70]], np.float32))
            else:  # a window: one box near its right edge, spilling 10 px past it
                out.append(np.array([[0, 0.8, 90, 40, 110, 50]], np.float32))
        return out

    result = detect_sliced(image, options, (64, 64), run_batch, threshold=0.5)
    assert result.slices_run == 3 and seen == [(100, 100), (100, 100), (100, 150)]
    assert result.windows == ((0, 0, 100, 100), (50, 0, 150, 100), (0, 0, 150, 100))
    expected = np.array([[1, 0.9, 0, 10, 20, 30],     # whole image, clipped; the 0.2 box dropped
                         [0, 0.8, 90, 40, 100, 50],   # first window, clipped at x = 100
                         [0, 0.8, 140, 40, 150, 50]],  # second window, shifted by 50
                        dtype=np.float32)
    np.testing.assert_array_equal(result.rows, expected)


def test_full_image_pass_is_not_repeated_when_one_window_is_the_image() -> None:
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    result = detect_sliced(image, SliceOptions(slice_height=416, slice_width=416), None,
                           lambda crops: [np.zeros((0, 6), np.float32) for _ in crops])
    assert result.slices_run == 1 and result.rows.shape == (0, 6)


def test_detect_sliced_rejects_a_short_answer() -> None:
    with pytest.raises(ValueError, match="2 crops"):
        detect_sliced(np.zeros((50, 90, 3), np.uint8),
                      SliceOptions(slice_height=50, slice_width=50, overlap_width_ratio=0.0, full_image=False),
                      None, lambda crops: [])


# ---------------------------------------------------------------------------------------------
# Merge properties
# ---------------------------------------------------------------------------------------------

METHODS = ("nms", "nmm", "greedynmm")
METRICS = ("iou", "ios")


@st.composite
def raw_rows(draw: st.DrawFn, max_rows: int = 40) -> np.ndarray:
    """Boxes crowded into a small area so that many overlap; distinct scores, as real ones are."""
    coord, size = st.integers(0, 400).map(lambda v: v / 2), st.integers(2, 120).map(lambda v: v / 2)
    boxes = draw(st.lists(st.tuples(st.integers(0, 2), coord, coord, size, size), max_size=max_rows))
    scores = draw(st.lists(st.integers(1, 10**6), min_size=len(boxes), max_size=len(boxes), unique=True))
    out = np.array([[c, s / 1e6, x, y, x + w, y + h] for (c, x, y, w, h), s in zip(boxes, scores, strict=True)],
                   dtype=np.float32).reshape(-1, 6)
    return out


merge_settings = st.tuples(st.sampled_from(METHODS), st.sampled_from(METRICS),
                           st.sampled_from([0.1, 0.3, 0.5, 0.8, 1.0]), st.booleans())


@settings(max_examples=100, deadline=None)
@given(raw_rows(), merge_settings, st.randoms(use_true_random=False))
def test_merging_is_order_independent_where_it_should_be(rows: np.ndarray, setting: tuple, random) -> None:
    """NMS and greedy NMM see the boxes in score order only, so the input order cannot matter.
    NMM (SAHI's definition) folds a keeper's members in input order, re-checking each against
    the grown box, so only its grouping is order-independent, not every merged box."""
    method, metric, threshold, agnostic = setting
    permutation = list(range(len(rows)))
    random.shuffle(permutation)
    shuffled = rows[permutation]
    first = merge_boxes(rows, method, metric, threshold, agnostic)
    second = merge_boxes(shuffled, method, metric, threshold, agnostic)
    if method == "nmm":
        groups = {(g.keeper, frozenset(_claimed(rows, g, method, metric, threshold, agnostic))) for g in first}
        again = {(permutation[g.keeper], frozenset(permutation[i] for i in
                  _claimed(shuffled, g, method, metric, threshold, agnostic))) for g in second}
        assert groups == again
    else:
        np.testing.assert_array_equal(np.array([g.row for g in first]).reshape(-1, 6),
                                      np.array([g.row for g in second]).reshape(-1, 6))


def _claimed(rows: np.ndarray, merged, method: str, metric: str, threshold: float, agnostic: bool) -> list[int]:
    """The boxes NMM grouped under a keeper before the fold's re-check (the order-free part)."""
    from sodd.model import slicing

    index = np.arange(len(rows)) if agnostic else np.flatnonzero(rows[:, 0] == rows[merged.keeper, 0])
    for keeper, members in slicing.group_rows(rows[index], "nmm", metric, threshold):
        if index[keeper] == merged.keeper:
            return [int(index[m]) for m in members]
    raise AssertionError("keeper not found")


@settings(max_examples=150, deadline=None)
@given(raw_rows(), merge_settings)
def test_merged_boxes_stay_within_their_members_and_scores_never_rise(rows: np.ndarray, setting: tuple) -> None:
    method, metric, threshold, agnostic = setting
    merged = merge_boxes(rows, method, metric, threshold, agnostic)
    used = [i for m in merged for i in (m.keeper, *m.members)]
    assert len(used) == len(set(used)), "an input box was used twice"
    for m in merged:
        group = rows[[m.keeper, *m.members]]
        # Never beyond the union of the members' boxes (and exactly that union: SAHI's rule).
        assert m.row[2] >= group[:, 2].min() and m.row[3] >= group[:, 3].min()
        assert m.row[4] <= group[:, 4].max() and m.row[5] <= group[:, 5].max()
        np.testing.assert_array_equal(m.row[2:], [group[:, 2].min(), group[:, 3].min(),
                                                  group[:, 4].max(), group[:, 5].max()])
        # The score is a member's, the best one: merging never raises a score.
        assert m.row[1] == group[:, 1].max() == rows[m.keeper, 1]
        assert m.row[0] in group[:, 0]
        if not agnostic:
            assert (group[:, 0] == m.row[0]).all()
        if method == "nms":
            assert m.members == ()


@settings(max_examples=80, deadline=None)
@given(raw_rows(), merge_settings)
def test_merging_only_removes_boxes_and_is_idempotent_for_nms(rows: np.ndarray, setting: tuple) -> None:
    method, metric, threshold, agnostic = setting
    options = SliceOptions(slice_height=64, slice_width=64, merge=method, match_metric=metric,
                           match_threshold=threshold, class_agnostic=agnostic)
    once = merge_rows(rows, options)
    assert len(once) <= len(rows)
    assert (np.diff(once[:, 1]) <= 0).all(), "results come in score order"
    if method == "nms":
        np.testing.assert_array_equal(merge_rows(once, options), once)


# ---------------------------------------------------------------------------------------------
# The report's ground truth and matching
# ---------------------------------------------------------------------------------------------


def test_recall_matches_each_object_once_best_score_first(tmp_path) -> None:
    from sodd.commands.slice_report import read_coco, read_visdrone, recall
    from sodd.model.postprocess import Box

    (tmp_path / "a.txt").write_text("0,0,10,10,1,4,0,0\n100,100,40,40,1,4,0,0,\n5,5,10,10,0,0,0,0\n")
    truth = read_visdrone(tmp_path / "a.txt", category=4)
    np.testing.assert_array_equal(truth, [[0, 0, 10, 10], [100, 100, 140, 140]])
    (tmp_path / "a.json").write_text(
        '{"images": [{"id": 7, "file_name": "sub/a.jpg"}, {"id": 8, "file_name": "b.jpg"}],'
        ' "annotations": [{"image_id": 7, "bbox": [0, 0, 10, 10]}, {"image_id": 8, "bbox": [1, 1, 1, 1]},'
        ' {"image_id": 7, "bbox": [100, 100, 40, 40]}]}')
    np.testing.assert_array_equal(read_coco(tmp_path / "a.json", "a.jpg"), truth)

    def box(score: float, x1: float, y1: float, x2: float, y2: float) -> Box:
        return Box(2, "car", score, x1, y1, x2, y2)

    # Two boxes on the small object: the better-scoring one claims it, the other finds nothing.
    assert recall(truth, [box(0.5, 0, 0, 10, 10), box(0.9, 1, 1, 10, 10)]) == (0.5, 1.0)
    assert recall(truth, [box(0.9, 100, 100, 139, 139), box(0.4, 0, 0, 30, 30)]) == (0.5, 0.0)
