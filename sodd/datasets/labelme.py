"""One LabelMe json file, read by PaddleX's rules (rectangles only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sodd.datasets.errors import ConvertFailedError
from sodd.datasets.layout import relative


def read_labelme(json_file: Path, root: Path, notes: list[str]) -> tuple[dict[str, Any], list] | None:
    shown = relative(json_file, root)
    if json_file.suffix != ".json":
        notes.append(f"{shown} is not a .json file; skipped")
        return None
    try:
        data = json.loads(json_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvertFailedError(f"{shown} is not valid JSON: {exc}") from exc
    try:
        image = {
            # PaddleX keeps only the base name: images live directly under images/.
            "file_name": str(data["imagePath"]).replace("\\", "/").split("/")[-1],
            "width": data["imageWidth"],
            "height": data["imageHeight"],
        }
        shapes = data["shapes"]
    except (KeyError, TypeError) as exc:
        raise ConvertFailedError(f"{shown} lacks imagePath, imageWidth, imageHeight or shapes") from exc

    objects = []
    for i, shape in enumerate(shapes):
        kind = shape.get("shape_type")
        if kind != "rectangle":
            raise ConvertFailedError(
                f"{shown}: shapes[{i}] ('{shape.get('label')}') is a {kind!r}; only rectangles are supported"
            )
        try:
            (x1, y1), (x2, y2) = shape["points"]
            x1, x2 = sorted((float(x1), float(x2)))
            y1, y2 = sorted((float(y1), float(y2)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConvertFailedError(f"{shown}: shapes[{i}] needs two corner points") from exc
        objects.append((str(shape["label"]), [x1, y1, x2 - x1, y2 - y1]))
    return image, objects
