"""PaddleX's Python API, in-process: `from sodd import create_model`.

    model = create_model(model_name="PP-YOLOE_plus_SOD-S", model_dir="/models/sod-s", device="cpu")
    for res in model.predict("photo.jpg", batch_size=1):
        res.print()
        res.save_to_img(save_path="./output/")
        res.save_to_json(save_path="./output/res.json")

The model runs the daemon's own detection core (`sodd.runtime.local.LocalDetector`: the registry, hardware
plugins and `sodd.runtime.detection`), so its boxes are the daemon's boxes, and yields the same result
objects as `sodd_client.Client.predict` (`sodd_client.results.DetResult`), in PaddleX 3.7.2's layouts.

Without `model_dir`, `model_name` is looked up in a model repository: the `repository` argument,
else $SODD_MODEL_REPOSITORY, else `model_repository` in /etc/sodd/sodd.toml. A repository entry
matches by directory name or by its inference.yml's Global.model_name; its newest complete version
is used. sodd never downloads weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sodd_client.inputs import Input, batches
from sodd_client.results import DetResult, box_dict

from sodd.model.modeldir import read_model_dir
from sodd.model.postprocess import Threshold
from sodd.runtime.detection import SLICING_FIELDS, Detections, DetectOptions, SlicingRequest
from sodd.runtime.local import LocalDetector

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_MODEL_NAME = "sodd-SOD-tiny"
REPOSITORY_ENV = "SODD_MODEL_REPOSITORY"


class ModelNotFound(FileNotFoundError):
    """No model directory for a model name: sodd cannot download PaddleX's weights."""


def configured_repository() -> Path | None:
    if os.environ.get(REPOSITORY_ENV):
        return Path(os.environ[REPOSITORY_ENV])
    from sodd.config.toml_file import DEFAULT_CONFIG_PATH, read_config

    if DEFAULT_CONFIG_PATH.is_file():
        value = read_config(DEFAULT_CONFIG_PATH).get("model_repository")
        return Path(value) if value else None
    return None


def _newest_version(source: Path) -> Path | None:
    from sodd.runtime.repository import scan_source

    complete = {v: d for v, d in scan_source(source).items() if not d.missing}
    return complete[max(complete)].path if complete else None


def _yml_model_name(directory: Path) -> str | None:
    try:
        return read_model_dir(directory).model_name
    except Exception:  # noqa: BLE001 - an unreadable entry is simply not a match
        return None


def find_model_dir(model_name: str, repository: str | Path | None = None) -> Path:
    """The directory serving `model_name`: a repository entry of that name or Global.model_name."""
    root = Path(repository) if repository else configured_repository()
    if root is not None:
        from sodd.runtime.repository import scan_repository

        sources = scan_repository(root)
        if model_name in sources and (found := _newest_version(sources[model_name])):
            return found
        for source in sources.values():
            found = _newest_version(source)
            if found is not None and _yml_model_name(found) == model_name:
                return found
    if model_name == DEFAULT_MODEL_NAME:
        return DEFAULT_MODEL_DIR
    where = f"in the model repository {root}" if root else \
        f"(no model repository: pass repository=..., set ${REPOSITORY_ENV} or model_repository in /etc/sodd/sodd.toml)"
    raise ModelNotFound(
        f"model {model_name!r}: no model_dir was given and no such model was found {where}. sodd does not "
        "download weights as PaddleX does (from its model hosts): export or copy the PaddleX inference "
        "directory onto this machine and pass model_dir=...")


def _as_float(threshold: Threshold | None) -> Threshold | None:
    # PaddleX ignores an int threshold (a bug); here 1 means 1.0, as in the daemon.
    if isinstance(threshold, Mapping):
        return {int(k): float(v) for k, v in threshold.items()}
    return None if threshold is None else float(threshold)


def slicing_request(slicing: Any) -> SlicingRequest | None:
    """None: the model's default; True/False: on (auto window size) or off; a mapping: Slicing's fields."""
    if slicing is None:
        return None
    if isinstance(slicing, bool):
        return SlicingRequest(enabled=slicing)
    if isinstance(slicing, Mapping):
        given = dict(slicing)
        enabled = given.pop("enabled", None)
        unknown = sorted(set(given) - set(SLICING_FIELDS))
        if unknown:
            raise ValueError(f"slicing has no field {unknown[0]!r}; fields: enabled, {', '.join(SLICING_FIELDS)}")
        return SlicingRequest(enabled=enabled, given=given)
    raise TypeError(f"slicing is None, a bool or a mapping, not {type(slicing).__name__}")


