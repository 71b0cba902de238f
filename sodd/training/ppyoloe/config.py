"""Named PP-YOLOE+ SOD configurations.

The full-size ones follow PaddleDetection's smalldet configs (see docs/models.md); `sodd-SOD-tiny`
is ours: the same network shape, narrowed so it trains on two CPU cores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class PPYOLOEConfig:
    name: str
    depth_mult: float = 1.0
    width_mult: float = 1.0
    input_size: int = 640
    num_classes: int = 10
    # backbone (CSPResNet, large stem, ESE attention)
    layers: tuple[int, ...] = (3, 6, 6, 3)
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024)
    # neck (CustomCSPPAN)
    neck_out_channels: tuple[int, ...] = (768, 384, 192)
    neck_block_num: int = 3
    use_trans: bool = True
    trans_layers: int = 4
    trans_heads: int = 4
    trans_ffn: int = 2048
    # head (ET-head with DFL)
    strides: tuple[int, ...] = (32, 16, 8)
    reg_range: tuple[int, int] = (-2, 8)
    # assigner and losses
    topk: int = 13
    alpha: float = 1.0
    beta: float = 6.0
    center_radius: float = 1.0
    loss_weights: dict = field(default_factory=lambda: {"class": 1.0, "iou": 2.5, "dfl": 0.5})
    # export-time NMS, as PaddleDetection's SOD configs
    score_threshold: float = 0.01
    nms_top_k: int = 1000
    keep_top_k: int = 500
    nms_threshold: float = 0.6

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **kwargs: object) -> PPYOLOEConfig:
        return replace(self, **kwargs)


VISDRONE_LABELS = [
    "pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus",
    "motorcycle",
]

CONFIGS: dict[str, PPYOLOEConfig] = {
    "PP-YOLOE_plus_SOD-S": PPYOLOEConfig("PP-YOLOE_plus_SOD-S", depth_mult=0.33, width_mult=0.50),
    "PP-YOLOE_plus_SOD-L": PPYOLOEConfig("PP-YOLOE_plus_SOD-L"),
    "PP-YOLOE_plus_SOD-largesize-L": PPYOLOEConfig(
        "PP-YOLOE_plus_SOD-largesize-L", input_size=1920, reg_range=(-2, 20)
    ),
    # Ours: quarter width, one encoder layer with a narrower FFN, 320 input; still CSPResNet + ESE,
    # CustomCSPPAN with SPP and the top-level transformer, ET-head with DFL over reg_range.
    "sodd-SOD-tiny": PPYOLOEConfig(
        "sodd-SOD-tiny", depth_mult=0.33, width_mult=0.25, input_size=320, num_classes=6,
        trans_layers=1, trans_ffn=512, keep_top_k=100, nms_top_k=500,
    ),
}

# PaddleX has no entry for our own configuration; exported directories name the family member
# PaddleX should run them as.
PADDLEX_MODEL_NAME = {
    "PP-YOLOE_plus_SOD-S": "PP-YOLOE_plus_SOD-S",
    "PP-YOLOE_plus_SOD-L": "PP-YOLOE_plus_SOD-L",
    "PP-YOLOE_plus_SOD-largesize-L": "PP-YOLOE_plus_SOD-largesize-L",
    "sodd-SOD-tiny": "PP-YOLOE_plus_SOD-S",
}


def get_config(name: str, **overrides: object) -> PPYOLOEConfig:
    try:
        cfg = CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}") from None
    return cfg.with_overrides(**overrides) if overrides else cfg
