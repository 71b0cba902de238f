"""Reading a PaddleX inference-model directory.

PaddleX reads only `Global.model_name`, `Preprocess`, `draw_threshold`, `label_list` and `Hpi` from
inference.yml; so do we. Everything is validated here, at load time, so that the request path never
meets a malformed directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sodd.errors import ModelDirError

# inference.yml `interp` codes, as PaddleDetection writes them (OpenCV's numbering).
INTERP_NAMES = {0: "nearest", 1: "linear", 2: "cubic", 3: "area", 4: "lanczos4"}


@dataclass(frozen=True)
class Resize:
    target_size: tuple[int, int]  # (h, w), as the yml writes it
    interp: int = 2
    keep_ratio: bool = False


@dataclass(frozen=True)
class NormalizeImage:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    is_scale: bool = True
    norm_type: str = "mean_std"


@dataclass(frozen=True)
class Permute:
    pass


PreprocessOp = Resize | NormalizeImage | Permute


@dataclass(frozen=True)
class ModelDir:
    path: Path
    model_file: Path
    params_file: Path
    # The legacy ProgramDesc, when present: Paddle Lite reads only this form.
    legacy_model_file: Path | None
    model_name: str
    preprocess: tuple[PreprocessOp, ...]
    label_list: tuple[str, ...]
    draw_threshold: float | None
    hpi: dict = field(default_factory=dict)

    @property
    def program_format(self) -> str:
        return "pir" if self.model_file.suffix == ".json" else "legacy"

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(h, w) of the network input, when a fixed Resize decides it."""
        for op in self.preprocess:
            if isinstance(op, Resize) and not op.keep_ratio:
                return op.target_size
        return None


def read_model_dir(path: str | Path) -> ModelDir:
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist or is not a directory")
    params = path / "inference.pdiparams"
    if not params.is_file():
        raise ModelDirError(f"{params} is missing: a PaddleX model directory needs its parameter file")
    pir, legacy = path / "inference.json", path / "inference.pdmodel"
    if pir.is_file():
        model_file = pir  # PaddleX prefers the PIR program when both exist
    elif legacy.is_file():
        model_file = legacy
    else:
        raise ModelDirError(f"{path} has neither inference.json nor inference.pdmodel")
    yml_path = path / "inference.yml"
    if not yml_path.is_file():
        raise ModelDirError(f"{yml_path} is missing")
    try:
        with open(yml_path, encoding="utf-8") as f:
            yml = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{yml_path} is not valid YAML: {exc}") from exc
    if not isinstance(yml, dict):
        raise ModelDirError(f"{yml_path} must hold a mapping at the top level")

    global_section = yml.get("Global") or {}
    model_name = global_section.get("model_name") if isinstance(global_section, dict) else None
    if not isinstance(model_name, str) or not model_name:
        raise ModelDirError(f"{yml_path}: Global.model_name is missing")
    labels = yml.get("label_list")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str | int) for x in labels):
        raise ModelDirError(f"{yml_path}: label_list must be a non-empty list of names")
    draw_threshold = yml.get("draw_threshold")
    if draw_threshold is not None:
        if not isinstance(draw_threshold, int | float) or not 0 <= draw_threshold <= 1:
            raise ModelDirError(f"{yml_path}: draw_threshold must be a number in [0, 1]")
        draw_threshold = float(draw_threshold)
    ops = yml.get("Preprocess")
    if not isinstance(ops, list) or not ops:
        raise ModelDirError(f"{yml_path}: Preprocess must be a non-empty list of ops")
    hpi = yml.get("Hpi") or {}
    return ModelDir(
        path=path,
        model_file=model_file,
        params_file=params,
        legacy_model_file=legacy if legacy.is_file() else None,
        model_name=model_name,
        preprocess=tuple(_parse_op(op, i, yml_path) for i, op in enumerate(ops)),
        label_list=tuple(str(x) for x in labels),
        draw_threshold=draw_threshold,
        hpi=hpi if isinstance(hpi, dict) else {},
    )


def _parse_op(op: object, index: int, yml_path: Path) -> PreprocessOp:
    where = f"{yml_path}: Preprocess[{index}]"
    if not isinstance(op, dict) or "type" not in op:
        raise ModelDirError(f"{where} must be a mapping with a `type`")
    kind = op["type"]
    if kind == "Resize":
        size = op.get("target_size")
        if isinstance(size, int):
            size = [size, size]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
            raise ModelDirError(f"{where}: Resize.target_size must be [h, w] positive integers")
        interp = op.get("interp", 2)
        if interp not in INTERP_NAMES:
            raise ModelDirError(f"{where}: Resize.interp {interp!r} is not one of {sorted(INTERP_NAMES)}")
        return Resize(target_size=(size[0], size[1]), interp=interp, keep_ratio=bool(op.get("keep_ratio", False)))
    if kind == "NormalizeImage":
        mean = op.get("mean", [0.485, 0.456, 0.406])
        std = op.get("std", [0.229, 0.224, 0.225])
        for name, values in (("mean", mean), ("std", std)):
            if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, int | float) for v in values)):
                raise ModelDirError(f"{where}: NormalizeImage.{name} must be three numbers")
        if any(not math.isfinite(s) or s == 0 for s in std):
            raise ModelDirError(f"{where}: NormalizeImage.std must be finite and non-zero")
        norm_type = op.get("norm_type") or "mean_std"
        if norm_type not in ("mean_std", "none"):
            raise ModelDirError(f"{where}: NormalizeImage.norm_type {norm_type!r} is not mean_std or none")
        return NormalizeImage(
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            is_scale=bool(op.get("is_scale", True)),
            norm_type=norm_type,
        )
    if kind == "Permute":
        return Permute()
    raise ModelDirError(
        f"{where}: preprocessing op {kind!r} is not supported (supported: Resize, NormalizeImage, Permute)"
    )
