"""`sodd serve`: start the daemon."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from sodd.config.flags import add_setting_flags, flag_values
from sodd.config.schema import (
    DEFAULT_MODEL_DIR,
    DEFAULT_MODEL_NAME,
    REPOSITORY_MODELS,
    ModelConfig,
    ServeConfig,
    repository_model_defaults,
)
from sodd.config.toml_file import DEFAULT_CONFIG_PATH, ConfigError, make_config, model_config, read_config, update_model
from sodd.errors import SoddError
from sodd.observability.logs import setup_logging
from sodd.runtime.heap import limit_arenas, return_large_buffers
from sodd.serving.auth import TokenFileError
from sodd.serving.budgets import raise_open_files_limit
from sodd.serving.listeners import ListenerError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve models over gRPC",
                              epilog="Every setting, with its configuration file key: docs/configuration.md.")
    p.add_argument("--config", metavar="FILE",
                   help=f"TOML configuration file (default {DEFAULT_CONFIG_PATH} when it exists); flags override it")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                   help="a PaddleX model directory to serve under NAME (repeatable; the first is the default). "
                        "Replaces the file's models. Without models anywhere, the embedded default model is served.")
    p.add_argument("--log-level", default="INFO", help="DEBUG adds one line per answered request")
    # The flags of the settings, with their help and defaults, come from the schema.
    add_setting_flags(p)
    p.set_defaults(func=run)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"sodd serve: {flag} expects NAME=VALUE, got {value!r}")
        out[name] = rest
    return out


def config_path(args: argparse.Namespace) -> Path | None:
    if args.config:
        return Path(args.config)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def build_config(args: argparse.Namespace) -> ServeConfig:
    """The configuration file (if any), then the flags given on top of it."""
    path = config_path(args)
    values: dict[str, Any] = read_config(path) if path is not None else {}
    flags = flag_values(args)
    values.update(flags.serve)
    flag_models = _pairs(args.model, "--model")
    if flag_models:
        values["models"] = tuple(model_config(name, {"path": Path(p)}) for name, p in flag_models.items())
    if not values.get("models") and values.get("model_repository") is None:
        values["models"] = (ModelConfig(name=DEFAULT_MODEL_NAME, path=DEFAULT_MODEL_DIR),)
    models: tuple[ModelConfig, ...] = values.get("models", ())
    names = {m.name for m in models}
    for name in flags.per_model:
        if name not in names and name != REPOSITORY_MODELS:
            # ConfigError, not SystemExit: on a reload the file may have dropped the model, and that must
            # not end the daemon.
            raise ConfigError(f"--device/--threshold/--version-policy/--hp name {name!r} is not a served "
                              f"model (use {REPOSITORY_MODELS} for repository models)")

    def with_flags(model: ModelConfig) -> ModelConfig:
        changes = {**flags.every_model, **flags.per_model.get(model.name, {})}
        return update_model(model, changes) if changes else model

    values["models"] = tuple(with_flags(m) for m in models)
    values["repository_defaults"] = with_flags(values.get("repository_defaults") or repository_model_defaults())
    return make_config(values)


def run(args: argparse.Namespace) -> int:
    limit_arenas()  # before any thread starts: see sodd.runtime.heap
    return_large_buffers()
    try:
        config = build_config(args)
    except (ValueError, SoddError) as exc:
        setup_logging(args.log_level, args.log_format or "text")
        print(f"sodd serve: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, config.log_format)
    # `import paddle`, which plugins do lazily, lowers the root logger to WARNING: pin our own loggers.
    for name in ("sodd", "hw_plugins"):
        logging.getLogger(name).setLevel(args.log_level.upper())
    raise_open_files_limit()  # one descriptor per client connection; logs what it did
    from sodd.serving.server import serve

    try:
        asyncio.run(serve(config, reload_config=lambda: build_config(args)))
    except SoddError as exc:
        print(f"sodd serve: {exc.message}", file=sys.stderr)
        return 1
    except (ListenerError, TokenFileError) as exc:  # say it plainly, without a traceback
        print(f"sodd serve: {exc}", file=sys.stderr)
        return 1
    return 0
