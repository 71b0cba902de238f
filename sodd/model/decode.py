"""Turning request bytes into a BGR uint8 image, refusing oversized images before decoding them.

PaddleX decodes with `cv2.imdecode(IMREAD_COLOR)`; so do we, so that pixels match. The size comes
from the header first (`sodd.model.imageinfo`): a 100000x100000 PNG is refused without allocating
its pixels, and formats whose header cannot be read are refused before OpenCV sees them.
"""

from __future__ import annotations

import cv2
import numpy as np

from sodd.errors import InvalidArgument
from sodd.model.imageinfo import ImageHeader, read_header

RAW_CHANNEL_CONVERSIONS = {1: cv2.COLOR_GRAY2BGR, 4: cv2.COLOR_BGRA2BGR}


def check_pixels(width: int, height: int, max_pixels: int, field: str) -> None:
    if width * height > max_pixels:
        raise InvalidArgument(
            f"{field}: image of {width}x{height} pixels is above the limit of "
            f"{max_pixels / 1e6:g} megapixels (max_image_megapixels)"
        )


def decode_encoded(data: bytes, max_pixels: int, field: str = "image.encoded",
                   header: ImageHeader | None = None) -> np.ndarray:
    """Decode after checking the header's size; pass `header` when admission has read it already."""
    header = header or read_header(data, field)
    check_pixels(header.width, header.height, max_pixels, field)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. a header that lies about its size
        raise InvalidArgument(f"{field}: OpenCV refused to decode the image: {exc.err}") from exc
    if image is None or image.size == 0:
        raise InvalidArgument(f"{field}: {len(data)} bytes that OpenCV cannot decode as a {header.format} image")
    if sorted(image.shape[:2]) != sorted((header.width, header.height)):
        # Admission counted the header's size; an image that decodes to another one is not served.
        # (Sides may swap: OpenCV applies a JPEG's EXIF orientation.)
        raise InvalidArgument(f"{field}: the {header.format} header says {header.width}x{header.height} but the "
                              f"image decodes to {image.shape[1]}x{image.shape[0]}")
    return image


def check_raw(height: int, width: int, channels: int, size: int, max_pixels: int, field: str = "image.raw") -> None:
    """Everything about raw pixels that can be checked without touching them."""
    if height == 0 or width == 0:
        raise InvalidArgument(f"{field}: height and width must be positive, got {height}x{width}")
    if channels not in (1, 3, 4):
        raise InvalidArgument(f"{field}.channels must be 1, 3 or 4, got {channels}")
    check_pixels(width, height, max_pixels, field)
    expected = height * width * channels
    if size != expected:
        raise InvalidArgument(
            f"{field}.data holds {size} bytes but height*width*channels = "
            f"{height}*{width}*{channels} = {expected}"
        )


def to_bgr(pixels: np.ndarray) -> np.ndarray:
    """uint8 HxW or HxWxC pixels (C 1, 3 or 4: grey, BGR, BGRA) as HxWx3 BGR; BGR is not copied."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    channels = pixels.shape[2]
    return pixels if channels == 3 else cv2.cvtColor(pixels, RAW_CHANNEL_CONVERSIONS[channels])


def decode_raw(height: int, width: int, channels: int, data: bytes, max_pixels: int,
               field: str = "image.raw") -> np.ndarray:
    check_raw(height, width, channels, len(data), max_pixels, field)
    return to_bgr(np.frombuffer(data, np.uint8).reshape(height, width, channels))
