"""Prometheus series: every series the daemon exports, and how a detection report becomes
observations.

Each daemon owns its own `CollectorRegistry` rather than prometheus-client's global one, so several
daemons (or tests) can live in one process without "duplicated timeseries" errors, and nothing
here changes prometheus-client's process-wide settings. Labels are kept to the served model
(model, version, device) plus a gRPC method and code or a stage: all bounded by configuration,
never by what a client sends. docs/metrics.md lists every series and why the buckets are where
they are.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterator
from importlib import metadata
from typing import TypeVar

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from sodd.observability.reports import DetectionReport

# Seconds. Edge latencies span four orders of magnitude: decode and postprocess of a small image take
# about a millisecond, a 320 px model on an NPU 5-20 ms, PP-YOLOE+ SOD on an ARM CPU a few seconds,
# and a sliced 8K image tens of seconds. Steps of 2-2.5x keep the interpolation error of
# histogram_quantile under one step everywhere; 30 s is where client deadlines have long expired.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Images per predictor run: batches are limited by max_batch_size (8 by default), powers of two
# match how operators choose it.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Boxes kept per image: small-object scenes (aerial, VisDrone) hold hundreds of objects, and
# PaddleX's NMS keeps at most a few hundred per image.
DETECTION_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# 1 is an unsliced image; a 1080p frame in 640-pixel windows is about 10, a 4K one about 40.
SLICE_BUCKETS = (1, 2, 5, 10, 20, 50, 100)
# Pixels (the base unit; a megapixel is 1e6). Each edge sits just above a common frame size so each
# lands in its own bucket: 320x320 model inputs, VGA, 720p, 1080p, 5 MP, 4K UHD, 12 MP, 20 MP,
# 8K UHD, and the default 50 MP limit.
PIXEL_BUCKETS = (1.1e5, 3.1e5, 9.3e5, 2.1e6, 5.1e6, 8.3e6, 1.25e7, 2.0e7, 3.32e7, 5.0e7)
# Seconds to load or swap a model: a CPU program loads in under a second, a TensorRT engine build
# takes minutes.
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# Stages every request goes through: their series exist from start-up so rate() has a zero to
# start from. Slicing and merging are observed only for the images that used them.
ALWAYS_STAGES = ("decode", "preprocess", "queue_wait", "inference", "postprocess")

# The label value for a request whose model or version is not served: a client-chosen name must
# never become a label value.
UNKNOWN = "unknown"
UNKNOWN_MODEL = (UNKNOWN, UNKNOWN, UNKNOWN)
MODEL_LABELS = ("model", "version", "device")
# The sodd.v1 methods whose request series start at zero (KServe's start with their first request).
DETECTION_METHODS = ("Detect", "DetectBatch", "DetectStream")
CANCEL_CAUSES = ("client", "deadline", "shutdown")
S = TypeVar("S", bound=Collector)


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


class _WithoutCreated(Collector):
    """One series without its `_created` samples: they double the sample count for nothing an edge
    operator queries. Filtered here, per series, because prometheus-client's own switch
    (disable_created_metrics) is process-wide and would change every other registry in the process."""

    def __init__(self, series: Collector) -> None:
        self._series = series

    def describe(self) -> Iterator[Metric]:
        yield from self._series.describe()  # type: ignore[attr-defined]

    def collect(self) -> Iterator[Metric]:
        for family in self._series.collect():
            created = f"{family.name}_created"
            family.samples = [s for s in family.samples if s.name != created]
            yield family


class Metrics:
    """Every series of one daemon, in its own registry. It is the detection core's observer
    (sodd.observability.reports.DetectionObserver): reports become stage, image and batch series."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        request_labels = (*MODEL_LABELS, "method", "code")
        self.requests = self._add(Counter(
            "sodd_requests", "Detection requests answered, by gRPC status code.", request_labels, registry=None))
        self.request_duration = self._add(Histogram(
            "sodd_request_duration_seconds", "Time from receiving a detection request to its answer, "
            "by gRPC status code.", request_labels, buckets=LATENCY_BUCKETS, registry=None))
        self.in_flight = self._add(Gauge(
            "sodd_requests_in_flight", "Detection requests being handled now.", MODEL_LABELS, registry=None))
        self.stage_duration = self._add(Histogram(
            "sodd_stage_duration_seconds", "Time spent in one stage: decode, preprocess, queue_wait, "
            "inference, postprocess, slicing, merging.", (*MODEL_LABELS, "stage"), buckets=LATENCY_BUCKETS,
            registry=None))
        self.batch_size = self._add(Histogram(
            "sodd_batch_size", "Images per predictor run.", MODEL_LABELS, buckets=BATCH_BUCKETS, registry=None))
        self.detections = self._add(Histogram(
            "sodd_detections_per_image", "Boxes returned per image.", MODEL_LABELS, buckets=DETECTION_BUCKETS,
            registry=None))
        self.slices = self._add(Histogram(
            "sodd_slices_per_image", "Network runs per image: 1 unsliced, the windows (plus the whole image) "
            "when sliced.", MODEL_LABELS, buckets=SLICE_BUCKETS, registry=None))
        self.input_pixels = self._add(Histogram(
            "sodd_input_pixels", "Decoded input image size in pixels (width times height).", MODEL_LABELS,
            buckets=PIXEL_BUCKETS, registry=None))
        self.load_duration = self._add(Histogram(
            "sodd_model_load_duration_seconds", "Time to load, warm up and publish a model that was not "
            "serving yet.", MODEL_LABELS, buckets=LOAD_BUCKETS, registry=None))
        self.load_failures = self._add(Counter(
            "sodd_model_load_failures", "Model versions that could not be loaded on any of their devices.",
            MODEL_LABELS, registry=None))
        self.swap_duration = self._add(Histogram(
            "sodd_model_swap_duration_seconds", "Time to load, warm up and publish a version while the model "
            "serves, labelled with that version.", MODEL_LABELS, buckets=LOAD_BUCKETS, registry=None))
        self.swap_failures = self._add(Counter(
            "sodd_model_swap_failures", "Swaps that failed and left the old version serving, labelled with the "
            "version that failed.", MODEL_LABELS, registry=None))
        self.cancelled = self._add(Counter(
            "sodd_requests_cancelled", "Detection requests that ended CANCELLED or DEADLINE_EXCEEDED, by cause: "
            "client (cancelled or gone), deadline, shutdown.", ("method", "cause"), registry=None))
        for method in DETECTION_METHODS:
            for cause in CANCEL_CAUSES:
                self.cancelled.labels(method, cause)
        # Every gRPC method, detection or not: management, listings, health, reflection, KServe.
        self.calls = self._add(Counter(
            "sodd_grpc_calls", "gRPC calls ended, by full method name and status code (including calls "
            "refused before their request was read).", ("grpc_method", "code"), registry=None))
        self.call_duration = self._add(Histogram(
            "sodd_grpc_call_duration_seconds", "Time from a gRPC call's start to its end (a stream's whole "
            "life), by full method name.", ("grpc_method",), buckets=LATENCY_BUCKETS, registry=None))
        self.watch_failures = self._add(Counter(
            "sodd_model_watch_failures", "Times the model-directory watcher failed (it retries with backoff).",
            registry=None))
        self._start_request_series(UNKNOWN_MODEL, latency=False)
        build = self._add(Info("sodd_build", "The daemon's version and its main runtime components.", registry=None))
        build.info({"version": _package_version("sodd"), "python": platform.python_version(),
                    "grpcio": _package_version("grpcio"), "paddlepaddle": _package_version("paddlepaddle")})

    def _add(self, series: S) -> S:
        self.registry.register(_WithoutCreated(series))
        return series

    def model_ready(self, labels: tuple[str, str, str]) -> None:
        """A version serves: its series start at zero, so rate() sees its first request and first error."""
        self.in_flight.labels(*labels)
        self._start_request_series(labels)
        for stage in ALWAYS_STAGES:
            self.stage_duration.labels(*labels, stage)
        for family in (self.detections, self.input_pixels, self.slices, self.batch_size):
            family.labels(*labels)

    def _start_request_series(self, labels: tuple[str, str, str], latency: bool = True) -> None:
        """A series that first appears with a value hides that value from rate(): the first errors
        would never raise an error ratio. So every code starts at zero, as go-grpc-prometheus does;
        latency histograms only for OK, as they are 17 series each."""
        for method in DETECTION_METHODS:
            for code in grpc.StatusCode:
                self.requests.labels(*labels, method, code.name)
            if latency:
                self.request_duration.labels(*labels, method, grpc.StatusCode.OK.name)

    # -- the detection core's observer -------------------------------------------------------

    def detected(self, report: DetectionReport) -> None:
        labels = report.labels
        for image in report.images:
            self.detections.labels(*labels).observe(image.detections)
            self.input_pixels.labels(*labels).observe(image.pixels)
            self.slices.labels(*labels).observe(max(image.slices, 1))
        if not report.images:
            return
        # Decode and preprocess handle all of a request's images at once: one value per request.
        # The other stages are per image: how long that image waited, the predictor run that
        # carried it (shared with its batch mates), its own postprocess, slicing and merging.
        self._observe_stage(labels, "decode", report.decode)
        self._observe_stage(labels, "preprocess", report.preprocess)
        for image in report.images:
            self._observe_stage(labels, "queue_wait", image.queue)
            self._observe_stage(labels, "inference", image.inference)
            self._observe_stage(labels, "postprocess", image.postprocess)
            self._observe_stage(labels, "slicing", image.slicing)
            self._observe_stage(labels, "merging", image.merging)

    def batch_ran(self, model: str, version: int, device: str, images: int) -> None:
        self.batch_size.labels(model, str(version), device).observe(images)

    def _observe_stage(self, labels: tuple[str, str, str], stage: str, value: float) -> None:
        if stage not in ALWAYS_STAGES and not value:
            return  # slicing and merging only when the image used them
        if math.isfinite(value) and value >= 0:
            self.stage_duration.labels(*labels, stage).observe(value)
