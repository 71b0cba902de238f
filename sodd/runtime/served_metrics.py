"""The served models in the daemon's metrics: what serves and how full its queue is (read from the
registry at each scrape), and how long loads and swaps took (from the registry's model events)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from sodd.observability.metrics import MODEL_LABELS, UNKNOWN, Metrics
from sodd.runtime.registry import ModelEvent, ModelRegistry, ModelState, ServedModel


def watch_models(metrics: Metrics, registry: ModelRegistry) -> None:
    """Follow a registry: queue depth and model info are read from it at each scrape, and its
    model events drive the load and swap series. Call before it loads anything."""
    metrics.registry.register(ServedModelsCollector(registry.models))
    registry.add_listener(ModelLifecycle(metrics, registry))


class ModelLifecycle:
    """Turns registry events into load and swap series, and starts a version's series when it
    serves. A load that starts while any version of the model serves (a newer version, or the same
    one re-read after its files changed) is a swap."""

    def __init__(self, metrics: Metrics, registry: ModelRegistry) -> None:
        self._metrics = metrics
        self._registry = registry
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], tuple[float, bool]] = {}

    def __call__(self, event: ModelEvent) -> None:
        key = (event.name, event.version)
        m = self._metrics
        if event.state is ModelState.LOADING:
            with self._lock:
                self._loading[key] = (time.perf_counter(), bool(self._registry.versions(event.name)))
            return
        if event.state not in (ModelState.READY, ModelState.FAILED):
            return
        with self._lock:
            started, swap = self._loading.pop(key, (None, bool(self._registry.versions(event.name))))
        labels = (event.name, str(event.version), event.device or UNKNOWN)
        if event.state is ModelState.FAILED:
            (m.swap_failures if swap else m.load_failures).labels(*labels).inc()
            return
        if started is not None:
            (m.swap_duration if swap else m.load_duration).labels(*labels).observe(time.perf_counter() - started)
        served = self._registry.versions(event.name).get(event.version)
        if served is not None:
            m.model_ready((served.name, str(served.version), served.device))


class ServedModelsCollector(Collector):
    """sodd_model_info and sodd_queue_depth of every serving version, read at scrape time."""

    def __init__(self, models: Callable[[], Iterable[ServedModel]]) -> None:
        self._models = models

    def _families(self) -> tuple[InfoMetricFamily, GaugeMetricFamily]:
        info = InfoMetricFamily("sodd_model", "A served model: its directory, PaddleX model name and program "
                                "format.", labels=MODEL_LABELS)
        depth = GaugeMetricFamily("sodd_queue_depth", "Images waiting for a model's predictor.",
                                  labels=MODEL_LABELS)
        return info, depth

    def describe(self) -> Iterator[Metric]:
        # Names only: the registry checks for duplicates without calling the registry at start-up.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        info, depth = self._families()
        for served in self._models():
            labels = (served.name, str(served.version), served.device)
            info.add_metric(labels, {"model_name": served.model_dir.model_name,
                                     "program_format": served.model_dir.program_format,
                                     "directory": str(served.model_dir.path)})
            depth.add_metric(labels, served.runner.pending)
        yield info
        yield depth
