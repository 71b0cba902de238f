"""Sample drawings for the check: ground-truth boxes and labels on the first images of a split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

# A 20-colour palette (RGB), one colour per category in order of frequency on the image.
PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]  # fmt: skip


def draw_annotations(
    image_file: Path, annotations: list[dict[str, Any]], names: dict[int, str], out_file: Path
) -> None:
    with Image.open(image_file) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    draw = ImageDraw.Draw(image)
    line = max(1, int(max(image.size) * 0.002))
    font = ImageFont.load_default(size=max(10, int(0.012 * image.size[0]) + 2))

    frequency: dict[int, int] = {}
    for ann in annotations:
        frequency[ann["category_id"]] = frequency.get(ann["category_id"], 0) + 1
    ranked = sorted(frequency, key=lambda c: frequency[c], reverse=True)
    colour = {cat_id: PALETTE[i % len(PALETTE)] for i, cat_id in enumerate(ranked)}

    for ann in annotations:
        x, y, w, h = (float(v) for v in ann["bbox"])
        c = colour[ann["category_id"]]
        draw.rectangle([x, y, x + w, y + h], outline=c, width=line)
        text = names.get(ann["category_id"], str(ann["category_id"]))
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        ty = y - (bottom - top) - 2 if y - (bottom - top) - 2 >= 0 else y
        box = draw.textbbox((x, ty), text, font=font)
        draw.rectangle(box, fill=c)
        draw.text((x, ty), text, fill=(255, 255, 255) if sum(c) < 400 else (20, 14, 53), font=font)

    out_file.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_file)
