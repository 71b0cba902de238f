"""Synthetic small-object scenes: six shape classes on cluttered, textured backgrounds.

Recipe (every draw comes from `numpy.random.default_rng([seed, split, index])`, so an image depends
only on the seed, its split and its index):
- background: a two-colour gradient plus multi-scale value noise, then clutter that is not any
  class: irregular polygons, thin line segments and elongated ellipses, some of them outlines;
- objects: 6..28 per image, size log-uniform in [min_size, max_size] px (defaults 7..44, so about
  79% have both sides under 32 px), random colour kept at least 45 grey levels away from the local background,
  rotation, aspect jitter and a shaded texture;
- occlusion: objects and late clutter may cover earlier objects; an object stays annotated while
  at least `min_visible` of it is visible, with its full (amodal) box;
- photometrics: a smooth illumination field (0.55..1.35 gain), gamma, optional Gaussian blur
  (sigma up to 1.3), sensor noise and JPEG compression at quality 70..95.
Boxes are the tight bounds of each drawn shape, in COCO `[x, y, w, h]` pixels.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

CLASSES = ["disc", "square", "triangle", "cross", "ring", "star"]


@dataclass(frozen=True)
class SynthConfig:
    image_size: tuple[int, int] = (320, 320)  # (h, w)
    min_objects: int = 6
    max_objects: int = 28
    min_size: float = 7.0
    max_size: float = 44.0
    min_visible: float = 0.45
    clutter: int = 40
    blur_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (70, 95)


def _value_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    for cells, amp in ((4, 1.0), (12, 0.5), (40, 0.3), (110, 0.15)):
        small = rng.standard_normal((cells, cells)).astype(np.float32)
        out += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return out / 1.3


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0, c1 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    if rng.random() < 0.5:
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = c0 * (1 - t) + c1 * t
    texture = _value_noise(rng, h, w)[..., None] * rng.uniform(10, 40)
    tint = rng.uniform(0.6, 1.4, 3)
    return np.broadcast_to(img + texture * tint, (h, w, 3)).astype(np.float32)


def _regular_points(n: int, radius_fn, angle: float) -> np.ndarray:
    a = angle + np.arange(n) * 2 * math.pi / n
    r = np.array([radius_fn(i) for i in range(n)])
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _shape_mask(cls: str, size: float, rng: np.random.Generator) -> np.ndarray:
    """A binary mask of the shape in its own square canvas (side ~ size * 1.5)."""
    side = int(math.ceil(size * 1.6)) + 4
    m = np.zeros((side, side), np.uint8)
    c = np.array([side / 2, side / 2])
    r = size / 2
    aspect = rng.uniform(0.8, 1.25)
    angle = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

    def poly(points: np.ndarray) -> None:
        pts = (points * [aspect, 1 / aspect]) @ rot.T + c
        cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)

    if cls == "disc":
        cv2.ellipse(m, (int(c[0]), int(c[1])), (max(int(r * aspect), 2), max(int(r / aspect), 2)),
                    math.degrees(angle), 0, 360, 1, -1)
    elif cls == "ring":
        cv2.ellipse(m, (int(c[0]), int(c[1])), (max(int(r), 3), max(int(r), 3)), 0, 0, 360, 1, -1)
        inner = max(int(r * rng.uniform(0.4, 0.6)), 1)
        cv2.circle(m, (int(c[0]), int(c[1])), inner, 0, -1)
    elif cls == "square":
        poly(np.array([[-r, -r], [r, -r], [r, r], [-r, r]]) * 0.85)
    elif cls == "triangle":
        poly(_regular_points(3, lambda i: r, angle=0.0))
    elif cls == "cross":
        t = r * rng.uniform(0.3, 0.42)
        poly(np.array([[-r, -t], [r, -t], [r, t], [-r, t]]))
        poly(np.array([[-t, -r], [t, -r], [t, r], [-t, r]]))
    elif cls == "star":
        poly(_regular_points(10, lambda i: r if i % 2 == 0 else r * 0.45, angle=0.0))
    else:
        raise ValueError(cls)
    return m


def _clutter(img: np.ndarray, owner: np.ndarray, rng: np.random.Generator, n: int) -> None:
    """Draw n non-class distractors onto img (and mark them as occluders in owner)."""
    h, w = owner.shape
    for _ in range(n):
        color = tuple(float(v) for v in rng.uniform(0, 255, 3))
        kind = rng.integers(0, 3)
        layer = np.zeros((h, w), np.uint8)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        if kind == 0:  # irregular polygon
            k = int(rng.integers(5, 9))
            a = np.sort(rng.uniform(0, 2 * math.pi, k))
            rr = rng.uniform(4, 30) * rng.uniform(0.3, 1.0, k)
            pts = np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1).astype(np.int32)
            if rng.random() < 0.3:
                cv2.polylines(layer, [pts], True, 1, int(rng.integers(1, 3)))
            else:
                cv2.fillPoly(layer, [pts], 1)
        elif kind == 1:  # line segment
            ln, a = rng.uniform(15, 120), rng.uniform(0, math.pi)
            p1 = (int(cx), int(cy))
            p2 = (int(cx + ln * math.cos(a)), int(cy + ln * math.sin(a)))
            cv2.line(layer, p1, p2, 1, int(rng.integers(1, 4)))
        else:  # elongated ellipse
            ax = (int(rng.uniform(8, 40)), int(rng.uniform(2, 6)))
            cv2.ellipse(layer, (int(cx), int(cy)), ax, rng.uniform(0, 180), 0, 360, 1,
                        -1 if rng.random() < 0.7 else 1)
        sel = layer.astype(bool)
        img[sel] = color
        owner[sel] = -1


def render_image(rng: np.random.Generator, cfg: SynthConfig) -> tuple[np.ndarray, list[dict]]:
    """One scene: BGR uint8 image and its annotations [{category (index), bbox [x, y, w, h]}]."""
    h, w = cfg.image_size
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, np.int32)
    _clutter(img, owner, rng, int(cfg.clutter * rng.uniform(0.4, 1.0)))
    objects: list[dict] = []
    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    lum = img.mean(axis=2)
    for i in range(n_obj):
        cls = int(rng.integers(0, len(CLASSES)))
        size = math.exp(rng.uniform(math.log(cfg.min_size), math.log(cfg.max_size)))
        m = _shape_mask(CLASSES[cls], size, rng)
        side = m.shape[0]
        x0 = int(rng.integers(-side // 4, w - 3 * side // 4))
        y0 = int(rng.integers(-side // 4, h - 3 * side // 4))
        full = np.zeros((h, w), bool)
        xs0, ys0 = max(x0, 0), max(y0, 0)
        xs1, ys1 = min(x0 + side, w), min(y0 + side, h)
        full[ys0:ys1, xs0:xs1] = m[ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0].astype(bool)
        ys, xs = np.nonzero(full)
        if len(xs) < 12:
            continue
        local = float(lum[full].mean())
        for _ in range(8):
            color = rng.uniform(0, 255, 3)
            if abs(float(color.mean()) - local) >= 45:
                break
        else:
            color = np.full(3, 255.0 if local < 128 else 0.0)
        shade = 1 + 0.15 * _value_noise(rng, ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        img[ys, xs] = color * shade[ys - ys.min(), xs - xs.min(), None]
        owner[full] = i
        objects.append({"id": i, "category": cls, "area": len(xs),
                        "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                 float(ys.max() - ys.min() + 1)]})
    # A few distractors on top occlude some objects.
    _clutter(img, owner, rng, int(rng.integers(0, 8)))
    visible = np.bincount(owner[owner >= 0].ravel(), minlength=n_obj)
    annotations = [
        {"category": o["category"], "bbox": o["bbox"]}
        for o in objects if visible[o["id"]] >= cfg.min_visible * o["area"]
    ]
    # Photometrics: illumination field, gamma, blur, noise.
    gain = 0.95 + 0.4 * _value_noise(rng, h, w)[..., None] * rng.uniform(0.3, 1.0)
    img = img * np.clip(gain * rng.uniform(0.7, 1.15), 0.55, 1.35)
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** rng.uniform(0.7, 1.4)
    if rng.random() < cfg.blur_prob:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.3))
    img = img + rng.standard_normal(img.shape).astype(np.float32) * rng.uniform(0, 8)
    return np.clip(img, 0, 255).astype(np.uint8)[..., ::-1].copy(), annotations


def generate_dataset(
    root: Path, n_train: int, n_val: int, seed: int = 0, cfg: SynthConfig | None = None
) -> dict[str, int]:
    """Write `<root>/images/*.jpg` and `<root>/annotations/instance_{train,val}.json`.
    Returns the number of boxes per split."""
    cfg = cfg or SynthConfig()
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    counts = {}
    for split_id, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        images, anns = [], []
        for idx in range(n):
            rng = np.random.default_rng([seed, split_id, idx])
            img, objs = render_image(rng, cfg)
            name = f"{split}_{idx:06d}.jpg"
            quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
            cv2.imwrite(str(root / "images" / name), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            image_id = idx + 1
            images.append({"id": image_id, "file_name": name, "height": img.shape[0], "width": img.shape[1]})
            for o in objs:
                x, y, bw, bh = o["bbox"]
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": o["category"] + 1,
                             "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
        coco = {"info": {"description": "sodd synthetic small objects", "seed": seed,
                         "generator": asdict(cfg)},
                "images": images, "annotations": anns, "categories": categories}
        with open(root / "annotations" / f"instance_{split}.json", "w", encoding="utf-8") as f:
            json.dump(coco, f)
        counts[split] = len(anns)
    return counts
