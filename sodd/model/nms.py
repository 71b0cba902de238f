"""Paddle's `multiclass_nms3` in numpy, for backends that run a graph cut before its NMS.

Converted graphs do their own NMS differently (ONNX `NonMaxSuppression` + `TopK` keeps other boxes
when `keep_top_k` cuts), so the ONNX backends stop at the NMS inputs and finish here. The rules
follow Paddle's CPU kernel exactly, because users compare boxes across backends:

- per class (skipping `background_label`): scores `> score_threshold`, stable sort by score
  descending, at most `nms_top_k`; greedy: a box is kept when its overlap with every kept box of
  the class is `<= threshold` (the threshold shrinks by `nms_eta` after each keep while > 0.5);
- overlap is IoU, with the `+1` pixel convention on widths and areas when `normalized` is false;
- when more than `keep_top_k` boxes survive in an image, the best `keep_top_k` by score are kept
  (stable: ties go to the lower class, then NMS order);
- rows `[class, score, x1, y1, x2, y2]` grouped by class ascending, each class in score order; one
  count per image. All arithmetic is float32, as the kernel's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sodd.model.overlap import overlap_terms

# Boxes walked per block (one block-by-block overlap matrix at a time), growing: most images reach
# keep_top_k within the first few hundred candidates. Blocks beyond 128 cost more in the quadratic
# matrix than they save in Python steps (1.5x to 2x slower on PicoDet-XS, SOD-S and random boxes).
_FIRST_BLOCK = 64
_MAX_BLOCK = 128
_MIN_PREFIX = 1024  # candidates walked first (at least 4 x keep_top_k)


@dataclass(frozen=True)
class NmsParams:
    """The op's attributes; the defaults are what sodd's exporter writes."""

    score_threshold: float = 0.01
    nms_top_k: int = 1000
    keep_top_k: int = 500
    nms_threshold: float = 0.6
    normalized: bool = True
    nms_eta: float = 1.0
    background_label: int = -1


def _areas(boxes: np.ndarray, normalized: bool) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    if not normalized:
        w, h = w + np.float32(1), h + np.float32(1)
    area = w * h
    invalid = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    return np.where(invalid, np.float32(0), area).astype(np.float32)


def _overlaps(box: np.ndarray, area: np.float32, others: np.ndarray, other_areas: np.ndarray,
              normalized: bool) -> np.ndarray:
    """IoU of one box with many, float32, in the kernel's order of operations."""
    disjoint = ((others[:, 0] > box[2]) | (others[:, 2] < box[0])
                | (others[:, 1] > box[3]) | (others[:, 3] < box[1]))
    return _kernel_iou(box, others, area, other_areas, normalized, disjoint)


