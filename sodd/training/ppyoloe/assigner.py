"""Task-aligned label assignment with a centre prior (TOOD / PP-YOLOE+ SOD).

Small objects are often narrower than a stride-8 cell, so a cell centre can miss the box: the centre
prior also admits cells within `center_radius` strides of the box centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import paddle
import paddle.nn.functional as F

EPS = 1e-9


def pairwise_iou(a: paddle.Tensor, b: paddle.Tensor) -> paddle.Tensor:
    """a [B, n, 4], b [B, L, 4] (xyxy) -> IoU [B, n, L]."""
    a = a.unsqueeze(2)
    b = b.unsqueeze(1)
    lt = paddle.maximum(a[..., :2], b[..., :2])
    rb = paddle.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clip(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]).clip(min=0) * (a[..., 3] - a[..., 1]).clip(min=0)
    area_b = (b[..., 2] - b[..., 0]).clip(min=0) * (b[..., 3] - b[..., 1]).clip(min=0)
    return inter / (area_a + area_b - inter + EPS)


def candidate_mask(
    points: paddle.Tensor, stride: paddle.Tensor, gt: paddle.Tensor, center_radius: float
) -> paddle.Tensor:
    """[B, n, L] 1.0 where the cell centre lies inside the box or within the centre prior."""
    px, py = points[:, 0].reshape([1, 1, -1]), points[:, 1].reshape([1, 1, -1])
    x1, y1, x2, y2 = (gt[..., i : i + 1] for i in range(4))
    inside = (px > x1) & (px < x2) & (py > y1) & (py < y2)
    r = stride[:, 0].reshape([1, 1, -1]) * center_radius
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    near = ((px - cx).abs() < r) & ((py - cy).abs() < r)
    return (inside | near).astype("float32")


@dataclass
class Assignment:
    labels: paddle.Tensor  # [B, L] int64, num_classes = background
    boxes: paddle.Tensor  # [B, L, 4] pixels
    scores: paddle.Tensor  # [B, L, C] soft targets (normalised alignment)
    fg: paddle.Tensor  # [B, L] bool


@paddle.no_grad()
def task_aligned_assign(
    pred_scores: paddle.Tensor,
    pred_boxes: paddle.Tensor,
    points: paddle.Tensor,
    stride: paddle.Tensor,
    gt_labels: paddle.Tensor,
    gt_boxes: paddle.Tensor,
    gt_mask: paddle.Tensor,
    num_classes: int,
    topk: int = 13,
    alpha: float = 1.0,
    beta: float = 6.0,
    center_radius: float = 1.0,
) -> Assignment:
    """pred_scores [B, L, C] probabilities, pred_boxes [B, L, 4] pixels, points [L, 2], stride [L, 1],
    gt_labels [B, n] int64, gt_boxes [B, n, 4], gt_mask [B, n] (1 for real, 0 for padding)."""
    b, n_anchor, _ = pred_scores.shape
    n_gt = gt_boxes.shape[1]
    if n_gt == 0:
        return Assignment(
            paddle.full([b, n_anchor], num_classes, "int64"),
            paddle.zeros([b, n_anchor, 4]),
            paddle.zeros([b, n_anchor, num_classes]),
            paddle.zeros([b, n_anchor], "bool"),
        )
    ious = pairwise_iou(gt_boxes, pred_boxes)
    cls_scores = paddle.take_along_axis(
        pred_scores.transpose([0, 2, 1]), gt_labels.unsqueeze(-1).expand([b, n_gt, n_anchor]), axis=1
    )
    metrics = cls_scores.pow(alpha) * ious.pow(beta)
    cand = candidate_mask(points, stride, gt_boxes, center_radius)
    k = min(topk, n_anchor)
    _, idx = paddle.topk(metrics * cand, k, axis=-1)
    in_topk = F.one_hot(idx, n_anchor).sum(axis=-2)
    mask = in_topk * cand * gt_mask.unsqueeze(-1)
    # An anchor claimed by several boxes goes to the one it overlaps most.
    multi = (mask.sum(axis=1, keepdim=True) > 1).expand([b, n_gt, n_anchor])
    best = F.one_hot(ious.argmax(axis=1), n_gt).transpose([0, 2, 1])
    mask = paddle.where(multi, best, mask)
    fg = mask.sum(axis=1) > 0
    gt_idx = mask.argmax(axis=1)
    labels = paddle.take_along_axis(gt_labels, gt_idx, axis=1)
    labels = paddle.where(fg, labels, paddle.full_like(labels, num_classes))
    boxes = paddle.take_along_axis(gt_boxes, gt_idx.unsqueeze(-1).expand([b, n_anchor, 4]), axis=1)
    scores = F.one_hot(labels, num_classes + 1)[..., :num_classes]
    metrics = metrics * mask
    norm = metrics / (metrics.max(axis=-1, keepdim=True) + EPS) * (ious * mask).max(axis=-1, keepdim=True)
    scores = scores * norm.max(axis=1).unsqueeze(-1)
    return Assignment(labels, boxes, scores, fg)
