"""Paddle's `multiclass_nms3` on OpenVINO's own `NonMaxSuppression` op, where both give the same rows.

The numpy NMS (sodd.model.nms) walks candidates in Python: 1.3 to 1.4 ms of PicoDet-XS's 4 ms
INT8 run. OpenVINO's op does the per-class walk in compiled code (0.6 ms with everything done
here), and on x86-64 its JIT kernel computes each IoU with the same float32 steps as Paddle's
kernel: widths by subtraction, areas and intersection by multiplication, `inter / (a + b - inter)`,
with no fused multiply-add. Elsewhere the op runs its C++ reference, which a compiler may fuse, so
this is used on x86-64 only.

Where the op's rules and Paddle's differ, this finds out before trusting a result:
- the op suppresses at IoU >= threshold, Paddle above it: the threshold given is the next float up;
- the op limits the boxes kept per class, Paddle's `nms_top_k` the candidates before NMS: classes
  with more candidates keep their best `nms_top_k` here, the rest get -inf (OpenVINO's own TopK
  took 6 ms for PicoDet-XS's 80 x 3598 scores, its stable variant 470 ms);
- the op reorders inverted corners and lets two empty boxes overlap; Paddle gives inverted boxes no
  area and suppresses on an undefined IoU: a result is used only when every box has positive width
  and height (also checked in the graph);
- unnormalised boxes (`+1` pixel), an adaptive threshold (`nms_eta` < 1) and a background class
  have no counterpart in the op: such programs keep the numpy NMS.
`keep_top_k` and the row layout are applied here as the numpy NMS applies them.
"""

from __future__ import annotations

import platform
from types import ModuleType

import numpy as np

from sodd.model.nms import NmsParams


def supports(params: NmsParams) -> bool:
    """Whether OpenVINO's op can give Paddle's rows for this program's NMS (else the numpy NMS)."""
    return (platform.machine().lower() in ("x86_64", "amd64") and params.normalized and params.nms_eta >= 1
            and params.background_label < 0)


def best_candidates(scores: np.ndarray, threshold: np.float32, nms_top_k: int) -> np.ndarray:
    """`scores` where each class keeps at most its best `nms_top_k` candidates (scores above
    `threshold`) and the rest are -inf; equal scores go to the lower index, as in Paddle's stable
    sort. A copy when anything changes."""
    if nms_top_k < 0:
        return scores
    if nms_top_k == 0:
        return np.full_like(scores, -np.inf)
    counts = (scores > threshold).sum(axis=-1, dtype=np.int32)
    over = np.argwhere(counts > nms_top_k)
    if over.size == 0:
        return scores
    scores = scores.copy()
    for b, c in over:
        row = scores[b, c]
        kth = -np.partition(-row, nms_top_k - 1)[nms_top_k - 1]  # the nms_top_k-th best candidate
        tied = row == kth
        room = nms_top_k - np.count_nonzero(row > kth)
        keep = (row > kth) | (tied & (np.cumsum(tied) <= room))
        row[~keep] = -np.inf
    return scores


_FIRST_BOXES = 8  # the first try keeps boxes above the (8 x keep_top_k)-th best box (first_threshold)


def first_threshold(scores: np.ndarray, threshold: np.float32, keep_top_k: int) -> np.float32:
    """A higher score threshold to try first, from the boxes' best class scores.

    Greedy NMS decides each box from better ones only, so raising the threshold keeps exactly the
    boxes that would be kept above it; when every image still keeps keep_top_k, those are the
    answer. Most candidates score little (PicoDet-XS: 6,300 to 7,100 above 0.025, its 100th kept
    box 0.10 to 0.16), and walking them is most of the op's time (0.9 ms, against 0.55 ms from
    0.05). Starting above the box ranked 8 x keep_top_k by its best class reached keep_top_k on
    every PicoDet-XS and default-model scene tried; 4 x missed on half of PicoDet-XS's.
    """
    boxes = scores.shape[2]
    if keep_top_k <= 0 or boxes <= _FIRST_BOXES * keep_top_k:
        return threshold
    rank = boxes - _FIRST_BOXES * keep_top_k
    first = np.partition(scores.max(axis=1), rank, axis=1)[:, rank].min()
    return max(threshold, np.float32(first))