def _kernel_iou(a: np.ndarray, b: np.ndarray, a_areas: np.ndarray, b_areas: np.ndarray, normalized: bool,
                disjoint: np.ndarray) -> np.ndarray:
    """The kernel's IoU: widths unclipped (+1 when not normalised), 0 for disjoint pairs."""
    inter, union = overlap_terms(a, b, a_areas, b_areas, offset=np.float32(0 if normalized else 1), clip=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where(disjoint, np.float32(0), iou)


def _overlap_matrix(a: np.ndarray, a_areas: np.ndarray, b: np.ndarray, b_areas: np.ndarray,
                    normalized: bool) -> np.ndarray:
    """IoU of every box in `a` with every box in `b`, with the same float32 steps as `_overlaps`."""
    # Column-major: each coordinate is then a contiguous vector, and numpy's broadcast loops run it
    # 1.4x faster than the 16-byte strides of row-major boxes (same values, same bits).
    a, b = np.asfortranarray(a)[:, None, :], np.asfortranarray(b)[None, :, :]
    disjoint = (b[..., 0] > a[..., 2]) | (b[..., 2] < a[..., 0]) | (b[..., 1] > a[..., 3]) | (b[..., 3] < a[..., 1])
    return _kernel_iou(a, b, a_areas[:, None], b_areas[None, :], normalized, disjoint)


def _nms_one_class(boxes: np.ndarray, areas: np.ndarray, scores: np.ndarray, p: NmsParams) -> np.ndarray:
    """Indices kept for one class, in the order NMS kept them (the adaptive-threshold path)."""
    candidates = np.flatnonzero(scores > np.float32(p.score_threshold))
    if candidates.size == 0:
        return candidates
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if p.nms_top_k > -1:
        order = order[:p.nms_top_k]
    threshold = np.float32(p.nms_threshold)
    kept_list: list[int] = []
    eta = np.float32(p.nms_eta)
    for i in order:
        if kept_list:
            idx = np.array(kept_list)
            iou = _overlaps(boxes[i], areas[i], boxes[idx], areas[idx], p.normalized)
            if not np.all(iou <= threshold):
                continue
        kept_list.append(int(i))
        if eta < 1 and threshold > 0.5:
            threshold = np.float32(threshold * eta)
    return np.array(kept_list, dtype=np.int64)


def _nms_one_image(boxes: np.ndarray, scores: np.ndarray, p: NmsParams) -> np.ndarray:
    if p.nms_eta < 1:
        return _nms_one_image_adaptive(boxes, scores, p)
    areas = _areas(boxes, p.normalized)
    mask = scores > np.float32(p.score_threshold)
    if 0 <= p.background_label < scores.shape[0]:
        mask[p.background_label] = False
    # Flat indices are cheaper to find than 2-D ones and come in the same (class, box) order.
    cls, idx = np.divmod(np.flatnonzero(mask), scores.shape[1])
    if cls.size == 0:
        return np.zeros((0, 6), dtype=np.float32)
    score = scores[cls, idx]
    limit = p.keep_top_k if p.keep_top_k > -1 else cls.size
    prefix = max(4 * limit, _MIN_PREFIX)
    if cls.size > prefix:
        # Most images reach keep_top_k among their best few hundred candidates: walk those first.
        # Taking every candidate scoring at least the prefix-th best keeps score ties whole, so the
        # set is a prefix of the walk order and every decision in it is final.
        first = score >= np.partition(score, cls.size - prefix)[cls.size - prefix]
        rows, complete = _walk(boxes, areas, scores, cls[first], idx[first], score[first], p, limit)
        if complete:
            return rows
    return _walk(boxes, areas, scores, cls, idx, score, p, limit)[0]


def _walk(boxes: np.ndarray, areas: np.ndarray, scores: np.ndarray, cls: np.ndarray, idx: np.ndarray,
          score: np.ndarray, p: NmsParams, limit: int) -> tuple[np.ndarray, bool]:
    """Greedy NMS of every class at once; also says whether `limit` boxes were kept.

    Greedy NMS of a class only looks at that class's better boxes, so all classes can be walked
    together in the order keep_top_k ranks survivors (score, then class, then index, as the kernel's
    stable sorts leave them): the first `limit` kept are the answer, and the walk stops there.
    """
    order = np.lexsort((idx, cls, -score))
    cls, idx = cls[order], idx[order]
    if p.nms_top_k > -1:  # each class's best nms_top_k: its rank among its own class in the walk
        by_class = np.argsort(cls, kind="stable")
        counts = np.bincount(cls, minlength=scores.shape[0])
        rank = np.empty(cls.size, dtype=np.int64)
        rank[by_class] = np.arange(cls.size) - np.repeat(np.cumsum(counts) - counts, counts)
        cls, idx = cls[rank < p.nms_top_k], idx[rank < p.nms_top_k]
    threshold = np.float32(p.nms_threshold)
    kept: list[int] = []  # positions in the walk
    start, block = 0, _FIRST_BLOCK
    while start < cls.size and len(kept) < limit:
        stop = min(start + block, cls.size)
        c_chunk, b_chunk, a_chunk = cls[start:stop], boxes[idx[start:stop]], areas[idx[start:stop]]
        removed = np.zeros(stop - start, dtype=bool)
        if kept:
            k = np.array(kept)
            iou = _overlap_matrix(b_chunk, a_chunk, boxes[idx[k]], areas[idx[k]], p.normalized)
            removed |= (~(iou <= threshold) & (c_chunk[:, None] == cls[k][None, :])).any(axis=1)
        suppress = ~(_overlap_matrix(b_chunk, a_chunk, b_chunk, a_chunk, p.normalized) <= threshold)
        suppress &= c_chunk[:, None] == c_chunk[None, :]  # NaN (degenerate boxes) suppresses, as in the kernel
        for i in range(stop - start):
            if removed[i]:
                continue
            kept.append(start + i)
            if len(kept) == limit:
                break
            removed[i + 1:] |= suppress[i, i + 1:]
        start, block = stop, min(2 * block, _MAX_BLOCK)
    k = np.array(kept, dtype=np.int64)
    k = k[np.argsort(cls[k], kind="stable")]  # classes ascending, each in NMS order
    rows = np.column_stack([cls[k].astype(np.float32), scores[cls[k], idx[k]], boxes[idx[k]]]).astype(np.float32)
    return rows, len(kept) == limit


def _nms_one_image_adaptive(boxes: np.ndarray, scores: np.ndarray, p: NmsParams) -> np.ndarray:
    """The kernel's plain loops, for nms_eta < 1 where the threshold moves after each kept box."""
    areas = _areas(boxes, p.normalized)
    per_class: list[tuple[int, np.ndarray]] = []
    for c in range(scores.shape[0]):
        if c == p.background_label:
            continue
        kept = _nms_one_class(boxes, areas, scores[c], p)
        if kept.size:
            per_class.append((c, kept))
    total = sum(k.size for _, k in per_class)
    if total == 0:
        return np.zeros((0, 6), dtype=np.float32)
    if p.keep_top_k > -1 and total > p.keep_top_k:
        labels = np.concatenate([np.full(k.size, c) for c, k in per_class])
        indices = np.concatenate([k for _, k in per_class])
        best = np.argsort(-scores[labels, indices], kind="stable")[:p.keep_top_k]
        # Within a class the survivors stay in score order; classes ascend.
        per_class = [(c, indices[best][labels[best] == c]) for c, _ in per_class]
        per_class = [(c, k) for c, k in per_class if k.size]
    rows = [np.column_stack([np.full(k.size, c, dtype=np.float32), scores[c, k], boxes[k]]) for c, k in per_class]
    return np.concatenate(rows).astype(np.float32)


def multiclass_nms(boxes: np.ndarray, scores: np.ndarray, params: NmsParams) -> tuple[np.ndarray, np.ndarray]:
    """`boxes` [B, M, 4] xyxy and `scores` [B, C, M] -> rows [N, 6] float32 and counts int32 [B]."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[::2] != boxes.shape[:2]:
        raise ValueError(f"NMS needs boxes [B, M, 4] and scores [B, C, M], got {list(boxes.shape)} "
                         f"and {list(scores.shape)}")
    per_image = [_nms_one_image(boxes[b], scores[b], params) for b in range(boxes.shape[0])]
    counts = np.array([r.shape[0] for r in per_image], dtype=np.int32)
    rows = np.concatenate(per_image) if per_image else np.zeros((0, 6), dtype=np.float32)
    return rows, counts
