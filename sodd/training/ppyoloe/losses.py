"""PP-YOLOE losses: varifocal classification, GIoU and distribution-focal box losses."""

from __future__ import annotations

import paddle
import paddle.nn.functional as F

EPS = 1e-9


def varifocal_loss(
    logits: paddle.Tensor,
    target: paddle.Tensor,
    onehot: paddle.Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
) -> paddle.Tensor:
    """Sum of BCE(sigmoid(logits), target) weighted by target on positives and by
    alpha * p^gamma on negatives (VarifocalNet)."""
    p = F.sigmoid(logits)
    weight = (alpha * p.pow(gamma) * (1 - onehot) + target * onehot).detach()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * weight).sum()


def giou(a: paddle.Tensor, b: paddle.Tensor) -> paddle.Tensor:
    """Elementwise GIoU of xyxy boxes [..., 4]."""
    x1, y1 = paddle.maximum(a[..., 0], b[..., 0]), paddle.maximum(a[..., 1], b[..., 1])
    x2, y2 = paddle.minimum(a[..., 2], b[..., 2]), paddle.minimum(a[..., 3], b[..., 3])
    inter = (x2 - x1).clip(min=0) * (y2 - y1).clip(min=0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter + EPS
    cw = paddle.maximum(a[..., 2], b[..., 2]) - paddle.minimum(a[..., 0], b[..., 0])
    ch = paddle.maximum(a[..., 3], b[..., 3]) - paddle.minimum(a[..., 1], b[..., 1])
    enclose = cw * ch + EPS
    iou = inter / union
    return iou - (enclose - union) / enclose


def box_to_distance(points: paddle.Tensor, boxes: paddle.Tensor, lo: float, hi: float) -> paddle.Tensor:
    """xyxy boxes -> ltrb distances from points, clipped into the DFL range [lo, hi - 1 - 0.01]."""
    lt = points - boxes[..., :2]
    rb = boxes[..., 2:] - points
    return paddle.concat([lt, rb], axis=-1).clip(lo, hi - 1 - 0.01)


def dfl_loss(reg: paddle.Tensor, target: paddle.Tensor, lo: float) -> paddle.Tensor:
    """reg [P, 4, R] logits, target [P, 4] distances (>= lo) -> per-box loss [P] (mean over sides):
    cross-entropy to the two bins around the target, weighted by linear interpolation."""
    t = target - lo
    left = t.floor()
    w_right = t - left
    w_left = 1 - w_right
    logp = F.log_softmax(reg, axis=-1)
    li = left.astype("int64").unsqueeze(-1)
    loss_l = -paddle.take_along_axis(logp, li, axis=-1).squeeze(-1)
    loss_r = -paddle.take_along_axis(logp, li + 1, axis=-1).squeeze(-1)
    return (loss_l * w_left + loss_r * w_right).mean(axis=-1)