def _loader(item: Input) -> Any:
    """The input's pixels as PaddleX draws on them: OpenCV's decode, BGR to RGB."""
    def load() -> Any:
        from PIL import Image

        pixels = item.data if item.is_array else cv2.imdecode(np.frombuffer(item.data, np.uint8), cv2.IMREAD_COLOR)
        if pixels.ndim == 2:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
        return Image.fromarray(np.ascontiguousarray(pixels[:, :, 2::-1]))
    return load


def result_of(item: Input, detections: Detections, model: str, device: str,
              font_path: str | None = None) -> DetResult:
    w, h = detections.image_width, detections.image_height
    boxes = [box_dict(b.cls_id, b.label, b.score, b.xmin, b.ymin, b.xmax, b.ymax, w, h) for b in detections.to_boxes()]
    return DetResult({"input_path": item.path, "page_index": item.page_index, "boxes": boxes}, _loader(item),
                     font_path=font_path, model=model, device=device)


class SoddModel:
    """What `create_model` returns: PaddleX's predictor API over the daemon's detection core."""

    def __init__(self, model_dir: str | Path, model_name: str | None = None, device: str = "cpu",
                 threshold: Threshold | None = None, threads: int | None = None, max_batch_size: int = 8,
                 font_path: str | None = None) -> None:
        self.model_dir = Path(model_dir)
        self._detector = LocalDetector(self.model_dir, device or "cpu", threads, max_batch_size)
        served = self._detector.served
        self.model_name = model_name or served.model_dir.model_name
        self.device = served.device
        self.threshold = _as_float(threshold)
        self.font_path = font_path

    @property
    def labels(self) -> tuple[str, ...]:
        return self._detector.labels

    def predict(self, input: Any, batch_size: int = 1, threshold: Threshold | None = None, *,  # noqa: A002
                slicing: Any = None, max_detections: int = 0) -> Iterator[DetResult]:
        """PaddleX's `predict`: a path, a directory, a URL, a BGR array, encoded bytes, or a list of them;
        one result per image, in order, `batch_size` images per network batch."""
        chosen = _as_float(threshold) if threshold is not None else self.threshold
        options = DetectOptions(threshold=chosen, max_detections=max_detections, slicing=slicing_request(slicing))
        for chunk in batches(input, batch_size):
            result = self._detector.run([item.data for item in chunk], options)
            for item, detections in zip(chunk, result.images, strict=True):
                yield result_of(item, detections, self.model_name, result.device, self.font_path)

    def __call__(self, input: Any, **kwargs: Any) -> Iterator[DetResult]:  # noqa: A002 - PaddleX's name
        return self.predict(input, **kwargs)

    def close(self) -> None:
        self._detector.close()

    def __enter__(self) -> SoddModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_model(model_name: str | None = None, model_dir: str | Path | None = None, device: str | None = "cpu",
                 *, threshold: Threshold | None = None, repository: str | Path | None = None,
                 threads: int | None = None, font_path: str | None = None, **unsupported: Any) -> SoddModel:
    """PaddleX's `create_model`, run by sodd in this process. `device` takes sodd's device strings
    ("cpu", "gpu:0", "npu:0,cpu", "cpu?threads=2"); `threshold` is the model-level threshold."""
    ignored = {k: v for k, v in unsupported.items() if v not in (None, False)}
    if ignored:
        raise TypeError(f"create_model: {', '.join(sorted(ignored))} is a PaddleX option sodd does not take "
                        "(high-performance inference is chosen by the device string, e.g. 'cpu' with sodd serve --hp)")
    if model_dir is None:
        if not model_name:
            raise ValueError("create_model needs model_name, model_dir or both")
        model_dir = find_model_dir(model_name, repository)
    elif model_name:
        found = read_model_dir(model_dir).model_name
        if found != model_name:
            raise ValueError(f"model_name {model_name!r} does not match {model_dir}, whose inference.yml says "
                             f"Global.model_name {found!r}")
    return SoddModel(model_dir, model_name, device or "cpu", threshold, threads, font_path=font_path)
