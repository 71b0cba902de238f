"""The daemon's configuration: parsed and validated once, then frozen.

Nothing on the request path reads files or environment variables; it reads these objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from sodd.config.version_policy import VersionPolicy
from sodd.model.slicing import SliceOptions
from sodd.plugins.devices import DeviceSpec, parse_devices

DEFAULT_MODEL_DIR = Path(__file__).parents[1] / "default_model"
DEFAULT_MODEL_NAME = "default"


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: Path
    devices: tuple[DeviceSpec, ...] = field(default_factory=lambda: parse_devices("cpu"))
    # The daemon-level threshold for this model; None falls back to draw_threshold, then 0.5.
    threshold: float | None = None
    max_batch_size: int = 8
    # How long a queued image may wait for others to fill a batch; 0 batches only what already waits.
    max_queue_delay_seconds: float = 0.0
    # Predictor instances (threads) per loaded version; Paddle Inference clones share weights.
    # None: one on GPUs; on a multi-core CPU with no thread count set, one narrow instance per
    # core (at most 4) plus one using all cores for a lone request (see sodd.runtime.engine).
    instances: int | None = None
    # Whether images of different requests share batches; None: yes on GPUs and NPUs, not on CPUs,
    # where a batch costs as much per image as single runs. A DetectBatch's images batch either way.
    combine_requests: bool | None = None
    # Slice every request's image unless the request says otherwise (None: whole images).
    slicing: SliceOptions | None = None
    # Which complete versions of the model's directory to serve.
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    # Measure the CPU backends at load and serve the fastest whose boxes agree with Paddle fp32
    # (sodd.runtime.high_performance); the device list is then not used.
    high_performance: bool = False

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"model name {self.name!r} must be non-empty and contain no '/'")
        if self.threshold is not None and not (0 <= self.threshold <= 1):
            raise ValueError(f"model {self.name}: threshold {self.threshold} is outside [0, 1]")
        if self.max_batch_size < 1:
            raise ValueError(f"model {self.name}: max_batch_size must be at least 1")
        if self.instances is not None and self.instances < 1:
            raise ValueError(f"model {self.name}: instances must be at least 1")
        if not (0 <= self.max_queue_delay_seconds <= 10):
            raise ValueError(f"model {self.name}: max_queue_delay_seconds must be in [0, 10]")


@dataclass(frozen=True)
class ServeConfig:
    models: tuple[ModelConfig, ...]
    listen: str = "127.0.0.1:50051"
    # Refuse bigger images before decoding them; 8K is 33 MP, so 50 leaves room for real photos.
    max_image_megapixels: float = 50.0
    # Pixels all images of one request may hold together, read from their headers before decoding.
    max_request_megapixels: float = 200.0
    # Models whose network input is larger are refused at load: warm-up and every request allocate
    # buffers of that size (a 12000x12000 input took over 8 GB while loading).
    max_model_input_megapixels: float = 16.0
    max_message_bytes: int = 64 * 1024 * 1024
    # Network runs (images, or slicing windows) a model holds from admission to answer; more get
    # RESOURCE_EXHAUSTED, and a request that needs more on its own gets INVALID_ARGUMENT.
    max_pending: int = 64
    # Frames one DetectStream may have inside the daemon at once; the stream is not read further
    # until one is answered, so gRPC flow control pushes back on a camera that sends too fast.
    max_stream_frames: int = 4
    # DetectStream calls open at once; one more is refused with RESOURCE_EXHAUSTED.
    max_streams: int = 16
    # gRPC's own last-resort ceiling on calls in progress, every kind together; raised to at least
    # the budgets below plus 256 so that they refuse first (sodd.serving.budgets).
    max_concurrent_rpcs: int = 1024
    # Call budgets (sodd.serving.budgets): Detect, DetectBatch and DetectStream calls in progress; the other
    # Detector calls; health Watch and reflection streams. A call beyond its budget gets
    # RESOURCE_EXHAUSTED before its body is read, so with max_message_bytes they bound request memory.
    max_inference_calls: int = 128
    max_management_calls: int = 16
    max_health_watches: int = 32
    # Inference calls one client host may have in progress (the Unix socket is not counted).
    max_calls_per_peer: int = 64
    # A call whose request message has not arrived this long after its headers gets DEADLINE_EXCEEDED.
    request_body_timeout_seconds: float = 10.0
    # Images one DetectBatch may carry; checked before anything is decoded.
    max_request_images: int = 64
    # Threads for decoding and preprocessing (they release the GIL inside OpenCV).
    preprocess_workers: int = 2
    # Threads each CPU predictor may use; None lets the plugin choose (all cores).
    cpu_threads: int | None = None
    # A directory of <model name>/<version>/ PaddleX directories, all served and watched.
    model_repository: Path | None = None
    # Device list, policy, threshold and batch size for repository models (name and path are ignored).
    repository_defaults: ModelConfig = field(
        default_factory=lambda: ModelConfig(name="repository-defaults", path=Path(".")))
    # A version directory loads once no file in it changed for this long (see sodd.runtime.repository).
    settle_seconds: float = 2.0
    # File-system events closer together than this trigger one reload.
    debounce_seconds: float = 0.5
    # Poll the model directories instead of using inotify (network file systems, containers).
    poll_files: bool = False
    # Prometheus endpoint, HOST:PORT; loopback unless the operator opens it. Empty turns it off.
    metrics_listen: str = "127.0.0.1:9464"
    # "text" (journald adds the time) or "json" (one object per line, for log shippers).
    log_format: str = "text"
    # Local clients: a Unix domain socket (e.g. /run/sodd/sodd.sock), its mode and owner (user/group name or id).
    unix_socket: Path | None = None
    unix_socket_mode: int = 0o660
    unix_socket_owner: str | None = None
    unix_socket_group: str | None = None
    # TLS on the TCP listener; with tls_client_ca, clients must present a certificate that CA signed.
    # The files are re-read on SIGHUP.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Bearer tokens and the models each may use (see sodd.serving.auth); None serves anyone who can connect.
    tokens_file: Path | None = None
    # Without a tokens file, LoadModel and UnloadModel are accepted only from the Unix socket and
    # loopback unless this is set (see sodd.serving.auth).
    allow_remote_management: bool = False
    # On SIGTERM, in-flight requests get this long to finish before they are cancelled.
    drain_timeout_seconds: float = 10.0
    # On SIGTERM health turns NOT_SERVING at once and calls are still answered for this long, so
    # that balancers polling health take the daemon out first (skipped when no health check came
    # in the last minute: nothing polls). See sodd.serving.drain.
    drain_grace_seconds: float = 5.0
    # Connections older than this get a GOAWAY (gRPC adds +-10 % jitter), so long-lived clients
    # reconnect and spread onto new daemons; 0 keeps connections for good. Calls still running
    # then get max_connection_age_grace_seconds before the connection is closed.
    max_connection_age_seconds: float = 0.0
    max_connection_age_grace_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not self.models and self.model_repository is None:
            raise ValueError("at least one model or a model repository is needed")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        for key in ("max_image_megapixels", "max_request_megapixels", "max_model_input_megapixels"):
            if not (getattr(self, key) > 0 and math.isfinite(getattr(self, key))):
                raise ValueError(f"{key} must be a positive number")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        if self.settle_seconds < 0 or self.debounce_seconds <= 0:
            raise ValueError("settle_seconds must be >= 0 and debounce_seconds > 0")
        if min(self.max_stream_frames, self.max_streams, self.max_request_images, self.max_concurrent_rpcs) < 1:
            raise ValueError("max_stream_frames, max_streams, max_request_images and max_concurrent_rpcs "
                             "must be at least 1")
        if min(self.max_inference_calls, self.max_management_calls, self.max_health_watches,
               self.max_calls_per_peer) < 1:
            raise ValueError("max_inference_calls, max_management_calls, max_health_watches and max_calls_per_peer "
                             "must be at least 1")
        if not (self.request_body_timeout_seconds > 0 and math.isfinite(self.request_body_timeout_seconds)):
            raise ValueError("request_body_timeout_seconds must be a finite number above 0")
        if self.max_pending < 1 or self.preprocess_workers < 1:
            raise ValueError("max_pending and preprocess_workers must be at least 1")
        host_port = self.metrics_listen.rpartition(":")
        if self.metrics_listen and not (host_port[1] and host_port[2].isdigit() and int(host_port[2]) < 65536):
            raise ValueError(f"metrics_listen {self.metrics_listen!r} must be HOST:PORT (or empty to turn it off)")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, got {self.log_format!r}")
        if not self.listen and self.unix_socket is None:
            raise ValueError("listen is empty and no unix_socket is set: the daemon would be unreachable")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if not 0 <= self.unix_socket_mode <= 0o777:
            raise ValueError(f"unix_socket_mode {self.unix_socket_mode:#o} is not a file mode")
        if not (self.drain_timeout_seconds >= 0 and math.isfinite(self.drain_timeout_seconds)):
            raise ValueError("drain_timeout_seconds must be a finite number >= 0")
        for key in ("drain_grace_seconds", "max_connection_age_seconds", "max_connection_age_grace_seconds"):
            if not (getattr(self, key) >= 0 and math.isfinite(getattr(self, key))):
                raise ValueError(f"{key} must be a finite number >= 0")

    @property
    def max_pixels(self) -> int:
        return int(self.max_image_megapixels * 1_000_000)

    @property
    def max_request_pixels(self) -> int:
        return int(self.max_request_megapixels * 1_000_000)

    @property
    def max_model_input_pixels(self) -> int:
        return int(self.max_model_input_megapixels * 1_000_000)

    @property
    def default_model(self) -> str | None:
        return self.models[0].name if self.models else None
