"""Boxes from daemons on two architectures (aarch64 under emulation, x86) compared model by model.

    python .ci/arm/compare_boxes.py --arm 127.0.0.1:50061 --x86 127.0.0.1:50062 --x86-plain 127.0.0.1:50063 \
        --model default-cpu=synth --photos picodet-openvino=/data/visdrone.jpg,/data/terrain2.png

Each `--model NAME=IMAGES` sends the same encoded images to the model NAME on the aarch64 daemon
and on the x86 one. IMAGES is `synth` (generated 320x320 scenes), `synth:WxH` (generated scenes of
that size), `crops:S:FILE` (three S x S windows of a photo, at its own scale) or comma-separated
files. Boxes agree within a tolerance across architectures, not bit for bit: every box scoring at
least 0.3 on either side must have a partner of the same class on the other side with a score
within 1e-3 and corners within 0.1 px. Within one architecture the same comparison is exact.

`--photos NAME=IMAGES` is for whole photos that the daemon shrinks several times (a 1920x1080 frame
into a 416 network). The x86 wheel of OpenCV resizes with Intel IPP, which no ARM build has, and
IPP's bicubic resize differs from OpenCV's own code in about 3 % of the values; shrunk photos carry
that past the tolerance (PaddleX on the two architectures differs the same way). So photos are
gated against `--x86-plain`, an x86 daemon started with OPENCV_IPP=disabled (OpenCV's own code, as
on ARM), and reported against `--x86`. Exits 1 when a gated comparison fails; `--json` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SCORE_TOL = 1e-3
COORD_TOL = 0.1  # px
# Rows near the threshold may fall on either side of it on the other architecture: request below it.
MIN_SCORE = 0.3
REQUEST_MARGIN = 0.05


@dataclass(frozen=True)
class Tolerance:
    score: float
    coord: float


EXACT = Tolerance(0.0, 0.0)
ACROSS_ARCHITECTURES = Tolerance(SCORE_TOL, COORD_TOL)


def tolerance_between(reference_arch: str, this_arch: str) -> Tolerance:
    """Exact within one architecture; the cross-architecture tolerance otherwise."""
    return EXACT if _arch(reference_arch) == _arch(this_arch) else ACROSS_ARCHITECTURES


def _arch(name: str) -> str:
    name = name.lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)


@dataclass
class Agreement:
    checked: int = 0  # rows at or above min_score, both sides
    unmatched: int = 0
    max_score_diff: float = 0.0  # among matched rows
    max_coord_diff: float = 0.0
    worst_score_diff: float = 0.0  # to the nearest same-class row, matched or not
    worst_coord_diff: float = 0.0

    def add(self, other: Agreement) -> None:
        self.checked += other.checked
        self.unmatched += other.unmatched
        for name in ("max_score_diff", "max_coord_diff", "worst_score_diff", "worst_coord_diff"):
            setattr(self, name, max(getattr(self, name), getattr(other, name)))


def compare_rows(ref: np.ndarray, got: np.ndarray, tol: Tolerance, min_score: float = MIN_SCORE) -> Agreement:
    """Rows `[cls, score, x1, y1, x2, y2]`: each side's rows scoring >= min_score must have a partner of
    the same class on the other side within `tol` (the closest one; order is not compared, since rows
    with equal scores may come in either order)."""
    result = Agreement()
    for a, b in ((ref, got), (got, ref)):
        for row in a[a[:, 1] >= min_score]:
            result.checked += 1
            same = b[b[:, 0] == row[0]]
            if not len(same):
                result.unmatched += 1
                continue
            coord = np.abs(same[:, 2:6] - row[2:6]).max(axis=1)
            best = int(np.argmin(coord))
            score = abs(float(same[best, 1] - row[1]))
            result.worst_score_diff = max(result.worst_score_diff, score)
            result.worst_coord_diff = max(result.worst_coord_diff, float(coord[best]))
            if coord[best] > tol.coord or score > tol.score:
                result.unmatched += 1
                continue
            result.max_score_diff = max(result.max_score_diff, score)
            result.max_coord_diff = max(result.max_coord_diff, float(coord[best]))
    return result


def response_rows(response: object) -> np.ndarray:
    boxes = response.boxes  # type: ignore[attr-defined]
    return np.array([[b.cls_id, b.score, b.xmin, b.ymin, b.xmax, b.ymax] for b in boxes],
                    dtype=np.float64).reshape(-1, 6)


def synth_images(count: int = 3) -> list[bytes]:
    """Generated scenes (fixed seeds) as PNG bytes, the default model's kind of image."""
    import cv2

    from sodd.datasets.synth.generator import SynthConfig, render_image

    images = []
    for seed in range(count):
        bgr, _ = render_image(np.random.default_rng([20261130, seed]), SynthConfig())
        ok, data = cv2.imencode(".png", bgr)
        assert ok
        images.append(data.tobytes())
    return images


