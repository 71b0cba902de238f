"""sodd's window plan and merged boxes equal SAHI 0.12.x's for the same inputs.

SAHI pins opencv-python>=4.12 (and so numpy 2), which cannot live beside the daemon's OpenCV
and numpy pins; install it without its dependencies: `pip install --no-deps 'sahi==0.12.*'`
(shapely, which its postprocess imports, is in the test extra). Without it these tests skip.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from sodd.model.slicing import SliceOptions, merge_rows, plan_slices

combine = pytest.importorskip(
    "sahi.postprocess.combine",
    reason="sahi 0.12.x is not installed: pip install --no-deps 'sahi==0.12.*' (see this file's docstring)")
from sahi.postprocess.backends import set_postprocess_backend  # noqa: E402
from sahi.prediction import ObjectPrediction  # noqa: E402
from sahi.slicing import get_slice_bboxes  # noqa: E402

SAHI_POSTPROCESS = {"nms": "NMSPostprocess", "nmm": "NMMPostprocess", "greedynmm": "GreedyNMMPostprocess"}


@pytest.fixture(scope="module", autouse=True)
def numpy_backend() -> None:
    # SAHI would pick numba or torchvision when present; all backends promise the same answer,
    # and numpy is the one always there.
    set_postprocess_backend("numpy")


def slice_like_rows(rng: np.random.Generator, objects: int, classes: int = 3) -> np.ndarray:
    """Rows as sliced inference produces them: each object seen 1-4 times, with jitter, some cut
    short by a window border, an occasional class flip and repeated scores (ties)."""
    rows = []
    for _ in range(objects):
        x, y = rng.uniform(0, 1000, 2)
        w, h = rng.uniform(4, 80, 2)
        cls, score = int(rng.integers(classes)), float(rng.uniform(0.05, 1.0))
        for _ in range(int(rng.integers(1, 5))):
            j = rng.normal(0, 0.15 * min(w, h), 4)
            x1, y1 = max(0.0, x + j[0]), max(0.0, y + j[1])
            x2, y2 = x1 + max(1.0, w + j[2]), y1 + max(1.0, h + j[3])
            if rng.random() < 0.3:
                x2 = x1 + (x2 - x1) * rng.uniform(0.3, 0.9)
            c = cls if rng.random() < 0.85 else int(rng.integers(classes))
            s = score if rng.random() < 0.1 else float(np.clip(score + rng.normal(0, 0.1), 0.01, 1.0))
            rows.append([c, s, x1, y1, x2, y2])
    out = np.array(rows, dtype=np.float32).reshape(-1, 6)
    return out[rng.permutation(len(out))]


def sahi_merge(rows: np.ndarray, method: str, metric: str, threshold: float, class_agnostic: bool) -> np.ndarray:
    predictions = [ObjectPrediction(bbox=[float(v) for v in r[2:]], category_id=int(r[0]), score=float(r[1]))
                   for r in rows]
    postprocess = getattr(combine, SAHI_POSTPROCESS[method])(
        match_threshold=threshold, match_metric=metric.upper(), class_agnostic=class_agnostic)
    merged = postprocess(predictions)
    return np.array([[p.category.id, p.score.value, *p.bbox.to_xyxy()] for p in merged],
                    dtype=np.float32).reshape(-1, 6)


def canonical(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize(("method", "metric"), list(itertools.product(SAHI_POSTPROCESS, ("iou", "ios"))))
def test_merged_boxes_equal_sahi(method: str, metric: str) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{method}/{metric}".encode()))
    cases = 0
    for _ in range(12):
        rows = slice_like_rows(rng, int(rng.integers(1, 60)))
        for threshold, class_agnostic in itertools.product((0.3, 0.5, 0.8), (False, True)):
            options = SliceOptions(slice_height=64, slice_width=64, merge=method, match_metric=metric,
                                   match_threshold=threshold, class_agnostic=class_agnostic)
            ours = merge_rows(rows, options)
            theirs = sahi_merge(rows, method, metric, threshold, class_agnostic)
            # Exact equality, boxes and scores alike: merging only picks and combines input values.
            np.testing.assert_array_equal(canonical(ours), canonical(theirs),
                                          err_msg=f"{method}/{metric} at {threshold}, agnostic={class_agnostic}")
            cases += 1
    assert cases == 72


def test_empty_input_merges_to_nothing() -> None:
    for method in SAHI_POSTPROCESS:
        assert merge_rows(np.zeros((0, 6), np.float32), SliceOptions(64, 64, merge=method)).shape == (0, 6)


@pytest.mark.parametrize(("width", "height", "size", "overlap"), [
    (1360, 765, 416, 0.25), (1360, 765, 384, 0.2), (1920, 1080, 640, 0.25), (640, 640, 640, 0.2),
    (300, 200, 416, 0.25), (1000, 37, 64, 0.5), (4096, 2160, 512, 0.0), (777, 555, 100, 0.6),
])
def test_windows_equal_sahi(width: int, height: int, size: int, overlap: float) -> None:
    options = SliceOptions(slice_height=size, slice_width=size, overlap_height_ratio=overlap,
                           overlap_width_ratio=overlap)
    expected = get_slice_bboxes(height, width, size, size, False, overlap, overlap)
    assert plan_slices(width, height, options, None) == [tuple(b) for b in expected]


def test_merged_boxes_equal_sahi_on_a_crowded_image() -> None:
    """Enough boxes that both sides take their large-input paths (sodd prunes by x-range)."""
    rows = slice_like_rows(np.random.default_rng(5), 400)
    assert len(rows) > 600
    for method, metric in itertools.product(SAHI_POSTPROCESS, ("iou", "ios")):
        options = SliceOptions(slice_height=64, slice_width=64, merge=method, match_metric=metric)
        np.testing.assert_array_equal(canonical(merge_rows(rows, options)),
                                      canonical(sahi_merge(rows, method, metric, 0.5, False)), err_msg=method)
