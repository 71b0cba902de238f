"""`sodd dataset check|convert|split`: PaddleX-compatible dataset tooling."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sodd.datasets.analysis import size_counts
from sodd.datasets.check import RESULT_FILE, check_dataset
from sodd.datasets.convert import FORMATS, convert_dataset
from sodd.datasets.errors import DatasetError
from sodd.datasets.plan import Conversion
from sodd.datasets.split import split_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dataset",
        help="check, convert and split COCO detection datasets (PaddleX layout)",
        description="Dataset tooling compatible with PaddleX's detection modules.",
    )
    actions = parser.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")

    check = actions.add_parser("check", help="validate a dataset and write check_dataset_result.json")
    check.add_argument("dataset", type=Path, help="dataset root (images/ and annotations/)")
    check.add_argument("--output", type=Path, default=Path("output"), help="where results go (default: ./output)")
    check.set_defaults(func=run_check)

    convert = actions.add_parser("convert", help="convert VOC, LabelMe or VisDrone labels to COCO")
    convert.add_argument("dataset", type=Path, help="source dataset root")
    convert.add_argument("--from", dest="fmt", required=True, choices=FORMATS, help="source format")
    convert.add_argument("--output", type=Path, help="visdrone only: write the COCO dataset here (default: in place)")
    convert.add_argument("--val-dir", type=Path, help="visdrone only: a separate folder of val images")
    convert.add_argument(
        "--as",
        dest="only",
        choices=["train", "val"],
        help="visdrone only: convert the whole folder into this one split, leaving the other file alone",
    )
    convert.add_argument("--seed", type=int, help="seed for the 80/20 cut when there is no val list")
    convert.add_argument("--dry-run", action="store_true", help="report what would be written, write nothing")
    convert.set_defaults(func=run_convert)

    split = actions.add_parser("split", help="re-split train and val (old files kept as .bak)")
    split.add_argument("dataset", type=Path, help="dataset root")
    split.add_argument("--train-percent", type=float, required=True)
    split.add_argument("--val-percent", type=float, required=True)
    split.add_argument("--seed", type=int, help="shuffle seed (default: a fresh shuffle, as PaddleX)")
    split.add_argument("--dry-run", action="store_true", help="report what would be written, write nothing")
    split.set_defaults(func=run_split)


def run_check(args: argparse.Namespace) -> int:
    result, dataset = check_dataset(args.dataset, args.output)
    where = args.output / RESULT_FILE
    if dataset is None:
        print(f"check failed ({result['err_type']}): {result['err_msg']}", file=sys.stderr)
        print(f"result written to {where}", file=sys.stderr)
        return 1
    for warning in dataset.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"check passed: {result['attributes']['num_classes']} classes")
    for name, split in dataset.splits.items():
        print(f"  {name}: {split.num_images} images, {split.num_annotations} objects")
    sizes = size_counts(dataset)
    print(f"  objects by COCO size: small {sizes['small']}, medium {sizes['medium']}, large {sizes['large']}")
    print(f"result written to {where}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    if args.fmt != "visdrone" and (args.output or args.val_dir or args.only):
        print("--output, --val-dir and --as apply to --from visdrone only", file=sys.stderr)
        return 2
    extra = {"output": args.output, "val_dir": args.val_dir, "only": args.only} if args.fmt == "visdrone" else {}
    try:
        conversion = convert_dataset(args.fmt, args.dataset, seed=args.seed, dry_run=args.dry_run, **extra)
    except DatasetError as exc:
        return _failed("convert", exc)
    _report(conversion, args.dry_run)
    return 0


def run_split(args: argparse.Namespace) -> int:
    try:
        conversion = split_dataset(
            args.dataset, args.train_percent, args.val_percent, seed=args.seed, dry_run=args.dry_run
        )
    except DatasetError as exc:
        return _failed("split", exc)
    _report(conversion, args.dry_run)
    return 0


def _failed(action: str, exc: DatasetError) -> int:
    print(f"{action} failed ({exc.err_type}): {exc}", file=sys.stderr)
    print("nothing was changed on disk", file=sys.stderr)
    return 1


def _report(conversion: Conversion, dry_run: bool) -> None:
    for note in conversion.notes:
        print(f"note: {note}", file=sys.stderr)
    for name in conversion.splits:
        images, objects = conversion.num_images[name], conversion.num_annotations[name]
        print(f"{name}: {images} images, {objects} objects")
    verb = "would write" if dry_run else "wrote"
    for target in conversion.changes.targets:
        print(f"{verb} {target}")
