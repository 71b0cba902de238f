"""PaddleX's result objects and layouts, so that files written here drop into existing PaddleX tooling.

`DetResult` is what PaddleX 3.7.2's `predict` yields for a detection model: a dict with
`input_path`, `page_index` and `boxes`, plus `print()`, `save_to_json(save_path)`,
`save_to_img(save_path)`, `.json`, `.img` and `.str`. Both `Client.predict` (over gRPC) and
`sodd.create_model(...).predict` (in-process) yield it, and `sodd-client detect` writes through it.

`save_to_json` output is byte-identical to PaddleX's for the same boxes: same keys and order, indent
4, UTF-8, and the same number types. PaddleX clips with Python's `max(0, x)` and `min(width, x)`,
which yields the *integer* bound when a coordinate is clipped; a coordinate equal to its bound is
therefore written as an integer here too.

Drawings follow PaddleX's `draw_box`: its 20-colour palette and text colours, line width
`int(max(w, h) * 0.002)`, font size `int(0.018 * width) + 2`. With the same TrueType file the pixels
are PaddleX's; PaddleX downloads PingFang SC unless PADDLE_PDX_LOCAL_FONT_FILE_PATH names a local
file, and this module reads the same variable (or SODD_FONT_PATH, or a `font_path` argument), falling
back to the font bundled with Pillow so that nothing is downloaded. Pillow is imported only when
something is drawn: it is an optional extra of the light client.
"""

from __future__ import annotations

import copy
import json
import mimetypes
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sodd.v1 import detector_pb2 as pb

if TYPE_CHECKING:
    from PIL import Image

# PaddleX's detection palette (paddlex/inference/utils/color_map.py), as RGB.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (204, 255, 0), (0, 255, 102), (0, 102, 255), (204, 0, 255),
    (255, 77, 0), (128, 255, 0), (0, 255, 178), (0, 26, 255), (255, 0, 229),
    (255, 153, 0), (51, 255, 0), (0, 255, 255), (51, 0, 255), (255, 0, 153),
    (255, 229, 0), (0, 255, 26), (0, 178, 255), (128, 0, 255), (255, 0, 77),
)
# Palette entries whose label text PaddleX writes in white; the others get a dark blue.
_LIGHT_TEXT = frozenset({0, 3, 4, 8, 9, 13, 14, 18, 19})
_DARK = (20, 14, 53)
_WHITE = (255, 255, 255)
FONT_ENV = ("SODD_FONT_PATH", "PADDLE_PDX_LOCAL_FONT_FILE_PATH")

ImageLoader = Callable[[], "Image.Image"]


def require_pillow() -> Any:
    """PIL, or an ImportError that says how to get it: drawing is the light client's `draw` extra."""
    try:
        import PIL.Image
        import PIL.ImageDraw
        import PIL.ImageFont
    except ImportError as exc:
        raise ImportError("drawing results needs Pillow: pip install 'sodd-client[draw]' (or pillow)") from exc
    return PIL


def _coordinate(value: float, bound: int) -> float:
    return bound if value == bound else value


def box_dict(cls_id: int, label: str, score: float, xmin: float, ymin: float, xmax: float, ymax: float,
             width: int, height: int) -> dict[str, Any]:
    """One box as PaddleX writes it (`score` and coordinates are the float32 values, as Python floats)."""
    return {"cls_id": int(cls_id), "label": label, "score": float(score),
            "coordinate": [_coordinate(float(xmin), 0), _coordinate(float(ymin), 0),
                           _coordinate(float(xmax), width), _coordinate(float(ymax), height)]}


def boxes_of(response: pb.DetectResponse) -> list[dict[str, Any]]:
    """PaddleX's box dicts from a DetectResponse."""
    w, h = response.image_width, response.image_height
    return [box_dict(b.cls_id, b.label, b.score, b.xmin, b.ymin, b.xmax, b.ymax, w, h) for b in response.boxes]


def result_dict(response: pb.DetectResponse, input_path: str | None) -> dict:
    return {"input_path": input_path, "page_index": None, "boxes": boxes_of(response)}


def result_text(result: dict) -> str:
    """What PaddleX's `result.print(json_format=True)` shows."""
    return json.dumps({"res": result}, indent=4, ensure_ascii=False)


def _is_mime(path: str, prefix: str) -> bool:
    mime, _ = mimetypes.guess_type(str(path))
    return mime is not None and mime.startswith(prefix)


