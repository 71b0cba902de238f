"""The images a benchmark sends: the given files as they are, or resized to each requested size.

Every system gets the same encoded bytes (files for PaddleX's predict loop), so decoding is part
of every measured path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

JPEG_QUALITY = 95


@dataclass(frozen=True)
class ImageSet:
    label: str  # "WxH", or the sizes of the files as given joined by "+"
    encoded: tuple[bytes, ...]
    paths: tuple[Path, ...]  # the same bytes on disk
    sizes: tuple[tuple[int, int], ...]  # (w, h) per image


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) <= 0 or int(match.group(2)) <= 0:
        raise ValueError(f"image size {text!r} is not WIDTHxHEIGHT, e.g. 1920x1080")
    return int(match.group(1)), int(match.group(2))


def _read(path: Path) -> np.ndarray:
    image = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: OpenCV cannot decode this file as an image")
    return image


def _encode(image: np.ndarray, ext: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext in (".jpg", ".jpeg") else []
    ok, buffer = cv2.imencode(ext, image, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape[1]}x{image.shape[0]} image as {ext}")
    return buffer.tobytes()


def as_given(paths: Sequence[Path]) -> ImageSet:
    sizes = []
    for path in paths:
        h, w = _read(path).shape[:2]
        sizes.append((w, h))
    label = "+".join(sorted({f"{w}x{h}" for w, h in sizes}))
    return ImageSet(label, tuple(p.read_bytes() for p in paths), tuple(paths), tuple(sizes))


def resized(paths: Sequence[Path], size: tuple[int, int], workdir: Path) -> ImageSet:
    """Each file resized to `size` (w, h) regardless of its aspect ratio, written under `workdir`."""
    w, h = size
    out_dir = workdir / f"{w}x{h}"
    out_dir.mkdir(parents=True, exist_ok=True)
    encoded, written = [], []
    for i, path in enumerate(paths):
        image = _read(path)
        interp = cv2.INTER_AREA if w * h < image.shape[0] * image.shape[1] else cv2.INTER_CUBIC
        # Keep the file's format so that decoding costs what it would for that camera or archive.
        ext = path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp") else ".jpg"
        data = _encode(cv2.resize(image, (w, h), interpolation=interp), ext)
        target = out_dir / f"{i}_{path.stem}{ext}"
        target.write_bytes(data)
        encoded.append(data)
        written.append(target)
    return ImageSet(f"{w}x{h}", tuple(encoded), tuple(written), tuple((w, h) for _ in paths))
