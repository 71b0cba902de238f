"""Every setting of the daemon, declared once: its type, default, check, help text, its `sodd serve`
flag and whether a reload (SIGHUP) applies it.

The TOML loader (sodd.config.toml_file), the `sodd serve` flags (sodd.config.flags) and the table
in docs/configuration.md (sodd.config.docs) are all generated from the declarations below, so they
cannot drift apart. The classes are pydantic dataclasses: frozen, checked when built (from the file,
from flags or in code), and still ordinary dataclasses for `dataclasses.replace` and `fields`.
Nothing on the request path reads files or environment variables; it reads these objects.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, PlainValidator, TypeAdapter, model_validator
from pydantic import ValidationError as _ValidationError
from pydantic.dataclasses import dataclass

from sodd.config.addresses import split_host_port
from sodd.config.version_policy import VersionPolicy
from sodd.errors import SoddError
from sodd.model.slicing import SliceOptions
from sodd.plugins.devices import DeviceSpec, parse_devices

DEFAULT_MODEL_DIR = Path(__file__).parents[1] / "default_model"
DEFAULT_MODEL_NAME = "default"
# The name that stands for the models of model_repository, in repository_defaults and in the
# per-model flags (`--device '*=npu:0,cpu'`).
REPOSITORY_MODELS = "*"


@dataclasses.dataclass(frozen=True)
class Kind:
    """How a value type reads in the docs and in flag help (`type`), and what it must be (`check`)."""

    type: str
    check: str = ""


# ---- value types: each checks and converts what a file, a flag or code gives it ----------------

def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty path string, got {value!r}")
    return Path(value)


def _devices(value: Any) -> tuple[DeviceSpec, ...]:
    if isinstance(value, tuple) and value and all(isinstance(d, DeviceSpec) for d in value):
        return value
    # A file may list the devices: ["npu:0", "cpu"] is "npu:0,cpu".
    text = ",".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else value
    if not isinstance(text, str):
        raise ValueError(f'expected a device list such as "npu:0,cpu", got {value!r}')
    try:
        return parse_devices(text)
    except SoddError as exc:
        raise ValueError(exc.message) from exc


def _version_policy(value: Any) -> VersionPolicy:
    if isinstance(value, VersionPolicy):
        return value
    if not isinstance(value, str):
        raise ValueError(f'expected "latest", "latest:N" or "specific:V1,V2", got {value!r}')
    try:
        return VersionPolicy.parse(value)
    except SoddError as exc:
        raise ValueError(exc.message) from exc


def _slicing(value: Any) -> SliceOptions | None:
    if value is None or isinstance(value, SliceOptions):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"expected a table such as {{ auto = true }}, got {value!r}")
    hints = typing.get_type_hints(SliceOptions)
    known = [f.name for f in dataclasses.fields(SliceOptions)]
    values = {}
    for key, item in value.items():
        if key not in known:
            raise ValueError(f"{key}: unknown key; known keys: {', '.join(known)}")
        try:
            values[key] = TypeAdapter(hints[key], config=ConfigDict(strict=True)).validate_python(item)
        except _ValidationError as exc:
            raise ValueError(f"{key}: {exc.errors()[0]['msg'].lower()}, got {item!r}") from exc
    try:
        return SliceOptions(**values)
    except SoddError as exc:
        raise ValueError(exc.message) from exc


def _host_port(value: str) -> str:
    if value:
        host, _ = split_host_port(value)
        if not host:
            raise ValueError(f"{value!r} is not HOST:PORT: give the host, 0.0.0.0 for every interface")
    return value


def _metrics_host_port(value: str) -> str:
    if value:
        split_host_port(value)  # an empty host means every interface
    return value


def _file_mode(value: int) -> int:
    if not 0 <= value <= 0o777:
        raise ValueError(f"{value} is not a file mode; write it in octal, e.g. 0o660")
    return value


def _model_name(value: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"model name {value!r} must be non-empty and contain no '/'")
    return value


FilePath = Annotated[Path, BeforeValidator(_path), Kind("path")]
Devices = Annotated[tuple[DeviceSpec, ...], PlainValidator(_devices),
                    Kind("device list", 'e.g. "npu:0,cpu", "gpu:0?mode=trt_fp16", "arm", "cpu?threads=2"')]
Policy = Annotated[VersionPolicy, PlainValidator(_version_policy),
                   Kind("version policy", '"latest", "latest:N" or "specific:V1,V2"')]
Slicing = Annotated[SliceOptions | None, PlainValidator(_slicing), Kind("table", "see docs/slicing.md")]
Listen = Annotated[str, AfterValidator(_host_port), Kind("HOST:PORT", "HOST:PORT, or empty")]
MetricsListen = Annotated[str, AfterValidator(_metrics_host_port), Kind("HOST:PORT", "HOST:PORT, or empty")]
FileMode = Annotated[int, AfterValidator(_file_mode), Kind("octal integer", "0o000 to 0o777")]
ModelName = Annotated[str, AfterValidator(_model_name), Kind("string", "no '/'")]
LogFormat = Literal["text", "json"]

_UNSET: Any = dataclasses.MISSING


def setting(default: Any = _UNSET, *, help: str, reload: bool = False, flag: str | None = None,
            metavar: str | None = None, flag_unit: str | None = None, per_model: bool = False,
            default_factory: Any = None, **checks: Any) -> Any:
    """One setting: its default, `help` (the docs table and the flag's help), whether a reload
    applies it, its `sodd serve` flag (with `flag_unit` when the flag counts in other units, and
    `per_model` for NAME=VALUE flags), and pydantic's checks (ge, gt, le...)."""
    extra = {"reload": reload, "flag": flag, "metavar": metavar, "flag_unit": flag_unit, "per_model": per_model}
    if default_factory is not None:
        return Field(default_factory=default_factory, description=help, json_schema_extra=extra, **checks)
    if default is _UNSET:
        return Field(description=help, json_schema_extra=extra, **checks)
    return Field(default, description=help, json_schema_extra=extra, **checks)


# Strict: a file's "8" is not the integer 8, nor 1 the boolean true. Unknown keys are errors.
_CONFIG = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)


