"""The model-side steps of a detection, shared by the daemon and local tools.

decode -> preprocess (from inference.yml) -> plugin run -> split per image -> threshold, clip,
label. Everything except the plugin run is pure numpy, which keeps PaddleX parity cheap to test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sodd.model.modeldir import ModelDir
from sodd.model.postprocess import Box, Threshold, finish, split_per_image
from sodd.model.preprocess import Prepared, batch_inputs, prepare

# A detector's program returns box rows [N, 6], then per-image counts (docs/plugins.md).
DETECTOR_OUTPUTS = 2


def has_detector_outputs(outputs: Sequence[np.ndarray]) -> bool:
    """Whether a program's outputs have a detector's signature's length: box rows, then counts."""
    return len(outputs) >= DETECTOR_OUTPUTS


def rows_per_image(outputs: Sequence[np.ndarray], images: int) -> list[np.ndarray]:
    """The raw box rows of each of the `images` a batch ran, from the program's outputs."""
    if not has_detector_outputs(outputs):
        raise ValueError(f"the program returned {len(outputs)} outputs; a detector returns boxes and counts")
    rows = split_per_image(outputs[0], outputs[1])
    if len(rows) != images:
        raise ValueError(f"the program returned counts for {len(rows)} images, {images} were sent")
    return rows


def prepare_images(model: ModelDir, images: Sequence[np.ndarray]) -> list[Prepared]:
    return [prepare(image, model.preprocess) for image in images]


def network_inputs(prepared: Sequence[Prepared], input_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    return batch_inputs(list(prepared), input_names)


def boxes_per_image(outputs: Sequence[np.ndarray], prepared: Sequence[Prepared], model: ModelDir,
                    threshold: Threshold, max_detections: int = 0) -> list[list[Box]]:
    """Outputs by position: [N, 6] box rows, then per-image counts."""
    rows = rows_per_image(outputs, len(prepared))
    return [
        finish(r, threshold, model.label_list, p.original_hw[1], p.original_hw[0], max_detections)
        for r, p in zip(rows, prepared, strict=True)
    ]
