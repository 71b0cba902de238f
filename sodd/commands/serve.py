"""`sodd serve`: start the daemon."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from sodd.config import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, ModelConfig, ServeConfig
from sodd.devices import parse_devices
from sodd.errors import SoddError
from sodd.logs import setup_logging


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"sodd serve: {flag} expects NAME=VALUE, got {value!r}")
        out[name] = rest
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve models over gRPC")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                   help="a PaddleX model directory to serve under NAME (repeatable; the first is the default). "
                        "Without it, the embedded default model is served.")
    p.add_argument("--device", action="append", default=[], metavar="NAME=DEVICES",
                   help="device list for a model, e.g. default=cpu or det=npu:0,cpu (default: cpu)")
    p.add_argument("--threshold", action="append", default=[], metavar="NAME=T",
                   help="score threshold for a model when a request gives none")
    p.add_argument("--max-batch-size", type=int, default=8, help="largest batch run at once (default 8)")
    p.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT to listen on (port 0 picks one)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per predictor (default: all cores)")
    p.add_argument("--max-image-megapixels", type=float, default=50.0)
    p.add_argument("--max-message-mb", type=float, default=64.0)
    p.add_argument("--max-pending", type=int, default=64, help="requests that may wait per model")
    p.add_argument("--log-level", default="INFO", help="DEBUG adds one line per answered request")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="text (journald adds time stamps) or json lines (default text)")
    p.add_argument("--metrics-listen", default="127.0.0.1:9464", metavar="HOST:PORT",
                   help="Prometheus /metrics endpoint (default 127.0.0.1:9464; port 0 picks one, empty turns it off)")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> ServeConfig:
    models = _pairs(args.model, "--model") or {DEFAULT_MODEL_NAME: str(DEFAULT_MODEL_DIR)}
    devices = _pairs(args.device, "--device")
    thresholds = _pairs(args.threshold, "--threshold")
    for name in set(devices) | set(thresholds):
        if name not in models:
            raise SystemExit(f"sodd serve: --device/--threshold name {name!r} is not a served model")
    return ServeConfig(
        models=tuple(
            ModelConfig(
                name=name, path=Path(path),
                devices=parse_devices(devices.get(name, "cpu")),
                threshold=float(thresholds[name]) if name in thresholds else None,
                max_batch_size=args.max_batch_size,
            )
            for name, path in models.items()
        ),
        listen=args.listen,
        max_image_megapixels=args.max_image_megapixels,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        max_pending=args.max_pending,
        cpu_threads=args.threads,
        metrics_listen=args.metrics_listen,
        log_format=args.log_format,
    )


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    try:
        config = build_config(args)
    except (ValueError, SoddError) as exc:
        print(f"sodd serve: {exc}", file=sys.stderr)
        return 2
    from sodd.server import serve

    try:
        asyncio.run(serve(config))
    except SoddError as exc:
        print(f"sodd serve: {exc.message}", file=sys.stderr)
        return 1
    return 0
