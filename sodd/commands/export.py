"""`sodd export`: write a PaddleX model directory for a configuration (fresh or trained weights)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model configuration as a PaddleX directory",
                              description=__doc__)
    p.add_argument("--config", required=True, help="model configuration name (see model-info)")
    p.add_argument("--output", required=True, type=Path, help="directory to write")
    p.add_argument("--weights", type=Path, help="checkpoint from `sodd train` (default: fresh weights)")
    p.add_argument("--labels", help="comma-separated class names (default: from the checkpoint)")
    p.add_argument("--no-legacy", action="store_true",
                   help="skip the legacy inference.pdmodel (Paddle Lite needs it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sodd.training.ppyoloe.export import export_model

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    try:
        spec = export_model(args.config, args.output, args.weights, labels, legacy=not args.no_legacy)
    except (KeyError, ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"sodd export: {e}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in Path(args.output).iterdir() if f.is_file())
    print(f"exported {args.config} as {spec.model_name} to {args.output} ({size / 2**20:.2f} MiB)")
    return 0
