"""An encoded image's format and size, read from its header before any pixel is decoded.

Admission needs every image's size before it spends memory on it. OpenCV decodes many formats
(Radiance HDR, PAM, OpenEXR, JPEG 2000, Sun raster ...) whose headers Pillow cannot read, so a size
check that trusts Pillow "when it knows the format" lets those through to a full decode. Instead
the daemon accepts an explicit list of formats: each is recognised by its signature (the first
bytes, as OpenCV recognises it, so both agree on which decoder runs) and its size is read from the
header by Pillow. Anything else is refused with INVALID_ARGUMENT before decoding.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from sodd.errors import InvalidArgument

# Signature -> format, as OpenCV's decoders check them (all start at byte 0 and are disjoint).
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"P1", "PNM"), (b"P2", "PNM"), (b"P3", "PNM"), (b"P4", "PNM"), (b"P5", "PNM"), (b"P6", "PNM"),
)
# Pillow's format names for each accepted format: the header must be what the signature says.
_PILLOW_FORMATS = {"JPEG": {"JPEG", "MPO"}, "PNG": {"PNG"}, "BMP": {"BMP", "DIB"}, "TIFF": {"TIFF"},
                   "PNM": {"PPM"}, "WEBP": {"WEBP"}}
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "PNM")
# TIFF may declare many samples of up to 64 bits per pixel; OpenCV's IMREAD_COLOR keeps at most four
# 8- or 16-bit samples per pixel on the way to BGR, so the pixel budget bounds memory only for these.
_TIFF_MODES = {"1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LA", "I;16", "I;16B", "I;16L", "I;16N"}


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_format(data: bytes) -> str | None:
    """The accepted format whose signature `data` starts with, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def read_header(data: bytes, field: str = "image.encoded") -> ImageHeader:
    """Format and size from the header alone; InvalidArgument naming `field` for anything else."""
    if not data:
        raise InvalidArgument(f"{field} is empty")
    kind = sniff_format(data)
    if kind is None:
        raise InvalidArgument(f"{field}: not an accepted image format (accepted: {', '.join(ACCEPTED_FORMATS)}); "
                              "its size cannot be checked before decoding")
    try:
        # Image.open reads the header only; pixels are never loaded here.
        with Image.open(io.BytesIO(data), formats=sorted(_PILLOW_FORMATS[kind])) as img:
            width, height = img.size
            mode = img.mode
    except Image.DecompressionBombError as exc:
        raise InvalidArgument(f"{field}: a {kind} image of more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:g} "
                              "megapixels, above any size the daemon decodes") from exc
    except Exception as exc:  # noqa: BLE001 - any header Pillow cannot read is refused
        raise InvalidArgument(f"{field}: a {kind} image whose header cannot be read "
                              f"({type(exc).__name__})") from exc
    if width <= 0 or height <= 0:
        raise InvalidArgument(f"{field}: image header declares a zero size {width}x{height}")
    if kind == "TIFF" and mode not in _TIFF_MODES:
        raise InvalidArgument(f"{field}: TIFF images of mode {mode} are not accepted")
    return ImageHeader(kind, width, height)
