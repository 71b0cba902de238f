"""What PaddleX's `predict` accepts, as a list of images: a file, a directory (walked recursively, sorted,
image suffixes only, as PaddleX does), an http(s) URL (fetched here: the daemon never fetches), a numpy
array (BGR, as PaddleX takes it), encoded bytes, or a list of any of these."""

from __future__ import annotations

import io
import os
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# PaddleX's ImageBatchSampler.IMG_SUFFIX (PDFs are not images here).
IMAGE_SUFFIXES = frozenset({"bmp", "dib", "jpeg", "jpg", "png", "webp", "pbm", "pgm", "ppm", "pnm", "sr", "ras",
                            "tiff", "tif"})
TIFF_SUFFIXES = frozenset({"tiff", "tif"})
URL_FETCH_LIMIT = 256 * 1024 * 1024


@dataclass(frozen=True)
class Input:
    """One image to detect on. `data` is encoded bytes or a BGR array; `path` is what PaddleX writes
    into `input_path` (None for arrays and bytes)."""

    path: str | None
    data: Any
    page_index: int | None = None

    @property
    def is_array(self) -> bool:
        return not isinstance(self.data, (bytes, bytearray, memoryview))

    def rgb_image(self) -> Any:
        """The pixels as a PIL RGB image, for drawings (Pillow is the client's `draw` extra)."""
        from PIL import Image

        if self.is_array:
            pixels = self.data
            if pixels.ndim == 3 and pixels.shape[2] == 4:
                pixels = pixels[:, :, :3]
            return Image.fromarray(pixels[:, :, ::-1] if pixels.ndim == 3 else pixels).convert("RGB")
        with Image.open(io.BytesIO(bytes(self.data))) as image:
            return image.convert("RGB")


def _suffix(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def fetch(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - the caller asked for this URL
        data = r.read(URL_FETCH_LIMIT + 1)
    if len(data) > URL_FETCH_LIMIT:
        raise ValueError(f"{url} is larger than {URL_FETCH_LIMIT // (1024 * 1024)} MiB")
    return data


def directory_images(root: Path) -> list[str]:
    files = [os.path.join(d, f) for d, _, names in os.walk(root) for f in names if _suffix(f) in IMAGE_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"no image files in {root}")
    return sorted(files)


def iter_inputs(items: Any) -> Iterator[Input]:
    """Each image of `items` in order; files are read when reached, so a large directory streams."""
    if not isinstance(items, (list, tuple)):
        items = [items]
    for item in items:
        if isinstance(item, (bytes, bytearray, memoryview)):
            yield Input(None, bytes(item))
        elif hasattr(item, "shape") and hasattr(item, "dtype"):
            yield Input(None, item)
        elif isinstance(item, (str, os.PathLike)):
            text = os.fspath(item)
            if text.startswith(("http://", "https://")):
                yield Input(text, fetch(text))
            elif os.path.isdir(text):
                yield from iter_inputs(directory_images(Path(text)))
            elif os.path.isfile(text):
                suffix = _suffix(text)
                if suffix not in IMAGE_SUFFIXES:
                    raise ValueError(f"{text}: not an image file PaddleX reads (suffixes: "
                                     f"{', '.join(sorted(IMAGE_SUFFIXES))})")
                # PaddleX reads a TIFF as pages; its first page is what the daemon decodes.
                yield Input(text, Path(text).read_bytes(), 0 if suffix in TIFF_SUFFIXES else None)
            else:
                raise FileNotFoundError(f"input {text} is neither a file, a directory nor an http(s) URL")
        else:
            raise TypeError(f"cannot predict on {type(item).__name__}: give a path, a directory, a URL, "
                            "a numpy array, encoded bytes or a list of them")


def batches(items: Any, batch_size: int) -> Iterator[list[Input]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch: list[Input] = []
    for item in iter_inputs(items):
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def expand(items: Sequence[Any]) -> list[Input]:
    return list(iter_inputs(list(items)))
