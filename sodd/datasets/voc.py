"""One Pascal VOC xml file, read by PaddleX's rules."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from PIL import Image

from sodd.datasets.errors import ConvertFailedError
from sodd.datasets.layout import IMAGES_DIR, relative

# PaddleX looks for the image under images/ with these extensions, by the xml's `filename` stem
# first and the xml file's own stem second.
IMAGE_EXTENSIONS = ("jpg", "png", "jpeg", "JPG", "PNG", "JPEG")


def read_voc(xml_file: Path, root: Path, notes: list[str]) -> tuple[dict[str, Any], list] | None:
    shown = relative(xml_file, root)
    try:
        tree = ET.parse(xml_file).getroot()
    except ET.ParseError as exc:
        raise ConvertFailedError(f"{shown} is not valid XML: {exc}") from exc
    declared = tree.findtext("filename") or ""
    file_name = _match_image(root, declared.split(".")[0], xml_file.name.split(".")[0])
    if file_name is None:
        notes.append(f"{shown}: no image for it under {IMAGES_DIR}/ ({declared or 'no filename'}); skipped")
        return None

    size = _size(tree)
    if size is None:
        # Some labelling tools leave <size> out or write 0: the image itself knows.
        with Image.open(root / IMAGES_DIR / file_name) as img:
            size = (float(img.width), float(img.height))
    width, height = size

    objects = []
    for i, obj in enumerate(tree.findall("object")):
        box = obj.find("bndbox")
        if box is None:
            continue  # PaddleX skips objects without a box
        label = obj.findtext("name")
        if not label:
            raise ConvertFailedError(f"{shown}: object {i} has no <name>")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as exc:
            raise ConvertFailedError(f"{shown}: object {i} ('{label}') has a missing or bad coordinate") from exc
        xmin, xmax = sorted((xmin, xmax))
        ymin, ymax = sorted((ymin, ymax))
        objects.append((label, [xmin, ymin, xmax - xmin, ymax - ymin]))
    return {"file_name": file_name, "width": width, "height": height}, objects


def _match_image(root: Path, *stems: str) -> str | None:
    for ext in IMAGE_EXTENSIONS:
        for stem in stems:
            if stem and (root / IMAGES_DIR / f"{stem}.{ext}").is_file():
                return f"{stem}.{ext}"
    return None


def _size(tree: ET.Element) -> tuple[float, float] | None:
    size = tree.find("size")
    if size is None:
        return None
    try:
        width, height = float(size.findtext("width") or 0), float(size.findtext("height") or 0)
    except ValueError:
        return None
    return (width, height) if width > 0 and height > 0 else None
