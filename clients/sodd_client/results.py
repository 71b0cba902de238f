"""PaddleX's result layouts, so that files written here drop into existing PaddleX tooling.

`save_to_json` output is byte-identical to PaddleX 3.7.2's for the same boxes: same keys and
order, indent 4, UTF-8, and the same number types. PaddleX clips with Python's `max(0, x)` and
`min(width, x)`, which yields the *integer* bound when a coordinate is clipped; a coordinate equal
to its bound is therefore written as an integer here too.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from sodd.v1 import detector_pb2 as pb


def _coordinate(value: float, bound: int) -> float | int:
    return bound if value == bound else value


def result_dict(response: pb.DetectResponse, input_path: str | None) -> dict:
    w, h = response.image_width, response.image_height
    return {
        "input_path": input_path,
        "page_index": None,
        "boxes": [
            {
                "cls_id": box.cls_id,
                "label": box.label,
                "score": box.score,
                "coordinate": [_coordinate(box.xmin, 0), _coordinate(box.ymin, 0),
                               _coordinate(box.xmax, w), _coordinate(box.ymax, h)],
            }
            for box in response.boxes
        ],
    }


def result_text(result: dict) -> str:
    """What PaddleX's `result.print()` shows."""
    return json.dumps({"res": result}, indent=4, ensure_ascii=False)


def json_path(target: Path, input_path: str) -> Path:
    """A directory gets `<stem>_res.json`; a path ending in .json is used as it is."""
    if target.suffix.lower() == ".json":
        return target
    return target / f"{Path(input_path).stem}_res.json"


def save_json(result: dict, target: Path) -> Path:
    path = json_path(target, result["input_path"] or "image")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=4, ensure_ascii=False)
    return path


def palette(n: int = 20) -> list[tuple[int, int, int]]:
    """n well-separated colours, alternating lightness so neighbours differ."""
    colours = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0 if i % 2 == 0 else 0.75)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def _text_colour(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    return (20, 14, 53) if luminance > 140 else (255, 255, 255)


def draw(image: Image.Image, result: dict) -> Image.Image:
    """PaddleX's drawing style: line width 0.2% of the long side, a filled label box per detection,
    font size 1.8% of the width + 2, one colour per label in order of first appearance. The font
    is the one bundled with Pillow, so nothing is downloaded."""
    image = image.convert("RGB")
    font = ImageFont.load_default(size=int(0.018 * image.width) + 2)
    thickness = max(int(max(image.size) * 0.002), 1)
    canvas = ImageDraw.Draw(image)
    colours = palette()
    label_colour: dict[str, tuple[int, int, int]] = {}
    for i, box in enumerate(result["boxes"]):
        colour = label_colour.setdefault(box["label"], colours[i % len(colours)])
        xmin, ymin, xmax, ymax = box["coordinate"]
        canvas.line([(xmin, ymin), (xmin, ymax), (xmax, ymax), (xmax, ymin), (xmin, ymin)],
                    width=thickness, fill=colour)
        text = f"{box['label']} {box['score']:.2f}"
        left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top + 4
        if ymin < th:
            canvas.rectangle([(xmin, ymin), (xmin + tw + 4, ymin + th + 1)], fill=colour)
            canvas.text((xmin + 2, ymin - 2), text, fill=_text_colour(colour), font=font)
        else:
            canvas.rectangle([(xmin, ymin - th), (xmin + tw + 4, ymin + 1)], fill=colour)
            canvas.text((xmin + 2, ymin - th - 2), text, fill=_text_colour(colour), font=font)
    return image


def save_image(image: Image.Image, result: dict, directory: Path) -> Path:
    name = Path(result["input_path"] or "image.jpg")
    suffix = name.suffix or ".jpg"
    path = directory / f"{name.stem}_res{suffix}"
    directory.mkdir(parents=True, exist_ok=True)
    draw(image, result).save(path)
    return path
