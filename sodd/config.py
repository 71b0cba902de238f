"""The daemon's configuration: parsed and validated once, then frozen.

Nothing on the request path reads files or environment variables; it reads these objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from sodd.devices import DeviceSpec, parse_devices

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
DEFAULT_MODEL_NAME = "default"


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: Path
    devices: tuple[DeviceSpec, ...] = field(default_factory=lambda: parse_devices("cpu"))
    # The daemon-level threshold for this model; None falls back to draw_threshold, then 0.5.
    threshold: float | None = None
    max_batch_size: int = 8

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"model name {self.name!r} must be non-empty and contain no '/'")
        if self.threshold is not None and not (0 <= self.threshold <= 1):
            raise ValueError(f"model {self.name}: threshold {self.threshold} is outside [0, 1]")
        if self.max_batch_size < 1:
            raise ValueError(f"model {self.name}: max_batch_size must be at least 1")


@dataclass(frozen=True)
class ServeConfig:
    models: tuple[ModelConfig, ...]
    listen: str = "127.0.0.1:50051"
    # Refuse bigger images before decoding them; 8K is 33 MP, so 50 leaves room for real photos.
    max_image_megapixels: float = 50.0
    max_message_bytes: int = 64 * 1024 * 1024
    # Requests allowed to wait per model before RESOURCE_EXHAUSTED.
    max_pending: int = 64
    # Threads for decoding and preprocessing (they release the GIL inside OpenCV).
    preprocess_workers: int = 2
    # Threads each CPU predictor may use; None lets the plugin choose (all cores).
    cpu_threads: int | None = None
    # Prometheus endpoint, HOST:PORT; loopback unless the operator opens it. Empty turns it off.
    metrics_listen: str = "127.0.0.1:9464"
    # "text" (journald adds the time) or "json" (one object per line, for log shippers).
    log_format: str = "text"

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("at least one model is needed")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if not (self.max_image_megapixels > 0 and math.isfinite(self.max_image_megapixels)):
            raise ValueError("max_image_megapixels must be a positive number")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        if self.max_pending < 1 or self.preprocess_workers < 1:
            raise ValueError("max_pending and preprocess_workers must be at least 1")
        host_port = self.metrics_listen.rpartition(":")
        if self.metrics_listen and not (host_port[1] and host_port[2].isdigit() and int(host_port[2]) < 65536):
            raise ValueError(f"metrics_listen {self.metrics_listen!r} must be HOST:PORT (or empty to turn it off)")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, got {self.log_format!r}")

    @property
    def max_pixels(self) -> int:
        return int(self.max_image_megapixels * 1_000_000)

    @property
    def default_model(self) -> str:
        return self.models[0].name