def synth_scenes(count: int, size: tuple[int, int]) -> list[bytes]:
    """Generated scenes of `size` (h, w) as PNG bytes; the daemon resizes them to the model's input."""
    import cv2

    from sodd.datasets.synth.generator import SynthConfig, render_image

    scenes = []
    for seed in range(count):
        bgr, _ = render_image(np.random.default_rng([20261130, size[0], size[1], seed]), SynthConfig(image_size=size))
        scenes.append(cv2.imencode(".png", bgr)[1].tobytes())
    return scenes


def photo_crops(path: Path, size: int) -> list[bytes]:
    """Three size x size windows of a photo at its own scale, as PNG bytes."""
    import cv2

    photo = cv2.imread(str(path))
    if photo is None:
        raise SystemExit(f"cannot read {path}")
    h, w = photo.shape[:2]
    crops = []
    for fy, fx in ((0.2, 0.2), (0.45, 0.55), (0.6, 0.15)):
        y, x = int((h - size) * fy), int((w - size) * fx)
        crops.append(cv2.imencode(".png", photo[max(y, 0):y + size, max(x, 0):x + size])[1].tobytes())
    return crops


def images_for(spec: str) -> list[bytes]:
    if spec == "synth":
        return synth_images()
    if spec.startswith("synth:"):
        w, h = (int(v) for v in spec.split(":", 1)[1].split("x"))
        return synth_scenes(3, (h, w))
    if spec.startswith("crops:"):
        _, size, path = spec.split(":", 2)
        return photo_crops(Path(path), int(size))
    return [Path(p).read_bytes() for p in spec.split(",") if p]


def compare_model(arm: str, references: Sequence[str], name: str, images: list[bytes], timeout: float,
                  tol: Tolerance) -> list[dict]:
    """The aarch64 daemon's boxes for `images` against each reference daemon's: one result each
    (every image is sent to the slow emulated daemon once)."""
    from sodd_client import Client

    totals = [Agreement() for _ in references]
    devices: list[set] = [set() for _ in references]
    with Client(arm, timeout=timeout) as on_arm:
        clients = [Client(address, timeout=timeout) for address in references]
        try:
            for data in images:
                a = on_arm.detect(data, name, threshold=MIN_SCORE - REQUEST_MARGIN)
                for client, total, seen in zip(clients, totals, devices, strict=True):
                    b = client.detect(data, name, threshold=MIN_SCORE - REQUEST_MARGIN)
                    seen.add((a.device, b.device))
                    total.add(compare_rows(response_rows(b), response_rows(a), tol))
        finally:
            for client in clients:
                client.close()
    return [{**asdict(total), "images": len(images), "devices": sorted(seen),
             "ok": total.unmatched == 0 and total.checked > 0} for total, seen in zip(totals, devices, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", required=True, help="address of the aarch64 daemon")
    parser.add_argument("--x86", required=True, help=f"address of the {platform.machine()} daemon")
    parser.add_argument("--x86-plain", help="address of one started with OPENCV_IPP=disabled (for --photos)")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=IMAGES",
                        help="compare, and fail beyond the tolerance")
    parser.add_argument("--photos", action="append", default=[], metavar="NAME=IMAGES",
                        help="whole photos: fail beyond the tolerance against --x86-plain, report against --x86")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request (emulation is slow)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.photos and not args.x86_plain:
        parser.error("--photos needs --x86-plain")
    report: dict[str, dict] = {}
    for item in args.model:
        name, _, spec = item.partition("=")
        kind = spec if spec.startswith("synth") else spec.split(":")[0] if spec.startswith("crops:") else "files"
        (result,) = compare_model(args.arm, [args.x86], name, images_for(spec or "synth"), args.timeout,
                                  ACROSS_ARCHITECTURES)
        report[f"{name} ({kind})"] = {**result, "images_spec": spec, "gated": True}
    for item in args.photos:
        name, _, spec = item.partition("=")
        plain, with_ipp = compare_model(args.arm, [args.x86_plain, args.x86], name, images_for(spec),
                                        args.timeout, ACROSS_ARCHITECTURES)
        report[f"{name} (photos, x86 plain)"] = {**plain, "images_spec": spec, "gated": True}
        report[f"{name} (photos, x86 IPP)"] = {**with_ipp, "images_spec": spec, "gated": False}
    print(f"{'model':<40}{'images':>7}{'boxes':>7}{'unmatched':>10}{'max dscore':>12}{'max dcoord px':>14}"
          f"{'worst dscore':>14}{'worst dcoord':>14}  verdict")
    for label, r in report.items():
        verdict = ("ok" if r["ok"] else "FAILED") if r["gated"] else "reported"
        print(f"{label:<40}{r['images']:>7}{r['checked']:>7}{r['unmatched']:>10}{r['max_score_diff']:>12.2e}"
              f"{r['max_coord_diff']:>14.3f}{r['worst_score_diff']:>14.2e}{r['worst_coord_diff']:>14.3f}  {verdict}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if all(r["ok"] for r in report.values() if r["gated"]) else 1


if __name__ == "__main__":
    sys.exit(main())
