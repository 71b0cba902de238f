"""Running a model directory in-process, without the daemon (evaluation, benchmarks, scripts).

The same registry, plugins and detection core as the daemon, so local numbers are the daemon's
numbers and local limits are the daemon's limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sodd.config.schema import ModelConfig
from sodd.model.postprocess import Box, Threshold
from sodd.model.slicing import MAX_SLICES, SliceOptions
from sodd.plugins.devices import parse_devices
from sodd.plugins.protocol import discover_plugins
from sodd.runtime.detection import DetectOptions, Detector, DetectResult, ImageData, ImageInput, Limits, SlicingRequest
from sodd.runtime.registry import ModelRegistry

MODEL_NAME = "local"
# One caller waits for its own images: room for the largest request the limits allow.
LOCAL_MAX_PENDING = Limits().max_request_images * (MAX_SLICES + 1)


class LocalDetector:
    def __init__(self, model_dir: str | Path, device: str = "cpu", threads: int | None = None,
                 max_batch_size: int = 8, limits: Limits | None = None) -> None:
        plugins, _problems = discover_plugins()
        self._registry = ModelRegistry(plugins, max_pending=LOCAL_MAX_PENDING, cpu_threads=threads)
        # One caller at a time: one predictor with every thread, not the daemon's narrow instances.
        self.served = self._registry.load(ModelConfig(
            name=MODEL_NAME, path=Path(model_dir), devices=parse_devices(device), max_batch_size=max_batch_size,
            instances=1))
        self.detector = Detector(self._registry, limits or Limits(), workers=None)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.served.model_dir.label_list

    def run(self, images: Sequence[ImageData], options: DetectOptions | None = None) -> DetectResult:
        """The detection core on this model: encoded bytes, raw pixels or BGR arrays in."""
        inputs = [ImageInput(image, f"images[{i}]") for i, image in enumerate(images)]
        return self.detector.detect_sync(MODEL_NAME, 0, inputs, options or DetectOptions())

    def detect_batch(self, images_bgr: Sequence[np.ndarray], threshold: Threshold | None = None,
                     max_detections: int = 0) -> list[list[Box]]:
        result = self.run(images_bgr, DetectOptions(threshold=threshold, max_detections=max_detections,
                                                     slicing=SlicingRequest(enabled=False)))
        return [image.to_boxes() for image in result.images]

    def detect(self, image_bgr: np.ndarray, threshold: Threshold | None = None, max_detections: int = 0) -> list[Box]:
        return self.detect_batch([image_bgr], threshold, max_detections)[0]

    def detect_sliced(self, image_bgr: np.ndarray, options: SliceOptions,
                      threshold: Threshold | None = None) -> tuple[list[Box], int]:
        """Sliced detection: boxes as `detect` returns them, and how many crops the model ran."""
        slicing = SlicingRequest(given=asdict(options))
        result = self.run([image_bgr], DetectOptions(threshold=threshold, slicing=slicing))
        return result.images[0].to_boxes(), result.images[0].slices

    def close(self) -> None:
        self._registry.close()
