"""Prometheus metrics: the series the daemon exports, the interceptor that observes each request,
and the HTTP endpoint Prometheus scrapes.

Each daemon owns its own `CollectorRegistry` rather than prometheus-client's global one, so several
daemons (or tests) can live in one process without "duplicated timeseries" errors. Labels are kept
to the served model (model, version, device) plus a gRPC method and code or a stage: all bounded
by configuration, never by what a client sends. docs/metrics.md lists every series and why the
buckets are where they are.
"""

from __future__ import annotations

import inspect
import logging
import math
import platform
import selectors
import socket
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import grpc
import prometheus_client
from google.protobuf.message import Message
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from sodd.observability.logs import log_request
from sodd.runtime.registry import ModelEvent, ModelRegistry, ModelState, ServedModel

log = logging.getLogger(__name__)

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

# The request stages that the response's StageTimings carry, by the field that holds each.
STAGE_FIELDS = {
    "decode": "decode_seconds",
    "preprocess": "preprocess_seconds",
    "queue_wait": "queue_seconds",
    "inference": "inference_seconds",
    "postprocess": "postprocess_seconds",
    # Sliced inference: observed once StageTimings carries these fields and a request is sliced.
    "slicing": "slicing_seconds",
    "merging": "merging_seconds",
}
# Stages that run once per request, for all its images together; the others are per image.
PER_REQUEST_STAGES = ("decode", "preprocess")
# Stages every request goes through: their series exist from start-up so rate() has a zero to
# start from.
ALWAYS_STAGES = ("decode", "preprocess", "queue_wait", "inference", "postprocess")

# The label value for a request whose model or version is not served: a client-chosen name must
# never become a label value.
UNKNOWN = "unknown"
MODEL_LABELS = ("model", "version", "device")
DETECT_METHODS = {"/sodd.v1.Detector/Detect": "Detect", "/sodd.v1.Detector/DetectBatch": "DetectBatch"}
# Camera frames: one request per frame, each answered by a response or an error of its own.
STREAM_METHOD = "/sodd.v1.Detector/DetectStream"
_CODES = {code.value[0]: code for code in grpc.StatusCode}
CANCEL_CAUSES = ("client", "deadline", "shutdown")


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


