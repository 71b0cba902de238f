"""`sodd train`: train a PP-YOLOE+ SOD configuration on a COCO dataset in PaddleX's layout."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a detector on a PaddleX-layout COCO dataset",
                              description=__doc__)
    p.add_argument("--dataset", required=True, help="dataset root (images/, annotations/instance_*.json)")
    p.add_argument("--output", required=True, help="directory for checkpoints and metrics")
    p.add_argument("--config", default="sodd-SOD-tiny", help="model configuration name (see model-info)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training (epochs, lr, ...) or model (model.<field>) setting; "
                        "VALUE is JSON, e.g. --set epochs=30 --set model.input_size=416")
    p.add_argument("--resume", help="last.pdparams of an earlier run to continue")
    p.set_defaults(func=run)


def parse_overrides(items: list[str]) -> tuple[dict, dict]:
    train, model = {}, {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key.startswith("model."):
            model[key[len("model."):]] = tuple(value) if isinstance(value, list) else value
        else:
            train[key] = value
    return train, model


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `sodd --help` imports every command module and must not load paddle.
    from sodd.training.dataset import DatasetError
    from sodd.training.trainer import TrainConfig, train

    try:
        train_over, model_over = parse_overrides(args.set)
        cfg = TrainConfig(dataset=args.dataset, output=args.output, model=args.config,
                          model_overrides=model_over, resume=args.resume, **train_over)
    except (ValueError, TypeError) as e:
        print(f"sodd train: {e}", file=sys.stderr)
        return 2
    try:
        state = train(cfg)
    except DatasetError as e:
        print(f"sodd train: bad dataset: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: state.get(k) for k in ("epoch", "step", "best_ap", "best_ap50", "best_epoch",
                                                 "train_time_s")}))
    return 0