class DetResult(dict):
    """One image's result, as PaddleX's DetResult: `res["boxes"]`, `res.print()`, `res.save_to_json(...)`.

    `image` loads the input's pixels (RGB) for drawing; it is called only by `.img` / `save_to_img`.
    Extra PaddleX-style attributes: `model`, `version`, `device` and `response` (the daemon's
    DetectResponse, over gRPC) say who answered.
    """

    def __init__(self, data: dict, image: ImageLoader | None = None, *, font_path: str | None = None,
                 model: str = "", version: int = 0, device: str = "",
                 response: pb.DetectResponse | None = None) -> None:
        super().__init__(data)
        self._image = image
        self._font_path = font_path
        self._random_name: str | None = None
        self.model, self.version, self.device, self.response = model, version, device, response

    @classmethod
    def from_response(cls, response: pb.DetectResponse, input_path: str | None,
                      image: ImageLoader | None = None, *, font_path: str | None = None) -> DetResult:
        return cls(result_dict(response, input_path), image, font_path=font_path, model=response.model,
                   version=response.version, device=response.device, response=response)

    # -- PaddleX's StrMixin / JsonMixin -------------------------------------------------------

    def _plain(self) -> dict:
        return copy.deepcopy(dict(self))

    @property
    def json(self) -> dict[str, dict]:
        return {"res": self._plain()}

    @property
    def str(self) -> dict[str, dict]:
        return {"res": self._plain()}

    def _to_str(self, json_format: bool = False, indent: int = 4, ensure_ascii: bool = False) -> str:
        if json_format:
            return json.dumps({"res": self._plain()}, indent=indent, ensure_ascii=ensure_ascii)
        return str({"res": self._plain()})

    def print(self, json_format: bool = False, indent: int = 4, ensure_ascii: bool = False) -> None:  # noqa: A003
        print(self._to_str(json_format, indent, ensure_ascii), flush=True)

    def _input_name(self) -> str:
        """The file name results are saved under; PaddleX invents one from the time for arrays."""
        path = self.get("input_path")
        if path is None:
            if self._random_name is None:
                self._random_name = f"{int(time.time())}_{random.randint(1000, 9999)}"
            return self._random_name
        name = Path(path[0] if isinstance(path, list) else path).name
        page = self.get("page_index")
        if page is not None:  # PaddleX names the pages of a TIFF `<stem>_<page><suffix>`
            name = f"{Path(name).stem}_{page}{Path(name).suffix}"
        return name

    def save_to_json(self, save_path: Any, indent: int = 4, ensure_ascii: bool = False) -> Path:
        """A directory gets `<stem>_res.json`; a path ending in .json is written as it is."""
        if _is_mime(str(save_path), "application/json"):
            path = Path(save_path)
        else:
            path = Path(save_path) / f"{Path(self._input_name()).stem}_res.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self._plain(), f, indent=indent, ensure_ascii=ensure_ascii)
        return path

    # -- PaddleX's ImgMixin -------------------------------------------------------------------

    @property
    def img(self) -> dict[str, Image.Image]:
        if self._image is None:
            raise ValueError("this result has no input image to draw on")
        require_pillow()
        return {"res": draw(self._image(), self["boxes"], self._font_path)}

    def save_to_img(self, save_path: Any) -> Path:
        """A directory gets `<stem>_res<input suffix>` (.png when the input is not an image file)."""
        if _is_mime(str(save_path), "image/"):
            path = Path(save_path)
        else:
            name = Path(self._input_name())
            suffix = name.suffix if _is_mime(name.name, "image/") else ".png"
            path = Path(save_path) / f"{name.stem}_res{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = self.img["res"]
        # As PaddleX's Pillow writer: the format follows the file name, RGBA forces PNG.
        image.save(path, format="PNG" if len(image.getbands()) == 4 else None)
        return path

    def save_all(self, save_path: Any) -> None:
        self.save_to_json(save_path)
        self.save_to_img(save_path)


def save_json(result: dict, target: Path) -> Path:
    return DetResult(result).save_to_json(target)


def font_for(size: int, font_path: str | None = None) -> Any:
    ImageFont = require_pillow().ImageFont  # noqa: N806 - the module's usual name

    path = font_path or next((os.environ[k] for k in FONT_ENV if os.environ.get(k)), None)
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"font file {path} does not exist")
        return ImageFont.truetype(path, size, encoding="utf-8")
    return ImageFont.load_default(size=size)


def draw(image: Image.Image, boxes: Any, font_path: str | None = None) -> Image.Image:
    """PaddleX's `draw_box` on a copy of `image` (RGB); `boxes` is the box list or a result dict."""
    ImageDraw = require_pillow().ImageDraw  # noqa: N806

    if isinstance(boxes, dict):
        boxes = boxes["boxes"]
    image = image.convert("RGB")
    font = font_for(int(0.018 * int(image.width)) + 2, font_path)
    thickness = int(max(image.size) * 0.002)
    canvas = ImageDraw.Draw(image)
    colour_of: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {}
    for i, box in enumerate(boxes):
        if box["label"] not in colour_of:
            index = i % len(PALETTE)
            colour_of[box["label"]] = (PALETTE[index], _WHITE if index in _LIGHT_TEXT else _DARK)
        colour, text_colour = colour_of[box["label"]]
        xmin, ymin, xmax, ymax = box["coordinate"]
        canvas.line([(xmin, ymin), (xmin, ymax), (xmax, ymax), (xmax, ymin), (xmin, ymin)],
                    width=thickness, fill=colour)
        text = "{} {:.2f}".format(box["label"], box["score"])
        left, top, right, bottom = canvas.textbbox((0, 0), text, font)
        tw, th = right - left, bottom - top + 4
        if ymin < th:
            canvas.rectangle([(xmin, ymin), (xmin + tw + 4, ymin + th + 1)], fill=colour)
            canvas.text((xmin + 2, ymin - 2), text, fill=text_colour, font=font)
        else:
            canvas.rectangle([(xmin, ymin - th), (xmin + tw + 4, ymin + 1)], fill=colour)
            canvas.text((xmin + 2, ymin - th - 2), text, fill=text_colour, font=font)
    return image


def save_image(image: Image.Image, result: dict, directory: Path, font_path: str | None = None) -> Path:
    return DetResult(result, lambda: image, font_path=font_path).save_to_img(directory)
