"""ET-head (PP-YOLOE): ESE-attended stems, class logits and DFL box distributions per level."""

from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from sodd.training.ppyoloe.layers import ConvBN


def make_anchor_points(
    sizes: list[tuple[int, int]], strides: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres in pixels [L, 2] (x, y) and the stride of each [L, 1], levels in head order."""
    points, stride_col = [], []
    for (h, w), s in zip(sizes, strides, strict=True):
        xs, ys = np.meshgrid((np.arange(w) + 0.5) * s, (np.arange(h) + 0.5) * s)
        points.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        stride_col.append(np.full((h * w, 1), s))
    return np.concatenate(points).astype(np.float32), np.concatenate(stride_col).astype(np.float32)


def dfl_expectation(reg: paddle.Tensor, proj: paddle.Tensor) -> paddle.Tensor:
    """[..., 4, R] logits -> [..., 4] expected distances in stride units (proj holds the bin values)."""
    return paddle.matmul(F.softmax(reg, axis=-1), proj).squeeze(-1)


def distance_to_box(points: paddle.Tensor, dist: paddle.Tensor) -> paddle.Tensor:
    """ltrb distances from `points` -> xyxy boxes (same units as the inputs)."""
    lt, rb = paddle.split(dist, 2, axis=-1)
    return paddle.concat([points - lt, points + rb], axis=-1)


class ESEAttn(nn.Layer):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.fc = nn.Conv2D(ch, ch, 1)
        self.conv = ConvBN(ch, ch, 1)
        nn.initializer.Normal(std=0.001)(self.fc.weight)

    def forward(self, feat: paddle.Tensor, avg: paddle.Tensor) -> paddle.Tensor:
        return self.conv(feat * F.sigmoid(self.fc(avg)))


class ETHead(nn.Layer):
    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        strides: tuple[int, ...],
        reg_range: tuple[int, int],
        eval_size: int | None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = strides  # top level (32) first, like the neck's outputs
        self.reg_range = reg_range
        self.reg_channels = reg_range[1] - reg_range[0]
        chs = in_channels
        self.stem_cls = nn.LayerList([ESEAttn(c) for c in chs])
        self.stem_reg = nn.LayerList([ESEAttn(c) for c in chs])
        prior_bias = -math.log((1 - 0.01) / 0.01)
        self.pred_cls = nn.LayerList()
        self.pred_reg = nn.LayerList()
        for c in chs:
            cls = nn.Conv2D(c, num_classes, 3, padding=1)
            nn.initializer.Constant(0.0)(cls.weight)
            nn.initializer.Constant(prior_bias)(cls.bias)
            reg = nn.Conv2D(c, 4 * self.reg_channels, 3, padding=1)
            nn.initializer.Constant(0.0)(reg.weight)
            nn.initializer.Constant(1.0)(reg.bias)
            self.pred_cls.append(cls)
            self.pred_reg.append(reg)
        proj = np.arange(reg_range[0], reg_range[1], dtype=np.float32).reshape(-1, 1)
        self.register_buffer("proj", paddle.to_tensor(proj))
        if eval_size is not None:
            # Fixed-size exports carry their anchors in the parameter file, as PaddleDetection's do.
            sizes = [(eval_size // s, eval_size // s) for s in strides]
            pts, st = make_anchor_points(sizes, strides)
            self.register_buffer("anchor_points", paddle.to_tensor(pts))
            self.register_buffer("stride_tensor", paddle.to_tensor(st))
        else:
            self.anchor_points = None
            self.stride_tensor = None

    def forward(self, feats: list[paddle.Tensor]) -> tuple[paddle.Tensor, paddle.Tensor]:
        """feats ordered stride 32, 16, 8. Returns class logits [B, C, L] and DFL logits [B, L, 4, R]
        with levels concatenated stride 32 first."""
        cls_list, reg_list = [], []
        for i, feat in enumerate(feats):
            avg = F.adaptive_avg_pool2d(feat, 1)
            cls_logit = self.pred_cls[i](self.stem_cls[i](feat, avg) + feat)
            reg = self.pred_reg[i](self.stem_reg[i](feat, avg))
            cls_list.append(cls_logit.reshape([0, self.num_classes, -1]))
            reg_list.append(reg.reshape([0, 4, self.reg_channels, -1]))
        cls_logits = paddle.concat(cls_list, axis=2)
        reg = paddle.concat(reg_list, axis=3).transpose([0, 3, 1, 2])
        return cls_logits, reg

    def anchors_for(self, feats: list[paddle.Tensor]) -> tuple[paddle.Tensor, paddle.Tensor]:
        sizes = [(int(f.shape[2]), int(f.shape[3])) for f in feats]
        n = sum(h * w for h, w in sizes)
        if self.anchor_points is not None and self.anchor_points.shape[0] == n:
            return self.anchor_points, self.stride_tensor
        pts, st = make_anchor_points(sizes, self.strides)
        return paddle.to_tensor(pts), paddle.to_tensor(st)

    def decode(self, reg: paddle.Tensor, points: paddle.Tensor, stride: paddle.Tensor) -> paddle.Tensor:
        """Boxes xyxy in input pixels [B, L, 4]."""
        dist = dfl_expectation(reg, self.proj) * stride
        return distance_to_box(points, dist)