@dataclass(frozen=True, config=_CONFIG)
class ModelConfig:
    name: ModelName = setting(help="the name clients ask for: the table name in [models.NAME]")
    path: FilePath = setting(
        help="a PaddleX inference directory (inference.yml and inference.json or .pdmodel + .pdiparams), or a "
             "directory of numbered version directories", reload=True)
    devices: Devices = setting(
        default_factory=lambda: parse_devices("cpu"), reload=True, flag="--device", metavar="DEVICES",
        per_model=True, help="devices tried in order at load")
    threshold: float | None = setting(
        None, ge=0, le=1, reload=True, flag="--threshold", metavar="T", per_model=True,
        help="score threshold when a request gives none; unset falls back to the model's draw_threshold, then 0.5")
    max_batch_size: int = setting(8, ge=1, reload=True, flag="--max-batch-size", help="largest batch run at once")
    max_queue_delay_seconds: float = setting(
        0.0, ge=0, le=10, reload=True, flag="--max-queue-delay-ms", flag_unit="ms",
        help="how long a queued image may wait for others to fill a batch; 0 batches only what already waits")
    # Paddle Inference clones share weights; the narrow CPU instances are independent predictors.
    instances: int | None = setting(
        None, ge=1, reload=True, flag="--instances",
        help="predictor instances (threads) per loaded version; unset: one on GPUs; on a multi-core CPU with no "
             "thread count set, one narrow instance per core (at most 4) plus one using every core for a lone "
             "request")
    # A batch costs a CPU as much per image as single runs, hence no sharing there by default.
    combine_requests: bool | None = setting(
        None, reload=True, flag="--combine-requests",
        help="whether images of different requests share batches (a DetectBatch's images always do); unset: "
             "yes on GPUs and NPUs, no on CPUs")
    slicing: Slicing = setting(
        None, reload=True,
        help="slice every request's image unless the request turns it off (docs/slicing.md); unset runs whole "
             "images; auto picks the window size from the image and the model's input size")
    version_policy: Policy = setting(
        default_factory=VersionPolicy, reload=True, flag="--version-policy", metavar="POLICY", per_model=True,
        help="which complete versions of a versioned model directory to serve")
    high_performance: bool = setting(
        False, reload=True, flag="--hp", per_model=True,
        help="measure the CPU backends (Paddle fp32/bf16, OpenVINO, ONNX Runtime) at load and serve the fastest "
             "whose boxes agree with Paddle fp32 (docs/high-performance.md); devices is then not used")


