"""`sodd synth`: generate a seeded synthetic small-object dataset in PaddleX's COCO layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth", help="generate a synthetic small-object detection dataset",
                              description=__doc__)
    p.add_argument("--output", required=True, type=Path, help="dataset root to write")
    p.add_argument("--train", type=int, default=3000, help="training images (default 3000)")
    p.add_argument("--val", type=int, default=300, help="validation images (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, default=(320, 320), metavar=("H", "W"), help="image size")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sodd.datasets.synth.generator import SynthConfig, generate_dataset

    if args.train < 1 or args.val < 1:
        print("sodd synth: --train and --val must be at least 1")
        return 2
    counts = generate_dataset(args.output, args.train, args.val, args.seed,
                              SynthConfig(image_size=tuple(args.size)))
    print(json.dumps({"output": str(args.output), "images": {"train": args.train, "val": args.val},
                      "boxes": counts, "seed": args.seed}))
    return 0
