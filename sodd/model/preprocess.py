"""Preprocessing from inference.yml, step for step as PaddleX 3.7.2 does it.

Every step matters for exact parity: RGB conversion first, `cv2.resize` skipped when the size
already matches, scale factors as new/original per axis, normalisation as float32 multiply then
add, and a float32 batch.

The usual recipe (Resize, NormalizeImage, Permute) takes a shorter road to the same bytes: resizing
works on each channel alone, so the BGR to RGB swap can wait until the end, and normalising a
uint8 pixel depends only on its value and channel, so a 256-entry table per channel computed with
PaddleX's own float32 steps gives every result exactly. That saves a third of a light model's
preprocessing (1.7 -> 0.65 ms for a 416x416 input).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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


@lru_cache(maxsize=64)
def bgr_normalize_table(op: NormalizeImage) -> np.ndarray:
    """1x256x3 float32: entry [0, v, c] is BGR channel c's value v normalised as `normalize` does
    it for the matching RGB channel, for `cv2.LUT`."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[np.newaxis, :, np.newaxis], 3, axis=2)
    return np.ascontiguousarray(normalize(levels, op)[:, :, ::-1])


def _resize(image: np.ndarray, op: Resize) -> np.ndarray:
    w, h = resized_size(op, image.shape[0], image.shape[1])
    if (w, h) == (image.shape[1], image.shape[0]):
        return image
    return cv2.resize(image, (w, h), interpolation=CV2_INTERP[op.interp])


def _prepare_by_table(bgr: np.ndarray, ops: tuple[PreprocessOp, ...]) -> Prepared | None:
    """The recipe [Resize], NormalizeImage, Permute on a uint8 BGR image by table lookup: the
    same float32 CHW RGB bytes as `prepare_step_by_step`. None for any other recipe."""
    if len(ops) < 2 or bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        return None
    *resizes, norm, permute = ops
    if (len(resizes) > 1 or not all(isinstance(op, Resize) for op in resizes)
            or not isinstance(norm, NormalizeImage) or not isinstance(permute, Permute)):
        return None
    image = bgr
    if resizes:
        image = _resize(bgr, resizes[0])
    normalised = cv2.LUT(image, bgr_normalize_table(norm))
    return _prepared(np.ascontiguousarray(normalised.transpose(2, 0, 1)[::-1]), bgr, image)


def prepare_step_by_step(bgr: np.ndarray, ops: tuple[PreprocessOp, ...]) -> Prepared:
    """PaddleX's order, one operation after another: any recipe."""
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    resized = image
    for op in ops:
        if isinstance(op, Resize):
            image = resized = _resize(image, op)
        elif isinstance(op, NormalizeImage):
            image = normalize(image, op)
        elif isinstance(op, Permute):
            image = image.transpose(2, 0, 1)
    return _prepared(np.ascontiguousarray(image, dtype=np.float32), bgr, resized)


def prepare(bgr: np.ndarray, ops: tuple[PreprocessOp, ...]) -> Prepared:
    prepared = _prepare_by_table(bgr, ops)
    return prepared if prepared is not None else prepare_step_by_step(bgr, ops)


def _prepared(image: np.ndarray, original: np.ndarray, resized: np.ndarray) -> Prepared:
    original_h, original_w = original.shape[:2]
    resized_h, resized_w = resized.shape[:2]
    return Prepared(
        image=image,
        scale_factor=(resized_h / original_h, resized_w / original_w),
        resized_hw=(resized_h, resized_w),
        original_hw=(original_h, original_w),
    )


def batch_inputs(items: list[Prepared], input_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Stack prepared images into the named network inputs the program asks for."""
    available = {
        # One image needs no copy: the predictor copies its input anyway.
        "image": lambda: (items[0].image[np.newaxis] if len(items) == 1 else np.stack([p.image for p in items]))
        .astype(np.float32, copy=False),
        "scale_factor": lambda: np.array([p.scale_factor for p in items], dtype=np.float32),
        "im_shape": lambda: np.array([p.resized_hw for p in items], dtype=np.float32),
    }
    unknown = [name for name in input_names if name not in available]
    if unknown:
        raise ValueError(f"the program asks for inputs {unknown} that sodd does not know how to feed")
    return {name: available[name]() for name in input_names}
