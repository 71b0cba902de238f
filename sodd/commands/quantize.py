"""`sodd quantize`: INT8 post-training quantization (NNCF, OpenVINO) of a model directory.

    sodd quantize --model-dir DIR --images CALIBRATION [--images ...] [--output COPY]
                  [--dataset LABELLED --split val] [--subset-size 300] [--preset mixed]

Writes `inference.int8.xml/.bin` and `inference.int8.json` into DIR (or into a copy of DIR with
--output, for read-only directories); the openvino plugin serves them as `openvino?precision=int8`.
With --dataset (a PaddleX COCO dataset), it measures mAP of Paddle fp32 and of INT8 on it and
records the cost; high-performance mode considers INT8 only when that cost is at most 1.0 point.
Where the CPU has bf16 instructions it also measures `openvino?precision=int8-bf16` (the same
model, its unquantized layers in bf16), which high-performance mode weighs by its own cost.
Calibrate on images like those served, not on the evaluation images.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quantize", help="INT8 post-training quantization for the openvino plugin",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, type=Path, help="the PaddleX model directory to quantize")
    p.add_argument("--images", action="append", required=True, type=Path, metavar="PATH",
                   help="calibration image or directory of images (repeatable)")
    p.add_argument("--output", type=Path, default=None,
                   help="write a copy of the model directory with the INT8 model here (default: into --model-dir)")
    p.add_argument("--dataset", type=Path, default=None,
                   help="a labelled PaddleX COCO dataset: measure the mAP cost of INT8 against Paddle fp32")
    p.add_argument("--split", default="val", choices=["val", "train"], help="annotation file of --dataset")
    p.add_argument("--reference-device", default="cpu", help="the fp32 device the cost is measured against")
    p.add_argument("--subset-size", type=int, default=300, help="calibration images NNCF uses (default 300)")
    p.add_argument("--preset", default="mixed", choices=["mixed", "performance"],
                   help="NNCF preset: mixed (asymmetric activations, the default) or performance (symmetric)")
    p.add_argument("--quantize-head", action="store_true",
                   help="quantize the convolutions that produce the boxes and scores too (faster, costs mAP)")
    p.add_argument("--cache-dir", type=Path, default=None, help="ONNX conversion cache (default: the plugins')")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    def progress(text: str) -> None:
        print(f"sodd quantize: {text}", file=sys.stderr, flush=True)

    if args.subset_size < 1:
        print("sodd quantize: --subset-size must be positive", file=sys.stderr)
        return 2
    # stdout carries only the report (JSON); NNCF's progress bars and the tools' chatter go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        code, report = _quantize(args, progress)
    if report is not None:
        print(json.dumps(asdict(report), indent=2))
    return code


def int8_devices() -> tuple[str, ...]:
    """The INT8 devices whose cost is measured: int8-bf16 too where this CPU runs bf16 natively."""
    from hw_plugins.openvino import native_bf16
    from sodd.model.int8 import INT8_BF16_DEVICE, INT8_DEVICE

    return (INT8_DEVICE, INT8_BF16_DEVICE) if native_bf16() else (INT8_DEVICE,)


def _quantize(args: argparse.Namespace, progress: Callable[[str], None]) -> tuple[int, Any]:
    from sodd.model.int8 import INT8_DEVICE, MAX_MAP_COST
    from sodd.model.modeldir import ModelDirError
    from sodd.training.quantization import coco_map, image_files, quantize, write_report

    try:
        images = image_files(args.images)
        if not images:
            raise ValueError(f"no images in {', '.join(map(str, args.images))}")
        target, report = quantize(args.model_dir, images, output=args.output, subset_size=args.subset_size,
                                  preset=args.preset, cache_dir=args.cache_dir, keep_head=not args.quantize_head,
                                  progress=progress)
    except (ModelDirError, ValueError, FileNotFoundError) as exc:
        print(f"sodd quantize: {exc}", file=sys.stderr)
        return 2, None
    progress(f"INT8 model written to {target} in {report.seconds:.1f} s")
    if args.dataset is not None:
        report.dataset = f"{args.dataset} ({args.split})"
        progress(f"measuring mAP on {report.dataset}: {args.reference_device}")
        report.map_fp32, report.map50_fp32 = coco_map(target, args.reference_device, args.dataset, args.split)
        for device in int8_devices():
            progress(f"measuring mAP on {report.dataset}: {device}")
            found, found50 = coco_map(target, device, args.dataset, args.split)
            cost = round(report.map_fp32 - found, 2)
            if device == INT8_DEVICE:
                report.map_int8, report.map50_int8, report.map_cost = found, found50, cost
            else:
                report.map_int8_bf16, report.map50_int8_bf16, report.map_cost_bf16 = found, found50, cost
            verdict = "considered" if cost <= MAX_MAP_COST else "not considered"
            report.notes.append(f"{device}: mAP cost {cost:+.2f} points against {args.reference_device}: "
                                f"high-performance mode {verdict} (limit {MAX_MAP_COST} point)")
        write_report(target, report)
    return 0, report
