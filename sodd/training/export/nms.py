"""`multiclass_nms3` as an op inside exported graphs.

PaddleX model directories carry NMS in the program, so our exporter must emit the same op in both
program formats: the C++ call works in dygraph and PIR, while legacy static mode (the format Paddle
Lite reads) only accepts it appended through a LayerHelper.
"""

from __future__ import annotations

import paddle
from paddle import _C_ops
from paddle.base.framework import in_dynamic_or_pir_mode
from paddle.base.layer_helper import LayerHelper


# dy2static rewrites the functions it enters and drops keyword-only defaults; this one needs no rewriting.
@paddle.jit.not_to_static
def multiclass_nms3(
    bboxes: paddle.Tensor,
    scores: paddle.Tensor,
    *,
    score_threshold: float = 0.01,
    nms_top_k: int = 1000,
    keep_top_k: int = 500,
    nms_threshold: float = 0.6,
    background_label: int = -1,
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """Per-class NMS over `bboxes` [B, M, 4] (xyxy) and `scores` [B, C, M].

    Returns `(out, rois_num)`: `out` [N, 6] rows `[class_id, score, x1, y1, x2, y2]` for all
    images, and `rois_num` int32 [B] with the number of rows per image.
    """
    if in_dynamic_or_pir_mode():
        out, _index, rois_num = _C_ops.multiclass_nms3(
            bboxes, scores, None, score_threshold, nms_top_k, keep_top_k, nms_threshold,
            True, 1.0, background_label,
        )
        return out, rois_num
    helper = LayerHelper("multiclass_nms3")
    out = helper.create_variable_for_type_inference(dtype=bboxes.dtype)
    index = helper.create_variable_for_type_inference(dtype="int32")
    rois_num = helper.create_variable_for_type_inference(dtype="int32")
    helper.append_op(
        type="multiclass_nms3",
        inputs={"BBoxes": bboxes, "Scores": scores},
        attrs={
            "background_label": background_label,
            "score_threshold": score_threshold,
            "nms_top_k": nms_top_k,
            "nms_threshold": nms_threshold,
            "keep_top_k": keep_top_k,
            "nms_eta": 1.0,
            "normalized": True,
        },
        outputs={"Out": out, "Index": index, "NmsRoisNum": rois_num},
    )
    out.stop_gradient = True
    index.stop_gradient = True
    rois_num.stop_gradient = True
    return out, rois_num
