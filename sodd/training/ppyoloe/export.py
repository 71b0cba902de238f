"""From a configuration name (and optionally a training checkpoint) to a PaddleX model directory."""

from __future__ import annotations

from pathlib import Path

import paddle

from sodd.datasets.synth.generator import CLASSES as SYNTH_CLASSES
from sodd.training.export.paddlex_dir import ExportSpec, export_paddlex_dir
from sodd.training.ppyoloe.config import PADDLEX_MODEL_NAME, VISDRONE_LABELS, get_config


def read_checkpoint(path: Path) -> tuple[dict, list[str]]:
    """Model-config overrides and label list stored by `sodd train` in a checkpoint."""
    ckpt = paddle.load(str(path))
    if not isinstance(ckpt, dict) or "ema" not in ckpt:
        raise ValueError(f"{path}: not a checkpoint written by `sodd train` (no 'ema' weights)")
    return dict(ckpt.get("model_config", {})), list(ckpt.get("label_list", []))


def export_spec(config: str, weights: Path | None = None, labels: list[str] | None = None) -> ExportSpec:
    overrides: dict = {}
    label_list = labels
    if weights is not None:
        stored, stored_labels = read_checkpoint(weights)
        base = get_config(config).to_dict()
        overrides = {k: v for k, v in stored.items() if k in base and k != "name" and v != base[k]}
        label_list = label_list or stored_labels
    cfg = get_config(config, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    if label_list is None:
        label_list = list(SYNTH_CLASSES) if config.startswith("sodd-") else list(VISDRONE_LABELS)
    if len(label_list) != cfg.num_classes:
        raise ValueError(f"{len(label_list)} labels for a {cfg.num_classes}-class model")
    json_overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}
    return ExportSpec(
        factory="sodd.training.ppyoloe.model:build_inference",
        factory_kwargs={"config": config, "overrides": json_overrides,
                        "checkpoint": str(Path(weights).resolve()) if weights else None},
        weights=None,
        model_name=PADDLEX_MODEL_NAME.get(config, "PP-YOLOE_plus_SOD-S"),
        input_size=(cfg.input_size, cfg.input_size),
        label_list=label_list,
        # PaddleX reads only its own keys; this records which of our configurations was exported.
        extra_yml={"sodd": {"config": config}},
    )


def export_model(
    config: str, output: Path, weights: Path | None = None, labels: list[str] | None = None, legacy: bool = True
) -> ExportSpec:
    spec = export_spec(config, weights, labels)
    export_paddlex_dir(spec, Path(output), legacy=legacy)
    return spec
