"""Running a model directory in-process, without the daemon (evaluation, benchmarks, scripts).

The same registry, plugin and pipeline as the daemon, so local numbers are the daemon's numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sodd import pipeline
from sodd.config import ModelConfig
from sodd.devices import parse_devices
from sodd.model.postprocess import Box, Threshold, finish, resolve_threshold, split_per_image
from sodd.model.slicing import SliceOptions, detect_sliced
from sodd.plugin import discover_plugins
from sodd.registry import ModelRegistry


class LocalDetector:
    def __init__(self, model_dir: str | Path, device: str = "cpu", threads: int | None = None,
                 max_batch_size: int = 8) -> None:
        plugins, _problems = discover_plugins()
        self._registry = ModelRegistry(plugins, max_pending=1, cpu_threads=threads)
        # One caller at a time: one predictor with every thread, not the daemon's narrow instances.
        self.served = self._registry.load(ModelConfig(
            name="local", path=Path(model_dir), devices=parse_devices(device), max_batch_size=max_batch_size,
            instances=1))

    @property
    def labels(self) -> tuple[str, ...]:
        return self.served.model_dir.label_list

    def detect_batch(self, images_bgr: Sequence[np.ndarray], threshold: Threshold | None = None,
                     max_detections: int = 0) -> list[list[Box]]:
        model_dir = self.served.model_dir
        resolved = resolve_threshold(threshold, None, model_dir.draw_threshold)
        prepared = pipeline.prepare_images(model_dir, images_bgr)
        results = self.served.runner.run_images_sync(prepared)
        return [finish(r.rows, resolved, model_dir.label_list, p.original_hw[1], p.original_hw[0], max_detections)
                for p, r in zip(prepared, results, strict=True)]

    def detect(self, image_bgr: np.ndarray, threshold: Threshold | None = None, max_detections: int = 0) -> list[Box]:
        return self.detect_batch([image_bgr], threshold, max_detections)[0]

    def detect_sliced(self, image_bgr: np.ndarray, options: SliceOptions,
                      threshold: Threshold | None = None) -> tuple[list[Box], int]:
        """Sliced detection: boxes as `detect` returns them, and how many crops the model ran."""
        model_dir = self.served.model_dir
        resolved = resolve_threshold(threshold, None, model_dir.draw_threshold)

        def raw_rows(crops: list[np.ndarray]) -> list[np.ndarray]:
            # The network's rows before any threshold, per crop and in that crop's pixels.
            prepared = pipeline.prepare_images(model_dir, crops)
            rows: list[np.ndarray] = []
            for run in pipeline.same_shape_runs(prepared, self.served.config.max_batch_size):
                chunk = [prepared[i] for i in run]
                outputs = self.served.runner.run_sync(
                    pipeline.network_inputs(chunk, self.served.runner.predictor.input_names)).outputs
                rows.extend(split_per_image(outputs[0], outputs[1]))
            return rows

        result = detect_sliced(image_bgr, options, model_dir.input_size, raw_rows, resolved)
        height, width = image_bgr.shape[:2]
        return finish(result.rows, resolved, model_dir.label_list, width, height), result.slices_run

    def close(self) -> None:
        self._registry.close()
