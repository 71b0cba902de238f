"""Write a PaddleX inference-model directory from a paddle Layer.

Each program format is saved in a fresh interpreter (`python -m sodd.training.export.jit_save`): the legacy
ProgramDesc that Paddle Lite reads needs `FLAGS_enable_pir_api=0` before paddle is imported, and a
separate process also keeps the caller's paddle state untouched. Both exports write byte-identical
`.pdiparams`, so one parameter file serves both programs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml


@dataclass(frozen=True)
class ExportSpec:
    """What to export: a Layer built by `factory(**factory_kwargs)` plus the inference.yml facts.

    The Layer's `forward(self, image, scale_factor)` returns `(boxes [N, 6], boxes_num [B])` as
    PaddleDetection's exported detectors do.
    """

    factory: str
    factory_kwargs: dict
    weights: Path | None
    model_name: str
    input_size: tuple[int, int]
    label_list: list[str]
    preprocess: list[dict] | None = None
    draw_threshold: float = 0.5
    max_batch: int = 8
    extra_yml: dict = field(default_factory=dict)

    def preprocess_ops(self) -> list[dict]:
        if self.preprocess is not None:
            return self.preprocess
        h, w = self.input_size
        return [
            {"interp": 2, "keep_ratio": False, "target_size": [h, w], "type": "Resize"},
            {"type": "Permute"},
        ]


def inference_yml(spec: ExportSpec) -> dict:
    """The inference.yml content, laid out as PaddleDetection's exporter writes it."""
    h, w = spec.input_size
    n = spec.max_batch
    return {
        "mode": "paddle",
        "draw_threshold": spec.draw_threshold,
        "metric": "COCO",
        "use_dynamic_shape": False,
        "Global": {"model_name": spec.model_name},
        "arch": "YOLO",
        "min_subgraph_size": 3,
        "Preprocess": spec.preprocess_ops(),
        "label_list": list(spec.label_list),
        "Hpi": {
            "backend_configs": {
                "paddle_infer": {
                    "trt_dynamic_shapes": {
                        "image": [[1, 3, h, w], [1, 3, h, w], [n, 3, h, w]],
                        "scale_factor": [[1, 2], [1, 2], [n, 2]],
                    }
                }
            }
        },
        **spec.extra_yml,
    }


def export_paddlex_dir(spec: ExportSpec, output_dir: Path, *, legacy: bool = True) -> None:
    """Write inference.json (+ inference.pdmodel when `legacy`), inference.pdiparams and inference.yml."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    formats = ["pir", "legacy"] if legacy else ["pir"]
    job = {
        "factory": spec.factory,
        "factory_kwargs": spec.factory_kwargs,
        "weights": str(spec.weights) if spec.weights else None,
        "input_size": list(spec.input_size),
        "prefix": str(output_dir / "inference"),
    }
    for fmt in formats:
        _run_jit_save({**job, "format": fmt})
    with open(output_dir / "inference.yml", "w", encoding="utf-8") as f:
        yaml.safe_dump(inference_yml(spec), f, sort_keys=False, default_flow_style=None)


def _run_jit_save(job: dict) -> None:
    env = dict(os.environ)
    env["FLAGS_enable_pir_api"] = "0" if job["format"] == "legacy" else "1"
    result = subprocess.run(
        [sys.executable, "-m", "sodd.training.export.jit_save", json.dumps(job)],
        env=env, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{job['format']} export failed:\n{result.stderr[-4000:]}")


def spec_as_dict(spec: ExportSpec) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(spec).items()}
