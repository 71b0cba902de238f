"""`sodd serve`: start the daemon."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sodd.config.schema import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, ModelConfig, ServeConfig
from sodd.config.toml_file import DEFAULT_CONFIG_PATH, ConfigError, make_config, read_config
from sodd.config.version_policy import VersionPolicy
from sodd.errors import SoddError
from sodd.observability.logs import setup_logging
from sodd.plugins.devices import parse_devices
from sodd.runtime.heap import limit_arenas, return_large_buffers
from sodd.serving.auth import TokenFileError
from sodd.serving.budgets import raise_open_files_limit
from sodd.serving.listeners import ListenerError


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"sodd serve: {flag} expects NAME=VALUE, got {value!r}")
        out[name] = rest
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    # Flags default to None so that only the flags actually given override the configuration file.
    p = subparsers.add_parser("serve", help="serve models over gRPC")
    p.add_argument("--config", metavar="FILE",
                   help=f"TOML configuration file (default {DEFAULT_CONFIG_PATH} when it exists); flags override it")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                   help="a PaddleX model directory to serve under NAME (repeatable; the first is the default). "
                        "Replaces the file's models. Without models anywhere, the embedded default model is served.")
    p.add_argument("--model-repository", metavar="DIR",
                   help="serve every <name>/<version>/ model directory under DIR, following changes")
    p.add_argument("--device", action="append", default=[], metavar="NAME=DEVICES",
                   help="device list for a model, e.g. default=cpu or det=npu:0,cpu (default: cpu); "
                        "NAME * applies to repository models")
    p.add_argument("--hp", action="append", default=[], metavar="NAME",
                   help="high-performance mode for model NAME (* for repository models): serve the fastest "
                        "CPU backend whose boxes agree with Paddle fp32, measured at load")
    p.add_argument("--threshold", action="append", default=[], metavar="NAME=T",
                   help="score threshold for a model when a request gives none (NAME * for repository models)")
    p.add_argument("--version-policy", action="append", default=[], metavar="NAME=POLICY",
                   help="latest (default), latest:N or specific:V1,V2 (NAME * for repository models)")
    p.add_argument("--settle-seconds", type=float, default=None,
                   help="a version directory loads once unchanged for this long (default 2)")
    p.add_argument("--poll-files", action="store_true", default=None,
                   help="poll model directories instead of inotify")
    p.add_argument("--max-batch-size", type=int, default=None, help="largest batch run at once (default 8)")
    p.add_argument("--listen", default=None,
                   help="HOST:PORT to listen on (default 127.0.0.1:50051; port 0 picks one; empty: Unix socket only)")
    p.add_argument("--unix-socket", metavar="PATH", help="also listen on this Unix domain socket")
    p.add_argument("--tls-cert", metavar="FILE", help="serve TLS on --listen with this certificate chain (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    p.add_argument("--tls-client-ca", metavar="FILE",
                   help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument("--tokens-file", metavar="FILE", help="require bearer tokens listed in FILE (see README)")
    p.add_argument("--drain-timeout", type=float, default=None, metavar="SECONDS",
                   help="on SIGTERM, how long in-flight requests may take to finish (default 10)")
    p.add_argument("--drain-grace", type=float, default=None, metavar="SECONDS",
                   help="on SIGTERM, keep answering this long after health turns NOT_SERVING, so that load "
                        "balancers take the daemon out first (default 5; skipped when nothing checks health)")
    p.add_argument("--max-connection-age", type=float, default=None, metavar="SECONDS",
                   help="send clients a GOAWAY on connections older than this, so they rebalance (default 0: never)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per predictor (default: all cores, and see --instances)")
    p.add_argument("--instances", type=int, default=None,
                   help="predictor instances per model version, each on its own thread (default: 1 on GPUs; "
                        "on CPUs without --threads one per core, at most 4, plus one with all cores for a "
                        "lone request)")
    p.add_argument("--combine-requests", action=argparse.BooleanOptionalAction, default=None,
                   help="let images of different requests share a batch (default: on GPUs and NPUs only)")
    p.add_argument("--max-queue-delay-ms", type=float, default=None,
                   help="how long an image may wait for others to fill a batch (default 0)")
    p.add_argument("--max-stream-frames", type=int, default=None,
                   help="frames a DetectStream may have in the daemon at once (default 4)")
    p.add_argument("--max-streams", type=int, default=None, help="DetectStream calls open at once (default 16)")
    p.add_argument("--max-concurrent-rpcs", type=int, default=None,
                   help="gRPC's last-resort limit on calls in progress, kept above the budgets below (default 1024)")
    p.add_argument("--max-inference-calls", type=int, default=None,
                   help="Detect, DetectBatch and DetectStream calls in progress (default 128)")
    p.add_argument("--max-management-calls", type=int, default=None,
                   help="other Detector calls in progress: models, devices, watches (default 16)")
    p.add_argument("--max-health-watches", type=int, default=None,
                   help="health Watch and reflection streams open at once (default 32)")
    p.add_argument("--max-calls-per-peer", type=int, default=None,
                   help="inference calls one client host may have in progress (default 64)")
    p.add_argument("--request-body-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long a call may take to send its request after its headers (default 10)")
    p.add_argument("--allow-remote-management", action="store_true", default=None,
                   help="without a tokens file, accept LoadModel/UnloadModel from remote clients too")
    p.add_argument("--max-request-images", type=int, default=None, help="images per DetectBatch (default 64)")
    p.add_argument("--max-image-megapixels", type=float, default=None, help="default 50")
    p.add_argument("--max-request-megapixels", type=float, default=None,
                   help="pixels all images of one request may hold together (default 200)")
    p.add_argument("--max-model-input-megapixels", type=float, default=None,
                   help="refuse to load models whose network input is larger (default 16)")
    p.add_argument("--max-message-mb", type=float, default=None, help="default 64")
    p.add_argument("--max-pending", type=int, default=None,
                   help="network runs (images or slicing windows) a model holds at once (default 64)")
    p.add_argument("--log-level", default="INFO", help="DEBUG adds one line per answered request")
    p.add_argument("--log-format", choices=("text", "json"), default=None,
                   help="text (journald adds time stamps) or json lines (default text)")
    p.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                   help="Prometheus /metrics endpoint (default 127.0.0.1:9464; port 0 picks one, empty turns it off)")
    p.set_defaults(func=run)


def _path(value: str) -> Path:
    return Path(value)


# Flag -> (ServeConfig field, conversion) for the flags that set one field each.
SIMPLE_FLAGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "listen": ("listen", str),
    "unix_socket": ("unix_socket", _path),
    "tls_cert": ("tls_cert", _path),
    "tls_key": ("tls_key", _path),
    "tls_client_ca": ("tls_client_ca", _path),
    "tokens_file": ("tokens_file", _path),
    "drain_timeout": ("drain_timeout_seconds", float),
    "drain_grace": ("drain_grace_seconds", float),
    "max_connection_age": ("max_connection_age_seconds", float),
    "model_repository": ("model_repository", _path),
    "settle_seconds": ("settle_seconds", float),
    "poll_files": ("poll_files", bool),
    "threads": ("cpu_threads", int),
    "max_image_megapixels": ("max_image_megapixels", float),
    "max_request_megapixels": ("max_request_megapixels", float),
    "max_model_input_megapixels": ("max_model_input_megapixels", float),
    "max_message_mb": ("max_message_bytes", lambda mb: int(mb * 1024 * 1024)),
    "max_pending": ("max_pending", int),
    "max_stream_frames": ("max_stream_frames", int),
    "max_streams": ("max_streams", int),
    "max_concurrent_rpcs": ("max_concurrent_rpcs", int),
    "max_inference_calls": ("max_inference_calls", int),
    "max_management_calls": ("max_management_calls", int),
    "max_health_watches": ("max_health_watches", int),
    "max_calls_per_peer": ("max_calls_per_peer", int),
    "request_body_timeout": ("request_body_timeout_seconds", float),
    "allow_remote_management": ("allow_remote_management", bool),
    "max_request_images": ("max_request_images", int),
    "metrics_listen": ("metrics_listen", str),
    "log_format": ("log_format", str),
}


def config_path(args: argparse.Namespace) -> Path | None:
    if args.config:
        return Path(args.config)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def build_config(args: argparse.Namespace) -> ServeConfig:
    """The configuration file (if any), then the flags given on top of it."""
    path = config_path(args)
    values: dict[str, Any] = read_config(path) if path is not None else {}
    for flag, (name, convert) in SIMPLE_FLAGS.items():
        if getattr(args, flag) is not None:
            values[name] = convert(getattr(args, flag))
    flag_models = _pairs(args.model, "--model")
    if flag_models:
        values["models"] = tuple(ModelConfig(name=name, path=Path(p)) for name, p in flag_models.items())
    if not values.get("models") and values.get("model_repository") is None:
        values["models"] = (ModelConfig(name=DEFAULT_MODEL_NAME, path=DEFAULT_MODEL_DIR),)
    models: tuple[ModelConfig, ...] = values.get("models", ())
    devices = _pairs(args.device, "--device")
    thresholds = _pairs(args.threshold, "--threshold")
    policies = _pairs(args.version_policy, "--version-policy")
    names = {m.name for m in models}
    for name in set(devices) | set(thresholds) | set(policies) | set(args.hp):
        if name not in names and name != "*":
            # ConfigError, not SystemExit: on a reload the file may have dropped the model, and that must
            # not end the daemon.
            raise ConfigError(f"--device/--threshold/--version-policy/--hp name {name!r} is not a served "
                              "model (use * for repository models)")

    def with_flags(model: ModelConfig, name: str) -> ModelConfig:
        changes: dict[str, Any] = {}
        if name in devices:
            changes["devices"] = parse_devices(devices[name])
        if name in thresholds:
            changes["threshold"] = float(thresholds[name])
        if name in policies:
            changes["version_policy"] = VersionPolicy.parse(policies[name])
        if name in args.hp:
            changes["high_performance"] = True
        if args.max_batch_size is not None:
            changes["max_batch_size"] = args.max_batch_size
        if args.instances is not None:
            changes["instances"] = args.instances
        if args.combine_requests is not None:
            changes["combine_requests"] = args.combine_requests
        if args.max_queue_delay_ms is not None:
            changes["max_queue_delay_seconds"] = args.max_queue_delay_ms / 1000
        return dataclasses.replace(model, **changes) if changes else model

    values["models"] = tuple(with_flags(m, m.name) for m in models)
    repository_defaults = values.get("repository_defaults") or ModelConfig(name="*", path=Path("."))
    values["repository_defaults"] = with_flags(repository_defaults, "*")
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