def repository_model_defaults() -> ModelConfig:
    """repository_defaults when the file has no such table."""
    return ModelConfig(name=REPOSITORY_MODELS, path=Path("."))


@dataclass(frozen=True, config=_CONFIG)
class ServeConfig:
    models: tuple[ModelConfig, ...] = setting(
        (), reload=True,
        help="one [models.NAME] table per served model; the first is the default model (requests with an empty "
             "model name); without models and model_repository the embedded default model is served")
    # ---- listeners
    listen: Listen = setting(
        "127.0.0.1:50051", flag="--listen",
        help="TCP HOST:PORT for gRPC; 0.0.0.0 listens on every interface, port 0 picks one, empty turns TCP off "
             "(then unix_socket must be set)")
    unix_socket: FilePath | None = setting(
        None, flag="--unix-socket", metavar="PATH", help="also listen on this Unix domain socket, for local clients")
    unix_socket_mode: FileMode = setting(0o660, help="mode of the socket file")
    unix_socket_owner: str | None = setting(
        None, help="owner of the socket file (a user name or id); unset keeps the daemon's own")
    unix_socket_group: str | None = setting(
        None, help="group of the socket file (a group name or id); unset keeps the daemon's own")
    # ---- TLS and access control: re-read on reload
    tls_cert: FilePath | None = setting(
        None, reload=True, flag="--tls-cert", metavar="FILE",
        help="serve TLS on listen with this PEM certificate chain (with tls_key)")
    tls_key: FilePath | None = setting(
        None, reload=True, flag="--tls-key", metavar="FILE", help="the PEM private key of tls_cert")
    tls_client_ca: FilePath | None = setting(
        None, reload=True, flag="--tls-client-ca", metavar="FILE",
        help="mutual TLS: only clients presenting a certificate this PEM CA signed may connect")
    tokens_file: FilePath | None = setting(
        None, reload=True, flag="--tokens-file", metavar="FILE",
        help="require bearer tokens listed in this TOML file, each with the models it may use (README); unset "
             "serves anyone who can connect")
    allow_remote_management: bool = setting(
        False, reload=True, flag="--allow-remote-management",
        help="without tokens_file, accept LoadModel and UnloadModel from remote clients too, not only from the "
             "Unix socket and loopback")
    # ---- limits
    # 8K is 33 MP, so 50 leaves room for real photos.
    max_image_megapixels: float = setting(
        50.0, gt=0, flag="--max-image-megapixels",
        help="images above this are refused from their header, before decoding")
    max_request_megapixels: float = setting(
        200.0, gt=0, flag="--max-request-megapixels",
        help="pixels all images of one request may hold together, summed from their headers before decoding")
    # Warm-up and every request allocate buffers of the input's size (a 12000x12000 input took over 8 GB).
    max_model_input_megapixels: float = setting(
        16.0, gt=0, flag="--max-model-input-megapixels",
        help="models whose network input is larger are refused at load, with their reason in ListModels")
    max_message_bytes: int = setting(
        64 * 1024 * 1024, ge=1024, flag="--max-message-mb", flag_unit="MiB",
        help="largest gRPC message accepted or sent")
    max_pending: int = setting(
        64, ge=1, flag="--max-pending",
        help="network runs (images, or slicing windows plus the whole image) a model holds from admission to "
             "answer; beyond that RESOURCE_EXHAUSTED, and a request needing more on its own INVALID_ARGUMENT")
    # The stream is not read further until a frame is answered, so gRPC flow control pushes back.
    max_stream_frames: int = setting(
        4, ge=1, flag="--max-stream-frames", help="frames one DetectStream may have inside the daemon at once")
    max_streams: int = setting(
        16, ge=1, flag="--max-streams", help="DetectStream calls open at once; one more gets RESOURCE_EXHAUSTED")
    # Raised to at least the budgets below plus 256 so that they refuse first (sodd.serving.budgets).
    max_concurrent_rpcs: int = setting(
        1024, ge=1, flag="--max-concurrent-rpcs",
        help="gRPC's last-resort limit on calls in progress, all kinds together; kept at least 256 above the "
             "call budgets' sum so that they refuse first")
    # Call budgets (sodd.serving.budgets): a call beyond its budget gets RESOURCE_EXHAUSTED before its
    # body is read, so with max_message_bytes they bound request memory.
    max_inference_calls: int = setting(
        128, ge=1, flag="--max-inference-calls", help="Detect, DetectBatch and DetectStream calls in progress")
    max_management_calls: int = setting(
        16, ge=1, flag="--max-management-calls",
        help="other Detector calls in progress: LoadModel, UnloadModel, WatchModels, ListModels, GetModel, "
             "ListDevices")
    max_health_watches: int = setting(
        32, ge=1, flag="--max-health-watches", help="health Watch and reflection streams open at once")
    max_calls_per_peer: int = setting(
        64, ge=1, flag="--max-calls-per-peer",
        help="inference calls one client host (IP address) may have in progress; the Unix socket is not counted")
    request_body_timeout_seconds: float = setting(
        10.0, gt=0, flag="--request-body-timeout", metavar="SECONDS",
        help="a call whose request has not arrived this long after its headers gets DEADLINE_EXCEEDED")
    max_request_images: int = setting(
        64, ge=1, flag="--max-request-images",
        help="images one DetectBatch may carry; more is refused before anything is decoded")
    # OpenCV releases the GIL, so these threads run in parallel.
    preprocess_workers: int = setting(2, ge=1, help="threads that decode and preprocess images")
    cpu_threads: int | None = setting(
        None, ge=1, flag="--threads",
        help="threads each CPU predictor may use; unset lets sodd choose (all cores, and see instances)")
    drain_timeout_seconds: float = setting(
        10.0, ge=0, reload=True, flag="--drain-timeout", metavar="SECONDS",
        help="on SIGTERM, how long in-flight requests may take to finish before they are cancelled; keep the "
             "unit's TimeoutStopSec= above it")
    # See sodd.serving.drain.
    drain_grace_seconds: float = setting(
        5.0, ge=0, reload=True, flag="--drain-grace", metavar="SECONDS",
        help="on SIGTERM health turns NOT_SERVING at once and calls are still answered this long, so that load "
             "balancers take the daemon out first; skipped when no health check came in the last minute")
    max_connection_age_seconds: float = setting(
        0.0, ge=0, flag="--max-connection-age", metavar="SECONDS",
        help="connections older than this get a GOAWAY (with +-10 % jitter), so long-lived clients reconnect and "
             "spread onto new daemons; 0 keeps connections for good")
    max_connection_age_grace_seconds: float = setting(
        30.0, ge=0,
        help="calls still running on a connection past max_connection_age_seconds get this long before it is closed")
    # ---- observability
    metrics_listen: MetricsListen = setting(
        "127.0.0.1:9464", flag="--metrics-listen", metavar="HOST:PORT",
        help="Prometheus /metrics endpoint; loopback unless opened, port 0 picks one, empty turns it off")
    log_format: LogFormat = setting(
        "text", flag="--log-format",
        help="text (journald adds time stamps) or json (one object per line, for log shippers)")
    # ---- model repository
    model_repository: FilePath | None = setting(
        None, reload=True, flag="--model-repository", metavar="DIR",
        help="a directory of NAME/VERSION/ PaddleX directories, each NAME a model, all served and followed as they "
             "change")
    repository_defaults: ModelConfig = setting(
        default_factory=repository_model_defaults, reload=True,
        help="a [repository_defaults] table of [models.NAME] keys (without path) for every model found in "
             "model_repository; flags name these models *")
    settle_seconds: float = setting(
        2.0, ge=0, flag="--settle-seconds", help="a new version directory loads once no file in it changed this long")
    debounce_seconds: float = setting(
        0.5, gt=0, help="file-system events closer together than this lead to one reload")
    poll_files: bool = setting(
        False, flag="--poll-files",
        help="poll the model directories instead of using inotify (network file systems, some containers)")

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        """Checks across settings; each value's own checks ran already."""
        if not self.models and self.model_repository is None:
            raise ValueError("at least one model or a model repository is needed")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if not self.listen and self.unix_socket is None:
            raise ValueError("listen is empty and no unix_socket is set: the daemon would be unreachable")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        return self

    @property
    def max_pixels(self) -> int:
        return int(self.max_image_megapixels * 1_000_000)

    @property
    def max_request_pixels(self) -> int:
        return int(self.max_request_megapixels * 1_000_000)

    @property
    def max_model_input_pixels(self) -> int:
        return int(self.max_model_input_megapixels * 1_000_000)


