"""Loading one model version: files, inference.yml, plugin load on the first device that takes
it, predictor instances, and a warm-up run that checks the output signature.

Loading happens beside the serving versions and publishes nothing (the registry does): a version
that fails any step is closed here and never serves.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sodd.config.schema import ModelConfig
from sodd.errors import FailedPrecondition, ModelDirError
from sodd.model import pipeline
from sodd.model.modeldir import ModelDir, read_model_dir
from sodd.model.postprocess import DEFAULT_THRESHOLD
from sodd.observability.quiet import native_stdout_filtered
from sodd.observability.reports import DetectionObserver
from sodd.plugins.devices import DeviceSpec, parse_device, usable_cores
from sodd.plugins.discovery import available_device, plugin_for
from sodd.plugins.protocol import HardwarePlugin, Predictor
from sodd.runtime.engine import ModelRunner
from sodd.runtime.high_performance import device_label, select_backend
from sodd.runtime.worker_threads import WorkerThreads

# Load warnings keep the logger name operators filter on (docs/metrics.md).
log = logging.getLogger("sodd.runtime.registry")
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
        """The predictor and its clones; a backend that cannot clone runs one instance."""
        count = config.instances or 1
        narrow = [predictor]
        try:
            while len(narrow) < count:
                narrow.append(predictor.clone())
        except NotImplementedError:
            log.warning("model %s: this backend cannot clone predictors; running %d instance(s), not %d",
                        config.name, len(narrow), count)
        return Instances(narrow)

    def describe(self) -> str:
        if self.wide is None:
            return f"{len(self.narrow)} instances" if len(self.narrow) > 1 else ""
        return (f"{len(self.narrow)} instances x {self.narrow_threads} thread(s) under load, "
                f"1 x {self.wide_threads} threads for a lone request")


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
        if not pipeline.has_detector_outputs(outputs):
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


class ModelLoader:
    """Loads versions on the plugins it is given; their engines run on `workers`."""

    def __init__(self, plugins: dict[str, HardwarePlugin], *, max_pending: int, workers: WorkerThreads,
                 cpu_threads: int | None = None, max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
                 observer: DetectionObserver | None = None) -> None:
        self._plugins = plugins
        self._observer = observer  # told each predictor run's size
        self._max_pending = max_pending
        self._workers = workers
        self._cpu_threads = cpu_threads
        self._max_input_pixels = max_input_pixels

    def load(self, config: ModelConfig, version: int, path: Path, fingerprint: tuple = ()) -> ServedModel:
        """Load, validate and warm up one version. Blocking; raises when any step fails."""
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
            # Named with its precision, as high-performance mode names its choice: int8 and f32 of
            # the same model are different results, in responses and in metrics.
            return self._warm(config, version, model_dir, fingerprint, device_label(device), instances, failures)
        raise FailedPrecondition(f"model {config.name} could not be loaded on any device: " + "; ".join(failures))

    def _load_on(self, model_dir: ModelDir, device: DeviceSpec, threads: int | None = None) -> Predictor:
        plugin = plugin_for(self._plugins, device)
        available_device(plugin, device)
        options = dict(device.options)
        threads = threads or self._cpu_threads
        if device.type in CPU_DEVICE_TYPES and threads and "threads" not in options:
            options["threads"] = str(threads)
        with native_stdout_filtered():  # Paddle's oneDNN passes print check lines on stdout
            return plugin.load(model_dir, device.name, options)

    def _warm(self, config: ModelConfig, version: int, model_dir: ModelDir, fingerprint: tuple, device: str,
              instances: Instances, notes: list[str]) -> ServedModel:
        """Wrap loaded predictors in a runner and warm them up; close them if that fails."""
        first = instances.narrow[0]
        served = ServedModel(
            config=config, version=version, model_dir=model_dir, device=device,
            runner=ModelRunner(instances.narrow, self._max_pending, config.name, workers=self._workers,
                               max_batch_size=config.max_batch_size, max_queue_delay=config.max_queue_delay_seconds,
                               combine_requests=combines_requests(config, device), wide=instances.wide,
                               observe_batch=None if self._observer is None else
                               functools.partial(self._observer.batch_ran, config.name, version, device)),
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
