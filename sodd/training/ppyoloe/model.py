"""The detector (training form), its losses, and the export wrapper with NMS in the graph."""

from __future__ import annotations

from pathlib import Path

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from sodd.training.export.nms import multiclass_nms3
from sodd.training.ppyoloe.assigner import task_aligned_assign
from sodd.training.ppyoloe.backbone import CSPResNet
from sodd.training.ppyoloe.config import PPYOLOEConfig, get_config
from sodd.training.ppyoloe.head import ETHead, dfl_expectation, distance_to_box
from sodd.training.ppyoloe.losses import box_to_distance, dfl_loss, giou, varifocal_loss
from sodd.training.ppyoloe.neck import CustomCSPPAN


class PPYOLOE(nn.Layer):
    """Backbone + neck + head. Input: RGB float32 in 0..255 (normalisation is part of the graph)."""

    def __init__(self, cfg: PPYOLOEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = CSPResNet(cfg.layers, cfg.channels, cfg.depth_mult, cfg.width_mult)
        self.neck = CustomCSPPAN(
            self.backbone.out_channels, cfg.neck_out_channels, cfg.neck_block_num, cfg.depth_mult,
            cfg.width_mult, cfg.use_trans, cfg.trans_layers, cfg.trans_heads, cfg.trans_ffn, cfg.input_size,
        )
        self.head = ETHead(
            self.neck.out_channels, cfg.num_classes, cfg.strides, cfg.reg_range, cfg.input_size
        )

    def forward(self, image: paddle.Tensor) -> tuple[paddle.Tensor, ...]:
        """Returns class logits [B, C, L], DFL logits [B, L, 4, R], anchor points [L, 2], strides [L, 1]."""
        feats = self.neck(self.backbone(image * (1.0 / 255.0)))
        cls_logits, reg = self.head(feats)
        points, stride = self.head.anchors_for(feats)
        return cls_logits, reg, points, stride

    def predict_boxes(self, image: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Boxes [B, L, 4] in input pixels and class probabilities [B, C, L], before NMS."""
        cls_logits, reg, points, stride = self(image)
        return self.head.decode(reg, points, stride), F.sigmoid(cls_logits)

    def loss(
        self, outputs: tuple, gt_labels: paddle.Tensor, gt_boxes: paddle.Tensor, gt_mask: paddle.Tensor
    ) -> dict[str, paddle.Tensor]:
        """gt_labels [B, n] int64, gt_boxes [B, n, 4] pixels xyxy, gt_mask [B, n] float."""
        cfg = self.cfg
        cls_logits, reg, points, stride = outputs
        logits = cls_logits.transpose([0, 2, 1])  # [B, L, C]
        grid_points = points / stride
        pred_dist = dfl_expectation(reg, self.head.proj)
        pred_boxes = distance_to_box(grid_points, pred_dist)  # stride units
        a = task_aligned_assign(
            F.sigmoid(logits).detach(), (pred_boxes * stride).detach(), points, stride, gt_labels, gt_boxes,
            gt_mask, cfg.num_classes, cfg.topk, cfg.alpha, cfg.beta, cfg.center_radius,
        )
        onehot = F.one_hot(a.labels, cfg.num_classes + 1)[..., : cfg.num_classes]
        score_sum = paddle.clip(a.scores.sum(), min=1.0)
        loss_cls = varifocal_loss(logits, a.scores, onehot) / score_sum
        if int(a.fg.astype("int32").sum()) > 0:
            fg = paddle.nonzero(a.fg.reshape([-1])).squeeze(-1)
            b, n_anchor = a.fg.shape
            weight = a.scores.sum(-1).reshape([-1]).gather(fg)
            pb = pred_boxes.reshape([-1, 4]).gather(fg)
            tb = (a.boxes / stride).reshape([-1, 4]).gather(fg)
            loss_iou = ((1 - giou(pb, tb)) * weight).sum() / score_sum
            gp = grid_points.unsqueeze(0).expand([b, n_anchor, 2]).reshape([-1, 2]).gather(fg)
            lo, hi = cfg.reg_range
            target = box_to_distance(gp, tb, lo, hi)
            r = reg.reshape([-1, 4, hi - lo]).gather(fg)
            loss_dfl = (dfl_loss(r, target, lo) * weight).sum() / score_sum
        else:
            loss_iou = paddle.zeros([1]).sum()
            loss_dfl = paddle.zeros([1]).sum()
        w = cfg.loss_weights
        total = w["class"] * loss_cls + w["iou"] * loss_iou + w["dfl"] * loss_dfl
        return {"loss": total, "cls": loss_cls, "iou": loss_iou, "dfl": loss_dfl}

    def convert_to_deploy(self) -> None:
        for layer in self.sublayers():
            if layer is not self and hasattr(layer, "convert_to_deploy"):
                layer.convert_to_deploy()


class PPYOLOEInference(nn.Layer):
    """What exported directories run: `(image, scale_factor)` -> `(boxes [N, 6], boxes_num [B])`,
    boxes as `[class, score, x1, y1, x2, y2]` in original-image pixels."""

    def __init__(self, model: PPYOLOE) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: paddle.Tensor, scale_factor: paddle.Tensor) -> tuple[paddle.Tensor, ...]:
        cfg = self.model.cfg
        boxes, scores = self.model.predict_boxes(image)
        # scale_factor rows are [h_scale, w_scale]; boxes are x1, y1, x2, y2.
        sy, sx = paddle.split(scale_factor, 2, axis=-1)
        scale = paddle.concat([sx, sy, sx, sy], axis=-1).unsqueeze(1)
        boxes = boxes / scale
        return multiclass_nms3(
            boxes, scores, score_threshold=cfg.score_threshold, nms_top_k=cfg.nms_top_k,
            keep_top_k=cfg.keep_top_k, nms_threshold=cfg.nms_threshold,
        )


def build_model(config: str, overrides: dict | None = None) -> PPYOLOE:
    # Overrides may come through JSON (export jobs), which turns tuples into lists.
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items()}
    return PPYOLOE(get_config(config, **fixed))


def build_inference(
    config: str, overrides: dict | None = None, checkpoint: str | None = None, seed: int = 0
) -> PPYOLOEInference:
    """Export factory: deterministic for given kwargs (fresh weights are seeded); loads a training
    checkpoint (EMA weights when present) before fusing the RepVGG branches as PaddleDetection does."""
    paddle.seed(seed)
    model = build_model(config, overrides)
    if checkpoint:
        state = paddle.load(str(Path(checkpoint)))
        state = state.get("ema", state.get("model", state)) if isinstance(state, dict) else state
        missing, unexpected = model.set_state_dict(state)
        if missing or unexpected:
            raise ValueError(f"{checkpoint}: weights do not fit {config}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    model.eval()
    model.convert_to_deploy()
    return PPYOLOEInference(model).eval()