# ---- reading the declarations --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Setting:
    """One declared setting, as the loader, the flags and the docs read it."""

    owner: type
    name: str
    hint: Any  # the type, with its Annotated checks
    default: Any  # dataclasses.MISSING when required
    help: str
    reload: bool
    flag: str | None
    metavar: str | None
    flag_unit: str | None
    per_model: bool
    bounds: tuple[Any, ...]  # annotated_types constraints: Ge, Gt, Le, Lt

    @property
    def base(self) -> Any:
        """The type without None and Annotated: int, float, bool, str, Path, a Literal..."""
        return _unwrap(self.hint)[0]

    @property
    def kind(self) -> Kind | None:
        return next((m for m in _unwrap(self.hint)[1] if isinstance(m, Kind)), None)

    @property
    def optional(self) -> bool:
        return self.default is None

    def shown_default(self) -> str:
        """The default as the file writes it; "" when there is none (unset, required, or a table)."""
        if self.default is dataclasses.MISSING:
            return ""
        if self.kind is not None and self.kind.type == "octal integer":
            return f"0o{self.default:o}"
        return toml_text(self.default)


def toml_text(value: Any) -> str:
    """A value as a TOML file writes it; "" for None and for tables."""
    if value is None or isinstance(value, (ModelConfig, SliceOptions, tuple)) and not _is_devices(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, VersionPolicy):
        return '"latest"' if value == VersionPolicy() else f'"{value}"'
    if _is_devices(value):
        return '"' + ",".join(d.name + ("?" + urlencode(d.options) if d.options else "") for d in value) + '"'
    return f'"{value}"'


def _is_devices(value: Any) -> bool:
    return isinstance(value, tuple) and bool(value) and all(isinstance(d, DeviceSpec) for d in value)


def _unwrap(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """A type hint without None, as (the type, its Annotated metadata)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    if typing.get_origin(hint) is Annotated:
        return hint.__origin__, hint.__metadata__
    return hint, ()


def settings(cls: type) -> list[Setting]:
    """The settings of ModelConfig or ServeConfig, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        info = cls.__pydantic_fields__[f.name]  # type: ignore[attr-defined]
        extra = info.json_schema_extra or {}
        default = info.get_default(call_default_factory=True) if not info.is_required() else dataclasses.MISSING
        out.append(Setting(cls, f.name, hints[f.name], default, info.description or "", bool(extra["reload"]),
                           extra["flag"], extra["metavar"], extra["flag_unit"], bool(extra["per_model"]),
                           tuple(info.metadata)))
    return out


def reloaded_settings(cls: type = ServeConfig) -> frozenset[str]:
    """The settings a reload (SIGHUP) applies; a change to any other waits for a restart."""
    return frozenset(s.name for s in settings(cls) if s.reload)
