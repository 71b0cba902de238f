"""Running a detector over a dataset split and turning its boxes into COCO results.

Class ids map to categories by PaddleDetection's catid2clsid rule: a model trained on a COCO
dataset numbers its classes 0..N-1 in the order of the sorted category ids, so class id i is the
i-th smallest category id. A class id without a category (a model with more classes than the
dataset) produces no result and is counted.

Two detectors: a model directory run in-process (`sodd.runtime.local.LocalDetector`) and the deployed
model behind a running daemon (`sodd_client.Client`), so both give the same numbers for the same
model. Boxes are evaluated as they are served: clipped to the image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sodd.datasets.coco import SplitData
from sodd.datasets.layout import image_path

# (class id, label, score, xmin, ymin, xmax, ymax) in original image pixels.
RawBox = tuple[int, str, float, float, float, float, float]


class DetectionError(RuntimeError):
    """The detector could not start, or failed on an image; the message says which."""


class Detector(Protocol):
    labels: tuple[str, ...]
    description: str

    def detect_file(self, path: Path) -> list[RawBox]: ...

    def close(self) -> None: ...


def class_to_category(categories: Iterable[int]) -> list[int]:
    """Class id i -> category id: the sorted category ids (PaddleDetection's catid2clsid)."""
    return sorted(categories)


@dataclass
class DetectionRun:
    results: list[dict[str, Any]] = field(default_factory=list)
    unmapped_boxes: int = 0
    images: int = 0
    seconds: float = 0.0


def run_detector(
    detector: Detector,
    split: SplitData,
    root: Path,
    progress: Callable[[Iterable[Any]], Iterable[Any]] = lambda it: it,
) -> DetectionRun:
    mapping = class_to_category(split.categories)
    run = DetectionRun()
    start = time.perf_counter()
    for img in progress(split.coco["images"]):
        path = image_path(root, img["file_name"])
        try:
            boxes = detector.detect_file(path)
        except Exception as exc:  # a decode error or a daemon's refusal: name the image it happened on
            raise DetectionError(f"{path} (image id {img['id']}): {_describe(exc)}") from exc
        for cls_id, _label, score, x1, y1, x2, y2 in boxes:
            if not 0 <= cls_id < len(mapping):
                run.unmapped_boxes += 1
                continue
            run.results.append(
                {
                    "image_id": img["id"],
                    "category_id": mapping[cls_id],
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": float(score),
                }
            )
        run.images += 1
    run.seconds = time.perf_counter() - start
    return run


class LocalModel:
    """A model directory run in this process."""

    def __init__(self, model_dir: Path, device: str, threshold: float) -> None:
        import cv2  # only the local path needs OpenCV and Paddle

        from sodd.runtime.local import LocalDetector

        self._cv2 = cv2
        try:
            self._detector = LocalDetector(Path(model_dir), device=device)
        except Exception as exc:  # a bad directory, device or program: the loader's message says which
            raise DetectionError(f"cannot load the model directory {model_dir}: {_describe(exc)}") from exc
        self._threshold = threshold
        self.labels = tuple(self._detector.labels)
        self.description = f"model directory {model_dir} on {device}"

    def detect_file(self, path: Path) -> list[RawBox]:
        data = path.read_bytes()
        image = self._cv2.imdecode(_as_array(data), self._cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{path} is not an image OpenCV can decode")
        boxes = self._detector.detect(image, threshold=self._threshold)
        return [(b.cls_id, b.label, b.score, b.xmin, b.ymin, b.xmax, b.ymax) for b in boxes]

    def close(self) -> None:
        self._detector.close()


class ServedModel:
    """The model a running daemon serves, over gRPC; images travel encoded, as users send them."""

    def __init__(self, address: str, model: str, threshold: float, timeout: float = 60.0) -> None:
        from sodd_client import Client

        self._client = Client(address, timeout=timeout)
        self._address = address
        self._model = model
        self._threshold = threshold
        self.labels = self._labels()
        self.description = f"daemon {address}, model {model or '(default)'}"

    def _labels(self) -> tuple[str, ...]:
        """The served model's labels; asking first also fails fast on a wrong address or name."""
        import grpc

        try:
            return tuple(self._client.get_model(self._model).labels)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return ()  # a daemon without GetModel: evaluation works without labels
            self._client.close()
            where = f"daemon {self._address}, model {self._model or '(default)'}"
            raise DetectionError(f"{where}: {_describe(exc)}") from exc

    def detect_file(self, path: Path) -> list[RawBox]:
        response = self._client.detect(path.read_bytes(), self._model, threshold=self._threshold)
        return [(b.cls_id, b.label, b.score, b.xmin, b.ymin, b.xmax, b.ymax) for b in response.boxes]

    def close(self) -> None:
        self._client.close()


def _describe(exc: Exception) -> str:
    details = getattr(exc, "details", None)
    code = getattr(exc, "code", None)
    if callable(details) and callable(code):  # grpc.RpcError
        return f"{code().name}: {details()}"
    return f"{type(exc).__name__}: {exc}"


def _as_array(data: bytes) -> Any:
    import numpy as np

    return np.frombuffer(data, dtype=np.uint8)