class Metrics:
    """Every series of one daemon, in its own registry."""

    def __init__(self) -> None:
        # `_created` series double the sample count for nothing an edge operator queries.
        prometheus_client.disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        request_labels = (*MODEL_LABELS, "method", "code")
        self.requests = Counter("sodd_requests", "Detection requests answered, by gRPC status code.",
                                request_labels, registry=r)
        self.request_duration = Histogram(
            "sodd_request_duration_seconds", "Time from receiving a detection request to its answer, "
            "by gRPC status code.", request_labels, buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("sodd_requests_in_flight", "Detection requests being handled now.",
                               MODEL_LABELS, registry=r)
        self.stage_duration = Histogram(
            "sodd_stage_duration_seconds", "Time spent in one stage: decode, preprocess, queue_wait, "
            "inference, postprocess, slicing, merging.", (*MODEL_LABELS, "stage"), buckets=LATENCY_BUCKETS,
            registry=r)
        self.batch_size = Histogram("sodd_batch_size", "Images per predictor run.", MODEL_LABELS,
                                    buckets=BATCH_BUCKETS, registry=r)
        self.detections = Histogram("sodd_detections_per_image", "Boxes returned per image.", MODEL_LABELS,
                                    buckets=DETECTION_BUCKETS, registry=r)
        self.slices = Histogram("sodd_slices_per_image", "Network runs per image: 1 unsliced, the windows "
                                "(plus the whole image) when sliced.", MODEL_LABELS, buckets=SLICE_BUCKETS,
                                registry=r)
        self.input_pixels = Histogram("sodd_input_pixels", "Decoded input image size in pixels "
                                      "(width times height).", MODEL_LABELS, buckets=PIXEL_BUCKETS, registry=r)
        self.load_duration = Histogram("sodd_model_load_duration_seconds", "Time to load, warm up and publish "
                                       "a model that was not serving yet.", MODEL_LABELS, buckets=LOAD_BUCKETS,
                                       registry=r)
        self.load_failures = Counter("sodd_model_load_failures", "Model versions that could not be loaded on any "
                                     "of their devices.", MODEL_LABELS, registry=r)
        self.swap_duration = Histogram("sodd_model_swap_duration_seconds", "Time to load, warm up and publish "
                                       "a version while the model serves, labelled with that version.", MODEL_LABELS,
                                       buckets=LOAD_BUCKETS, registry=r)
        self.swap_failures = Counter("sodd_model_swap_failures", "Swaps that failed and left the old version "
                                     "serving, labelled with the version that failed.", MODEL_LABELS, registry=r)
        self.cancelled = Counter("sodd_requests_cancelled", "Detection requests that ended CANCELLED or "
                                 "DEADLINE_EXCEEDED, by cause: client (cancelled or gone), deadline, shutdown.",
                                 ("method", "cause"), registry=r)
        for method in (*DETECT_METHODS.values(), "DetectStream"):
            for cause in CANCEL_CAUSES:
                self.cancelled.labels(method, cause)
        self.watch_failures = Counter("sodd_model_watch_failures", "Times the model-directory watcher failed "
                                      "(it retries with backoff).", registry=r)
        self._start_request_series((UNKNOWN, UNKNOWN, UNKNOWN), latency=False)
        build = Info("sodd_build", "The daemon's version and its main runtime components.", registry=r)
        build.info({"version": _package_version("sodd"), "python": platform.python_version(),
                    "grpcio": _package_version("grpcio"), "paddlepaddle": _package_version("paddlepaddle")})

    def watch(self, registry: ModelRegistry) -> None:
        """Follow a registry: queue depth and model info are read from it at each scrape, and its
        model events drive the load and swap series. Call before it loads anything."""
        self.registry.register(_ServedModelsCollector(registry.models))
        registry.add_listener(_ModelLifecycle(self, registry))

    def model_ready(self, served: ServedModel) -> None:
        labels = (served.name, str(served.version), served.device)
        self.in_flight.labels(*labels)
        self._start_request_series(labels)
        for stage in ALWAYS_STAGES:
            self.stage_duration.labels(*labels, stage)
        for family in (self.detections, self.input_pixels, self.slices):
            family.labels(*labels)
        # Attached once warm-up is over, so warm-up runs are not counted as batches.
        served.runner.observe_batch = self.batch_size.labels(*labels).observe

    def _start_request_series(self, labels: tuple[str, str, str], latency: bool = True) -> None:
        """A series that first appears with a value hides that value from rate(): the first errors
        would never raise an error ratio. So every code starts at zero, as go-grpc-prometheus does;
        latency histograms only for OK, as they are 17 series each."""
        for method in (*DETECT_METHODS.values(), "DetectStream"):
            for code in grpc.StatusCode:
                self.requests.labels(*labels, method, code.name)
            if latency:
                self.request_duration.labels(*labels, method, grpc.StatusCode.OK.name)

    def observe_stage(self, name: str, version: int, device: str, stage: str, seconds: float) -> None:
        """For stages measured outside a response's StageTimings."""
        self.stage_duration.labels(name, str(version), device, stage).observe(seconds)


class _ModelLifecycle:
    """Turns registry events into load and swap series. A load that starts while any version of the
    model serves (a newer version, or the same one re-read after its files changed) is a swap."""

    def __init__(self, metrics: Metrics, registry: ModelRegistry,
                 shutting_down: Callable[[], bool] = lambda: False) -> None:
        self._metrics = metrics
        self._registry = registry
        self._shutting_down = shutting_down
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
            m.model_ready(served)


class _ServedModelsCollector(Collector):
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


@dataclass
class _Outcome:
    labels: tuple[str, str, str]
    request_id: str
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    results: list[Any] = field(default_factory=list)
    error: str = ""
    cause: str = ""  # why a request was cancelled: one of CANCEL_CAUSES


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Observes every Detect, DetectBatch and DetectStream frame from outside the service: its final
    status code, its latency, and the per-stage timings, model, version and device the response
    carries. It also gives each request an id before the service sees it, so the id the client gets
    back, the service's own log lines and the request log line all agree."""

    def __init__(self, metrics: Metrics, registry: ModelRegistry,
                 shutting_down: Callable[[], bool] = lambda: False) -> None:
        self._metrics = metrics
        self._registry = registry
        self._shutting_down = shutting_down

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = DETECT_METHODS.get(handler_call_details.method)
        if method is not None and handler.unary_unary is not None:
            unary = handler.unary_unary

            async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
                return await self._observe(method, unary, request, context)

            return grpc.unary_unary_rpc_method_handler(observed, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)
        if handler_call_details.method == STREAM_METHOD and handler.stream_stream is not None:
            stream = handler.stream_stream

            # grpc.aio tells streaming handlers apart by being async generator functions.
            async def observed_stream(requests: AsyncIterator[Any],
                                      context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for answer in self._observe_stream(stream, requests, context):
                    yield answer

            return grpc.stream_stream_rpc_method_handler(
                observed_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler

    def record_refusal(self, method: str, code: grpc.StatusCode, details: str) -> None:
        """A detection call refused before its request was read (call budgets, body deadline): counted
        and logged like an answered one, under unknown model labels."""
        name = DETECT_METHODS.get(method) or ("DetectStream" if method == STREAM_METHOD else None)
        if name is None:
            log.debug("%s refused: %s %s", method, code.name, details)
            return
        outcome = _Outcome((UNKNOWN, UNKNOWN, UNKNOWN), "", code, error=details)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            outcome.cause = "deadline"
        elif code == grpc.StatusCode.CANCELLED:
            outcome.cause = "shutdown" if self._shutting_down() else "client"
        self._end(name, outcome, time.perf_counter(), counted_in_flight=False, refused=True)

    def _labels(self, request: Any) -> tuple[str, str, str]:
        """The model a request will run on, resolved as the service will resolve it."""
        try:
            served = self._registry.get(request.model, request.version)
            return served.name, str(served.version), served.device
        except Exception:  # noqa: BLE001 - not served: the service answers NOT_FOUND
            pass
        try:  # a served model asked for a version it does not have
            served = self._registry.get(request.model)
            return served.name, UNKNOWN, served.device
        except Exception:  # noqa: BLE001
            return UNKNOWN, UNKNOWN, UNKNOWN

    def _begin(self, request: Any) -> _Outcome:
        # Another interceptor may hand over a refusing handler that never parses the request (the
        # token check does): such a request is still counted, under unknown labels.
        parsed = isinstance(request, Message)
        if parsed and not request.request_id:
            request.request_id = uuid.uuid4().hex
        outcome = _Outcome(self._labels(request) if parsed else (UNKNOWN, UNKNOWN, UNKNOWN),
                           request.request_id if parsed else "")
        self._metrics.in_flight.labels(*outcome.labels).inc()
        return outcome

    def _end(self, method: str, outcome: _Outcome, started: float, counted_in_flight: bool = True,
             refused: bool = False) -> None:
        if counted_in_flight:
            self._metrics.in_flight.labels(*outcome.labels).dec()
        try:
            self._record(method, outcome, time.perf_counter() - started, refused)
        except Exception:  # a metrics bug must not turn an answer into an error
            log.exception("recording metrics for %s failed", method)

    def _failed(self, exc: BaseException, context: grpc.aio.ServicerContext, outcome: _Outcome) -> None:
        if isinstance(exc, grpc.aio.AbortError):
            outcome.code = context.code() or grpc.StatusCode.UNKNOWN
            outcome.error = context.details() or ""
        elif isinstance(exc, Exception):
            outcome.code = grpc.StatusCode.UNKNOWN
            outcome.error = f"{type(exc).__name__}: {exc}"
        else:  # cancelled: by the client, by its deadline, or by the daemon stopping
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            outcome.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            outcome.cause = "deadline" if expired else "shutdown" if self._shutting_down() else "client"

    async def _observe(self, method: str, behaviour: Callable[..., Any], request: Any,
                       context: grpc.aio.ServicerContext) -> Any:
        outcome = self._begin(request)
        started = time.perf_counter()
        try:
            result = behaviour(request, context)
            response = await result if inspect.isawaitable(result) else result
            outcome.code = context.code() or grpc.StatusCode.OK
            if outcome.code != grpc.StatusCode.OK:  # answered with a status set, not aborted
                outcome.error = context.details() or ""
                if outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    outcome.cause = "deadline"  # it passed while the request waited for a predictor
            elif isinstance(response, Message):
                outcome.results = list(response.results) if method == "DetectBatch" else [response]
            return response
        except BaseException as exc:
            self._failed(exc, context, outcome)
            # The finished handler's frames hold the request; cleared, no cycle through the failure
            # can keep its payload alive until a full garbage collection.
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            self._end(method, outcome, started)

    async def _observe_stream(self, behaviour: Callable[..., Any], requests: AsyncIterator[Any],
                              context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """Each frame counts as one request, timed from when the service takes it to its answer.
        Answers come one per frame in the order sent, so a queue pairs them up."""
        method = "DetectStream"
        waiting: deque[tuple[_Outcome, float]] = deque()

        async def frames() -> AsyncIterator[Any]:
            async for request in requests:
                waiting.append((self._begin(request), time.perf_counter()))
                yield request

        stream_started = time.perf_counter()
        failure: _Outcome | None = None
        try:
            result = behaviour(frames(), context)
            if not hasattr(result, "__aiter__"):
                await result  # a handler that refuses the stream, or answers through context.write
                return
            async for answer in result:
                if waiting:
                    outcome, started = waiting.popleft()
                    _frame_answer(outcome, answer)
                    self._end(method, outcome, started)
                yield answer
        except BaseException as exc:
            failure = _Outcome((UNKNOWN, UNKNOWN, UNKNOWN), "")
            self._failed(exc, context, failure)
            raise
        finally:
            if failure is not None and not waiting:  # a stream refused or broken between frames
                self._end(method, failure, stream_started, counted_in_flight=False)
            while waiting:  # frames taken but never answered share the stream's fate
                outcome, started = waiting.popleft()
                outcome.code = failure.code if failure else grpc.StatusCode.UNKNOWN
                outcome.error = failure.error if failure else "the stream ended before this frame's answer"
                self._end(method, outcome, started)

    def _record(self, method: str, outcome: _Outcome, seconds: float, refused: bool = False) -> None:
        results = outcome.results
        labels = outcome.labels
        if results:  # the response names what actually ran
            first = results[0]
            labels = (first.model, str(first.version), first.device)
        m = self._metrics
        code = outcome.code.name
        m.requests.labels(*labels, method, code).inc()
        m.request_duration.labels(*labels, method, code).observe(seconds)
        if outcome.cause:
            m.cancelled.labels(method, outcome.cause).inc()
        self._record_results(labels, results)
        log_request({
            "method": method, "request_id": outcome.request_id, "model": labels[0], "version": labels[1],
            "device": labels[2], "code": code, "latency_seconds": seconds, "images": len(results),
            "detections": sum(len(r.boxes) for r in results), **({"error": outcome.error} if outcome.error else {}),
            **({"cause": outcome.cause} if outcome.cause else {}),
        }, quiet=refused)

    def _record_results(self, labels: tuple[str, str, str], results: list[Any]) -> None:
        if not results:
            return
        m = self._metrics
        for r in results:
            m.detections.labels(*labels).observe(len(r.boxes))
            m.input_pixels.labels(*labels).observe(r.image_width * r.image_height)
            m.slices.labels(*labels).observe(max(r.slices, 1))
        # Decode and preprocess handle all of a request's images at once: one value per request.
        # The other stages are per image: how long that image waited, the predictor run that
        # carried it (shared with its batch mates), its own postprocess, slicing and merging.
        present = {f.name for f in results[0].timings.DESCRIPTOR.fields}
        stages = [(stage, attr) for stage, attr in STAGE_FIELDS.items() if attr in present]
        for stage, attr in stages:
            for r in results[:1] if stage in PER_REQUEST_STAGES else results:
                self._observe_stage(labels, stage, getattr(r.timings, attr))

    def _observe_stage(self, labels: tuple[str, str, str], stage: str, value: float) -> None:
        if stage not in ALWAYS_STAGES and not value:
            return  # slicing and merging only when the request used them
        if math.isfinite(value) and value >= 0:
            self._metrics.stage_duration.labels(*labels, stage).observe(value)


def _frame_answer(outcome: _Outcome, answer: Any) -> None:
    """Fill a frame's outcome from its DetectStreamResponse: a response or a per-frame error."""
    kind = answer.WhichOneof("result") if isinstance(answer, Message) else None
    if kind == "error":
        outcome.code = _CODES.get(answer.error.code, grpc.StatusCode.UNKNOWN)
        outcome.error = answer.error.message
    else:
        outcome.code = grpc.StatusCode.OK
        if kind == "response":
            outcome.results = [answer.response]


# The metrics endpoint's bounds (MetricsEndpoint): threads rendering answers, connections waiting
# for their request at once, how long one may take to send it, and how long it may be.
METRICS_WORKERS = 2
METRICS_CONNECTIONS = 256
METRICS_TIMEOUT_SECONDS = 5.0
METRICS_HEAD_BYTES = 16 * 1024
METRICS_BACKLOG = 128


def split_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT, with [v6] brackets, into a host and a port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address {listen!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsEndpoint:
    """The HTTP endpoint Prometheus scrapes, on threads of its own: scrapes never wait on the
    asyncio loop, so a busy daemon still answers Prometheus.

    prometheus-client's own server gives every connection a thread and waits on it without a
    timeout: 1,000 idle connections made 1,023 threads, and a scrape after them timed out. Here
    one thread waits on every connection until its request head has arrived (at most
    METRICS_HEAD_BYTES, within METRICS_TIMEOUT_SECONDS, or the connection is closed), at most
    METRICS_CONNECTIONS connections wait at once (a new one closes the oldest), and
    METRICS_WORKERS threads render the answers with prometheus-client's WSGI app. Each answer
    closes its connection (Prometheus opens one per scrape when asked to)."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        host, port = split_listen(listen)
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(METRICS_BACKLOG)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self._app = make_wsgi_app(registry)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        # Connections waiting for their request head, oldest first: (deadline, bytes so far).
        self._waiting: dict[socket.socket, tuple[float, bytearray]] = {}
        self._workers = ThreadPoolExecutor(METRICS_WORKERS, thread_name_prefix="sodd-metrics")
        self._queued = 0  # answers handed to the workers and not finished; read and written under _lock
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="sodd-metrics-accept", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._closing = True
        self._wake_write.send(b"x")
        self._thread.join(5)
        self._workers.shutdown(wait=True, cancel_futures=True)

    # -- the waiting thread ------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._closing:
                timeout = None
                if self._waiting:
                    timeout = max(0.0, next(iter(self._waiting.values()))[0] - time.monotonic())
                for key, _ in self._selector.select(timeout):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is not self._wake_read:
                        self._receive(key.fileobj)  # type: ignore[arg-type]
                now = time.monotonic()
                for conn, (deadline, _) in list(self._waiting.items()):
                    if deadline > now:
                        break  # oldest first: the rest have later deadlines
                    self._drop(conn)
        finally:
            for conn in list(self._waiting):
                self._drop(conn)
            self._selector.close()
            self._listener.close()
            self._wake_read.close()
            self._wake_write.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, for one: the connections waiting are closed in time
                log.warning("metrics endpoint cannot accept a connection: %s", exc)
                return
            if len(self._waiting) >= METRICS_CONNECTIONS:
                self._drop(next(iter(self._waiting)))
            conn.setblocking(False)
            self._waiting[conn] = (time.monotonic() + METRICS_TIMEOUT_SECONDS, bytearray())
            self._selector.register(conn, selectors.EVENT_READ)

    def _receive(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        head = self._waiting[conn][1]
        head += data
        if not data or len(head) > METRICS_HEAD_BYTES:
            self._drop(conn)
        elif b"\r\n\r\n" in head:
            self._selector.unregister(conn)
            del self._waiting[conn]
            with self._lock:
                busy = self._queued >= METRICS_WORKERS * 4
                if not busy:
                    self._queued += 1
            if busy:  # scrapes arrive far slower than workers answer them: this is a flood
                conn.close()
            else:
                self._workers.submit(self._answer, conn, bytes(head))

    def _drop(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        del self._waiting[conn]
        conn.close()

    # -- the workers -------------------------------------------------------------------------

    def _answer(self, conn: socket.socket, head: bytes) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(METRICS_TIMEOUT_SECONDS)
            conn.sendall(self._response(head))
        except OSError:
            pass  # the client went away or stopped reading: nothing to tell it
        except Exception:  # noqa: BLE001 - a bug here must not end the worker
            log.exception("metrics endpoint failed to answer")
        finally:
            conn.close()
            with self._lock:
                self._queued -= 1

    def _response(self, head: bytes) -> bytes:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        method, target, _ = parts
        path, _, query = target.partition("?")
        headers = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                   "HTTP_ACCEPT": headers.get("accept", ""),
                   "HTTP_ACCEPT_ENCODING": headers.get("accept-encoding", ""), "SERVER_PROTOCOL": "HTTP/1.1"}
        started: list[Any] = []

        def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [status, response_headers]

        body = b"".join(self._app(environ, start_response))
        status, response_headers = started
        lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in response_headers),
                 f"Content-Length: {len(body)}", "Connection: close", "", ""]
        return "\r\n".join(lines).encode("latin-1") + (b"" if method == "HEAD" else body)
