"""Preprocessing from inference.yml, step for step as PaddleX 3.7.2 does it.

Every step matters for exact parity: RGB conversion first, `cv2.resize` skipped when the size
already matches, scale factors as new/original per axis, normalisation as float32 multiply then
add, and a float32 batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sodd.model.modeldir import NormalizeImage, Permute, PreprocessOp, Resize

CV2_INTERP = {
    0: cv2.INTER_NEAREST,
    1: cv2.INTER_LINEAR,
    2: cv2.INTER_CUBIC,
    3: cv2.INTER_AREA,
    4: cv2.INTER_LANCZOS4,
}


@dataclass(frozen=True)
class Prepared:
    """One image ready for the network, and what postprocessing needs to know about it."""

    image: np.ndarray  # float32, CHW after Permute
    scale_factor: tuple[float, float]  # (h, w) = resized / original
    resized_hw: tuple[int, int]
    original_hw: tuple[int, int]


def resized_size(op: Resize, height: int, width: int) -> tuple[int, int]:
    """(w, h) that `op` resizes an image of `height` x `width` to."""
    if not op.keep_ratio:
        return op.target_size[1], op.target_size[0]
    target = op.target_size
    scale = min(max(target) / max(width, height), min(target) / min(width, height))
    return round(width * scale), round(height * scale)


def normalize(image: np.ndarray, op: NormalizeImage) -> np.ndarray:
    scale = 1.0 / 255.0 if op.is_scale else 1.0
    if op.norm_type == "mean_std":
        alpha = np.array([scale / s for s in op.std], dtype=np.float32)
        beta = np.array([-m / s for m, s in zip(op.mean, op.std, strict=True)], dtype=np.float32)
    else:
        alpha = np.full(3, scale, dtype=np.float32)
        beta = np.zeros(3, dtype=np.float32)
    out = image.astype(np.float32)
    out *= alpha  # two separate float32 roundings, as PaddleX's per-channel loop does
    out += beta
    return out


def prepare(bgr: np.ndarray, ops: tuple[PreprocessOp, ...]) -> Prepared:
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    original_h, original_w = image.shape[:2]
    resized_h, resized_w = original_h, original_w
    for op in ops:
        if isinstance(op, Resize):
            w, h = resized_size(op, image.shape[0], image.shape[1])
            if (w, h) != (image.shape[1], image.shape[0]):
                image = cv2.resize(image, (w, h), interpolation=CV2_INTERP[op.interp])
            resized_h, resized_w = h, w
        elif isinstance(op, NormalizeImage):
            image = normalize(image, op)
        elif isinstance(op, Permute):
            image = image.transpose(2, 0, 1)
    return Prepared(
        image=np.ascontiguousarray(image, dtype=np.float32),
        scale_factor=(resized_h / original_h, resized_w / original_w),
        resized_hw=(resized_h, resized_w),
        original_hw=(original_h, original_w),
    )


def batch_inputs(items: list[Prepared], input_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Stack prepared images into the named network inputs the program asks for."""
    available = {
        "image": lambda: np.stack([p.image for p in items]).astype(np.float32, copy=False),
        "scale_factor": lambda: np.array([p.scale_factor for p in items], dtype=np.float32),
        "im_shape": lambda: np.array([p.resized_hw for p in items], dtype=np.float32),
    }
    unknown = [name for name in input_names if name not in available]
    if unknown:
        raise ValueError(f"the program asks for inputs {unknown} that sodd does not know how to feed")
    return {name: available[name]() for name in input_names}