class OpenVinoNms:
    """One compiled NMS graph; `run` returns Paddle's rows and counts, or None where they could differ."""

    def __init__(self, ov: ModuleType, params: NmsParams, threads: int) -> None:
        from openvino import opset13 as ops

        self._params = params
        boxes = ops.parameter([-1, -1, 4], np.float32, name="boxes")
        scores = ops.parameter([-1, -1, -1], np.float32, name="scores")
        threshold = ops.parameter([], np.float32, name="score_threshold")  # Paddle's, or first_threshold
        # keep_top_k bounds what one class can contribute; without it, every box may be kept.
        per_class = params.keep_top_k if params.keep_top_k > -1 else np.iinfo(np.int32).max
        suppress_from = np.nextafter(np.float32(params.nms_threshold), np.float32(np.inf))
        nms = ops.non_max_suppression(boxes, scores, ops.constant(np.int64(per_class)), ops.constant(suppress_from),
                                      threshold, box_encoding="corner", sort_result_descending=False,
                                      output_type="i32")
        x1, y1, x2, y2 = ops.split(boxes, ops.constant(2), 4).outputs()
        proper = ops.reduce_logical_and(ops.logical_and(ops.greater(x2, x1), ops.greater(y2, y1)),
                                        ops.constant([0, 1, 2]))
        model = ov.Model([nms.output(0), proper.output(0)], [boxes, scores, threshold],
                         "paddle_multiclass_nms")
        # f32 whatever the detector runs in: a bf16 hint would round the boxes before the IoU.
        self._compiled = ov.Core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(threads)})
        self._request = self._compiled.create_infer_request()

    def clone(self) -> OpenVinoNms:
        """Another infer request on the same compiled graph, for a second worker thread."""
        twin = object.__new__(OpenVinoNms)
        twin.__dict__.update(self.__dict__)
        twin._request = self._compiled.create_infer_request()
        return twin

    def _select(self, boxes: np.ndarray, scores: np.ndarray, threshold: np.float32) -> np.ndarray | None:
        """The op's [image, class, box] rows for candidates above `threshold` (the caller has cut
        each class to its best nms_top_k); None unless every box is proper."""
        result = self._request.infer([boxes, scores, np.array(threshold, dtype=np.float32)], share_inputs=True)
        selected, proper = (result[out] for out in self._compiled.outputs)
        return selected if bool(proper) else None

    def run(self, boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """`boxes` [B, M, 4] and `scores` [B, C, M] -> (rows [N, 6], counts [B]) as Paddle's kernel
        gives them, or None when this input is one where the op could decide otherwise."""
        p = self._params
        boxes = np.ascontiguousarray(boxes, dtype=np.float32)
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        if boxes.ndim != 3 or scores.ndim != 3 or boxes.shape[1:] != (scores.shape[2], 4) \
                or scores.shape[0] != boxes.shape[0] or 0 in scores.shape:
            return None  # the numpy NMS names what is wrong, or has nothing to do
        threshold = np.float32(p.score_threshold)
        first = first_threshold(scores, threshold, p.keep_top_k)
        # Above `first`, a class's best nms_top_k there are also its best above Paddle's threshold.
        cut = best_candidates(scores, first, p.nms_top_k)
        selected = self._select(boxes, cut, first)
        if selected is None:
            return None
        if first > threshold and np.bincount(selected[:, 0], minlength=boxes.shape[0]).min() < p.keep_top_k:
            cut = best_candidates(scores, threshold, p.nms_top_k)  # too few kept above `first`: walk all
            selected = self._select(boxes, cut, threshold)
            assert selected is not None  # the same boxes were proper a moment ago
        return self._rows(selected, boxes, cut)

    def _rows(self, selected: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Paddle's rows from the op's selection, which comes by image, class ascending, and in NMS
        order within a class: the rows' layout once keep_top_k is applied."""
        keep = self._params.keep_top_k
        image, cls, idx = selected[:, 0], selected[:, 1], selected[:, 2]
        per_image: list[np.ndarray] = []
        for b in range(boxes.shape[0]):
            c, i = cls[image == b], idx[image == b]
            score = scores[b, c, i]
            if -1 < keep < c.size:
                # The best keep_top_k by score; ties go to the lower class, then NMS order (stable).
                best = np.sort(np.argsort(-score, kind="stable")[:keep])
                c, i, score = c[best], i[best], score[best]
            per_image.append(np.column_stack([c.astype(np.float32), score, boxes[b, i]]).astype(np.float32))
        return np.concatenate(per_image), np.array([r.shape[0] for r in per_image], dtype=np.int32)
