"""Turning request bytes into a BGR uint8 image, refusing oversized images before decoding them.

PaddleX decodes with `cv2.imdecode(IMREAD_COLOR)`; so do we, so that pixels match. Pillow only
reads the header first: a 100000x100000 PNG is refused without allocating its pixels.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from sodd.errors import InvalidArgument

RAW_CHANNEL_CONVERSIONS = {1: cv2.COLOR_GRAY2BGR, 4: cv2.COLOR_BGRA2BGR}
# Pillow only reads headers here and must report any size; our own megapixel limit decides.
Image.MAX_IMAGE_PIXELS = None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file header when Pillow knows the format, else None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # noqa: BLE001 - any header Pillow cannot read is left to OpenCV
        return None


def _check_pixels(width: int, height: int, max_pixels: int, field: str) -> None:
    if width * height > max_pixels:
        raise InvalidArgument(
            f"{field}: image of {width}x{height} pixels is above the limit of "
            f"{max_pixels / 1e6:g} megapixels"
        )


def decode_encoded(data: bytes, max_pixels: int, field: str = "image.encoded") -> np.ndarray:
    if not data:
        raise InvalidArgument(f"{field} is empty")
    size = header_size(data)
    if size is not None:
        if size[0] <= 0 or size[1] <= 0:
            raise InvalidArgument(f"{field}: image header declares a zero size {size[0]}x{size[1]}")
        _check_pixels(size[0], size[1], max_pixels, field)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. OpenCV's own pixel limit on a format Pillow cannot read
        raise InvalidArgument(f"{field}: OpenCV refused to decode the image: {exc.err}") from exc
    if image is None or image.size == 0:
        raise InvalidArgument(f"{field}: {len(data)} bytes that OpenCV cannot decode as an image")
    _check_pixels(image.shape[1], image.shape[0], max_pixels, field)
    return image


def decode_raw(height: int, width: int, channels: int, data: bytes, max_pixels: int,
               field: str = "image.raw") -> np.ndarray:
    if height == 0 or width == 0:
        raise InvalidArgument(f"{field}: height and width must be positive, got {height}x{width}")
    if channels not in (1, 3, 4):
        raise InvalidArgument(f"{field}.channels must be 1, 3 or 4, got {channels}")
    _check_pixels(width, height, max_pixels, field)
    expected = height * width * channels
    if len(data) != expected:
        raise InvalidArgument(
            f"{field}.data holds {len(data)} bytes but height*width*channels = "
            f"{height}*{width}*{channels} = {expected}"
        )
    pixels = np.frombuffer(data, np.uint8).reshape(height, width, channels)
    if channels == 3:
        return pixels
    return cv2.cvtColor(pixels, RAW_CHANNEL_CONVERSIONS[channels])
