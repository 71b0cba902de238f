"""The loaded model versions and the leases requests hold on them.

A request leases the version it runs on; a swap publishes the new version first and then retires
the old one, which closes only when its last lease is released. So a swap never fails a request
and never mutates a version in use. Loading (files, inference.yml, plugin load, a warm-up run
that checks the output signature) happens beside the serving versions; a version that fails any
step is never published.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sodd.config.schema import ModelConfig
from sodd.errors import FailedPrecondition, ModelDirError, NotFound
from sodd.model import pipeline
from sodd.model.modeldir import ModelDir, read_model_dir
from sodd.model.postprocess import DEFAULT_THRESHOLD
from sodd.observability.quiet import native_stdout_filtered
from sodd.plugins.devices import DeviceSpec, parse_device, usable_cores
from sodd.plugins.protocol import HardwarePlugin, PluginProblem, Predictor
from sodd.runtime.engine import ModelRunner
from sodd.runtime.heap import release_freed_memory
from sodd.runtime.high_performance import select_backend

log = logging.getLogger(__name__)
WARMUP_RUNS = 2
WARMUP_SIZE = (640, 640)  # for programs without a fixed input size
DEFAULT_MAX_INPUT_PIXELS = 16_000_000
# Device types whose plugins run on the host CPU and so take `sodd serve --threads`.
CPU_DEVICE_TYPES = ("cpu", "openvino", "onnxruntime")


# Narrow predictors the automatic CPU set-up runs at most: each keeps its own activations.
MAX_AUTO_INSTANCES = 4


def combines_requests(config: ModelConfig, device: str) -> bool:
    """Whether images of different requests share batches: by default not on CPU backends, where
    a batch costs as much per image as single runs (docs/benchmarks.md)."""
    if config.combine_requests is not None:
        return config.combine_requests
    return parse_device(device).type not in CPU_DEVICE_TYPES + ("arm",)


@dataclass(frozen=True)
class Instances:
    """The predictors of one loaded version: `narrow` run side by side, `wide` alone (engine)."""

    narrow: list[Predictor]
    wide: Predictor | None = None
    narrow_threads: int | None = None
    wide_threads: int | None = None

    @staticmethod
    def of(predictor: Predictor, config: ModelConfig) -> Instances:
        """The predictor and its clones; a backend without `clone` runs one instance."""
        count = config.instances or 1
        clone = getattr(predictor, "clone", None)
        if count > 1 and clone is None:
            log.warning("model %s: this backend cannot clone predictors; running 1 instance, not %d",
                        config.name, count)
        return Instances([predictor] + ([clone() for _ in range(count - 1)] if clone else []))

    def describe(self) -> str:
        if self.wide is None:
            return f"{len(self.narrow)} instances" if len(self.narrow) > 1 else ""
        return (f"{len(self.narrow)} instances x {self.narrow_threads} thread(s) under load, "
                f"1 x {self.wide_threads} threads for a lone request")


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"
    UNLOADED = "unloaded"


@dataclass(frozen=True)
class ModelEvent:
    name: str
    version: int
    state: ModelState
    reason: str = ""
    device: str = ""
    time: float = field(default_factory=time.time)


@dataclass
class ServedModel:
    """One loaded version of a model on one device."""

    config: ModelConfig
    version: int
    model_dir: ModelDir
    device: str
    runner: ModelRunner
    notes: str = ""
    fingerprint: tuple = ()
    leases: int = 0
    draining: bool = False
    # A copy replaced by new files of the same version keeps that version's status when it closes.
    replaced: bool = False

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class VersionStatus:
    """What GetModel/ListModels say of a version that is not (or not only) serving."""

    state: ModelState
    reason: str = ""
    path: Path | None = None


def check_input_size(model_dir: ModelDir, max_pixels: int) -> None:
    """Refuse, before any predictor exists, a network input that warm-up and every request would
    have to allocate: loading is bounded by configuration like requests are."""
    height, width = model_dir.input_size or WARMUP_SIZE
    if height * width > max_pixels:
        raise ModelDirError(f"inference.yml asks for a {width}x{height} network input, above the limit of "
                            f"{max_pixels / 1e6:g} megapixels (max_model_input_megapixels)")


def warm_up(served: ServedModel, runs: int = WARMUP_RUNS) -> None:
    """Run a neutral image through the whole path and check the output signature."""
    h, w = served.model_dir.input_size or WARMUP_SIZE
    image = np.full((h, w, 3), 114, dtype=np.uint8)
    prepared = pipeline.prepare_images(served.model_dir, [image])
    for _ in range(runs):
        outputs = served.runner.run_sync(
            pipeline.network_inputs(prepared, served.runner.predictor.input_names)).outputs
        if len(outputs) < 2:
            raise ModelDirError(f"the program has {len(outputs)} outputs; a detector returns boxes and counts")
        boxes, counts = np.asarray(outputs[0]), np.asarray(outputs[1])
        if boxes.size and (boxes.ndim != 2 or boxes.shape[1] != 6):
            raise ModelDirError(f"the first output has shape {list(boxes.shape)}, expected [N, 6] box rows")
        if counts.reshape(-1).shape != (1,):
            raise ModelDirError(f"the second output has shape {list(counts.shape)}, expected one count per image")
        pipeline.boxes_per_image(outputs, prepared, served.model_dir, DEFAULT_THRESHOLD)
    # Each instance's first run is slow (oneDNN builds its kernels there): pay for it before serving.
    # The version is not published yet, so no request can be using these predictors now.
    inputs = pipeline.network_inputs(prepared, served.runner.predictor.input_names)
    for predictor in served.runner.all_predictors:
        predictor.run(inputs)


class ModelRegistry:
    def __init__(self, plugins: dict[str, HardwarePlugin], *, max_pending: int,
                 cpu_threads: int | None = None, plugin_problems: list[PluginProblem] | None = None,
                 max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> None:
        self._plugins = plugins
        self._max_input_pixels = max_input_pixels
        self.plugin_problems = list(plugin_problems or [])
        self._max_pending = max_pending
        self._cpu_threads = cpu_threads
        self._lock = threading.Lock()
        self._serving: dict[str, dict[int, ServedModel]] = {}
        self._status: dict[str, dict[int, VersionStatus]] = {}
        self._configs: dict[str, ModelConfig] = {}
        self._listeners: list[Callable[[ModelEvent], None]] = []
        self.default_name: str | None = None

    # -- plugins and devices ---------------------------------------------------------------

    @property
    def plugins(self) -> dict[str, HardwarePlugin]:
        return dict(self._plugins)

    def plugin_for(self, device: DeviceSpec) -> HardwarePlugin:
        for plugin in self._plugins.values():
            if device.type in plugin.device_types:
                return plugin
        known = sorted({t for p in self._plugins.values() for t in p.device_types})
        raise FailedPrecondition(f"no hardware plugin handles device type {device.type!r} (installed: {known})")

    def _load_on(self, model_dir: ModelDir, device: DeviceSpec, threads: int | None = None) -> Predictor:
        plugin = self.plugin_for(device)
        infos = {info.device: info for info in plugin.probe()}
        info = infos.get(device.name) or (infos.get(device.type) if device.index is None else None)
        if info is None and device.index is None:
            info = infos.get(f"{device.type}:0")  # a bare type means its first device: "gpu" is "gpu:0"
        if info is None and device.type in infos and not infos[device.type].available:
            info = infos[device.type]  # the plugin says the whole type is unavailable, and why
        if info is None:
            raise FailedPrecondition(f"device {device.name} does not exist (plugin {plugin.name} has {sorted(infos)})")
        if not info.available:
            raise FailedPrecondition(f"device {device.name} is unavailable: {info.reason}")
        options = dict(device.options)
        threads = threads or self._cpu_threads
        if device.type in CPU_DEVICE_TYPES and threads and "threads" not in options:
            options["threads"] = str(threads)
        with native_stdout_filtered():  # Paddle's oneDNN passes print check lines on stdout
            return plugin.load(model_dir, device.name, options)

    # -- events ----------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[ModelEvent], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[ModelEvent], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _emit(self, event: ModelEvent) -> None:
        level = logging.WARNING if event.state is ModelState.FAILED else logging.INFO
        log.log(level, "model %s version %d: %s%s%s", event.name, event.version, event.state.value,
                f" on {event.device}" if event.device else "", f" ({event.reason})" if event.reason else "")
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)

    def set_status(self, name: str, version: int, state: ModelState, reason: str = "", path: Path | None = None,
                   device: str = "") -> None:
        with self._lock:
            self._status.setdefault(name, {})[version] = VersionStatus(state, reason, path)
        self._emit(ModelEvent(name, version, state, reason, device))

    # -- loading and swapping --------------------------------------------------------------

    def register_config(self, config: ModelConfig) -> None:
        with self._lock:
            self._configs[config.name] = config
            if self.default_name is None:
                self.default_name = config.name

    def load_version(self, config: ModelConfig, version: int, path: Path, fingerprint: tuple = ()) -> ServedModel:
        """Load, validate and warm up one version beside whatever serves now. Blocking."""
        self.register_config(config)
        self.set_status(config.name, version, ModelState.LOADING, path=path)
        try:
            served = self._load(config, version, path, fingerprint)
        except Exception as exc:
            self.set_status(config.name, version, ModelState.FAILED, str(getattr(exc, "message", exc)), path)
            raise
        return served

    def _load(self, config: ModelConfig, version: int, path: Path, fingerprint: tuple) -> ServedModel:
        model_dir = read_model_dir(path)
        check_input_size(model_dir, self._max_input_pixels)
        if config.high_performance:
            # The fastest CPU backend whose boxes agree with Paddle fp32; its label names the device.
            selection = select_backend(model_dir, lambda spec: self._load_on(model_dir, spec), name=config.name)
            return self._warm(config, version, model_dir, fingerprint, selection.device_label,
                              Instances.of(selection.predictor, config), [selection.summary()])
        failures = []
        for device in config.devices:
            try:
                predictor = self._load_on(model_dir, device)
            except Exception as exc:  # noqa: BLE001 - try the next device in the list
                failures.append(f"{device.name}: {getattr(exc, 'message', exc)}")
                log.warning("model %s version %d: cannot load on %s: %s", config.name, version, device.name, exc)
                continue
            try:
                instances = self._instances(model_dir, device, predictor, config)
            except Exception:
                predictor.close()
                raise
            return self._warm(config, version, model_dir, fingerprint, device.name, instances, failures)
        raise FailedPrecondition(f"model {config.name} could not be loaded on any device: " + "; ".join(failures))

    def _warm(self, config: ModelConfig, version: int, model_dir: ModelDir, fingerprint: tuple, device: str,
              instances: Instances, notes: list[str]) -> ServedModel:
        """Wrap loaded predictors in a runner and warm them up; close them if that fails."""
        first = instances.narrow[0]
        served = ServedModel(
            config=config, version=version, model_dir=model_dir, device=device,
            runner=ModelRunner(instances.narrow, self._max_pending, config.name, config.max_batch_size,
                               config.max_queue_delay_seconds, combines_requests(config, device), instances.wide),
            notes="; ".join(notes + [n for n in (first.notes, instances.describe()) if n]),
            fingerprint=fingerprint,
        )
        try:
            warm_up(served)
        except Exception:
            served.runner.close()
            raise
        return served

    def _instances(self, model_dir: ModelDir, device: DeviceSpec, predictor: Predictor,
                   config: ModelConfig) -> Instances:
        """The predictors a version runs on: as configured, or on a multi-core CPU by default one
        predictor with all cores for lone requests plus narrow ones that share the cores under load."""
        cores = usable_cores()
        automatic = (config.instances is None and device.type in CPU_DEVICE_TYPES and cores > 1
                     and self._cpu_threads is None and "threads" not in device.options)
        if not automatic:
            return Instances.of(predictor, config)
        count = min(cores, MAX_AUTO_INSTANCES)
        threads = cores // count
        # Independent predictors, not clones: two 30-minute soaks with hot swaps every minute died of a
        # segfault in Paddle's kernels with clones serving, and Paddle's tracker has reports of clones
        # crashing beside other predictors. One predictor per thread is its documented safe pattern;
        # the cost is one more copy of the weights per instance.
        narrow = []
        try:
            for _ in range(count):
                narrow.append(self._load_on(model_dir, device, threads))
        except Exception:
            for loaded in narrow:
                loaded.close()
            raise
        return Instances(narrow, predictor, threads, cores)

    def publish(self, served: ServedModel) -> ServedModel | None:
        """Make `served` answer requests; returns the version object it replaces, if any."""
        with self._lock:
            versions = self._serving.setdefault(served.name, {})
            replaced = versions.get(served.version)
            versions[served.version] = served
            self._status.setdefault(served.name, {})[served.version] = VersionStatus(
                ModelState.READY, served.notes, served.model_dir.path)
        self._emit(ModelEvent(served.name, served.version, ModelState.READY, served.notes, served.device))
        if replaced is not None:
            self._retire(replaced, keep_status=True)
        return replaced

    def unpublish(self, name: str, version: int) -> None:
        """Stop routing requests to a version; it closes once its in-flight requests finish."""
        with self._lock:
            served = self._serving.get(name, {}).pop(version, None)
        if served is not None:
            self._retire(served, keep_status=False)

    def _retire(self, served: ServedModel, keep_status: bool) -> None:
        reason = "replaced by new files of the same version" if keep_status else ""
        with self._lock:
            served.draining = True
            served.replaced = keep_status
            idle = served.leases == 0
            if not keep_status:
                self._status.setdefault(served.name, {})[served.version] = VersionStatus(
                    ModelState.DRAINING, "", served.model_dir.path)
        self._emit(ModelEvent(served.name, served.version, ModelState.DRAINING, reason, served.device))
        if idle:
            self._close(served)

    def _close(self, served: ServedModel) -> None:
        reason = "replaced by new files of the same version" if served.replaced else ""

        def close() -> None:
            served.runner.close()
            release_freed_memory()
            with self._lock:
                current = self._status.get(served.name, {}).get(served.version)
                if not served.replaced and current is not None and current.state is ModelState.DRAINING:
                    self._status[served.name][served.version] = VersionStatus(ModelState.UNLOADED)
            self._emit(ModelEvent(served.name, served.version, ModelState.UNLOADED, reason, served.device))

        # Closing joins the predictor's thread; never do that on the event loop.
        threading.Thread(target=close, name=f"unload-{served.name}-{served.version}", daemon=True).start()

    def forget_status(self, name: str, version: int) -> None:
        with self._lock:
            self._status.get(name, {}).pop(version, None)

    # -- requests --------------------------------------------------------------------------

    def _resolve(self, name: str, version: int) -> ServedModel:
        key = name or self.default_name or ""
        versions = self._serving.get(key)
        if not versions:
            known = sorted(n for n, v in self._serving.items() if v)
            raise NotFound(f"model {key!r} is not served (served: {known})")
        if version:
            served = versions.get(version)
            if served is None:
                raise NotFound(f"model {key!r} has no version {version} (available: {sorted(versions)})")
            return served
        return versions[max(versions)]

    @contextmanager
    def lease(self, name: str, version: int = 0) -> Iterator[ServedModel]:
        """The version a request runs on, kept open until the request is done."""
        with self._lock:
            served = self._resolve(name, version)
            served.leases += 1
        try:
            yield served
        finally:
            with self._lock:
                served.leases -= 1
                closing = served.draining and served.leases == 0
            if closing:
                self._close(served)

    def get(self, name: str, version: int = 0) -> ServedModel:
        with self._lock:
            return self._resolve(name, version)

    def versions(self, name: str) -> dict[int, ServedModel]:
        with self._lock:
            return dict(self._serving.get(name, {}))

    def models(self) -> list[ServedModel]:
        with self._lock:
            return [s for versions in self._serving.values() for s in versions.values()]

    def statuses(self) -> dict[str, dict[int, VersionStatus]]:
        with self._lock:
            return {name: dict(v) for name, v in self._status.items()}

    def config(self, name: str) -> ModelConfig | None:
        with self._lock:
            return self._configs.get(name)

    # -- one-shot use (tools, tests) -------------------------------------------------------

    def load(self, config: ModelConfig) -> ServedModel:
        """Load the directory in `config.path` as version 1 and serve it."""
        served = self.load_version(config, 1, config.path)
        self.publish(served)
        return served

    def close(self) -> None:
        with self._lock:
            all_served = [s for versions in self._serving.values() for s in versions.values()]
            self._serving.clear()
        for served in all_served:
            served.runner.close()
