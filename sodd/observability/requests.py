"""Each detection request's end: its request series and its one line in the request log.

Whoever sees a request from arrival to answer (the gRPC interceptor for sodd.v1, the KServe
servicer for its own requests) opens a `RequestRecord` with `RequestRecorder.begin`, fills in its
status and what answered it, and closes it with `finish`. That is the only place the request series
(sodd_requests_total, sodd_request_duration_seconds, sodd_requests_in_flight,
sodd_requests_cancelled_total) change and the only place the request log line is written, so
every protocol counts and logs the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import grpc

from sodd.observability.logs import log_request
from sodd.observability.metrics import UNKNOWN_MODEL, Metrics

log = logging.getLogger(__name__)


@dataclass
class RequestRecord:
    """One detection request (or stream frame) from arrival to answer."""

    method: str  # Detect, DetectBatch, DetectStream, ModelInfer, ModelStreamInfer
    labels: tuple[str, str, str] = UNKNOWN_MODEL  # the model it will run on, as resolved on arrival
    request_id: str = ""
    started: float = field(default_factory=time.perf_counter)
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    error: str = ""
    cause: str = ""  # why it was cancelled: one of metrics.CANCEL_CAUSES
    answered_by: tuple[str, str, str] | None = None  # the model version that answered it
    images: int = 0
    detections: int = 0
    in_flight: bool = False  # counted in sodd_requests_in_flight until it finishes

    def answered(self, labels: tuple[str, str, str], images: int, detections: int) -> None:
        self.code = grpc.StatusCode.OK
        self.answered_by, self.images, self.detections = labels, images, detections


class RequestRecorder:
    """Counts and logs finished requests into `metrics` (or only logs them, without metrics)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics

    def begin(self, method: str, labels: tuple[str, str, str], request_id: str = "") -> RequestRecord:
        """A request arrived and is being handled: counted in flight until `finish`."""
        record = RequestRecord(method, labels, request_id, in_flight=self._metrics is not None)
        if self._metrics is not None:
            self._metrics.in_flight.labels(*labels).inc()
        return record

    def finish(self, record: RequestRecord, refused: bool = False) -> None:
        """Count and log a request that has its answer. `refused` calls (turned away by a call budget
        before their request was read) log at debug level: in a flood they would bury everything
        else, and their counter says it."""
        seconds = time.perf_counter() - record.started
        labels = record.answered_by or record.labels  # what actually ran, when something did
        code = record.code.name
        try:
            m = self._metrics
            if m is not None:
                if record.in_flight:
                    m.in_flight.labels(*record.labels).dec()
                    record.in_flight = False
                m.requests.labels(*labels, record.method, code).inc()
                m.request_duration.labels(*labels, record.method, code).observe(seconds)
                if record.cause:
                    m.cancelled.labels(record.method, record.cause).inc()
        except Exception:  # a metrics bug must not turn an answer into an error
            log.exception("recording metrics for %s failed", record.method)
        log_request({
            "method": record.method, "request_id": record.request_id, "model": labels[0], "version": labels[1],
            "device": labels[2], "code": code, "latency_seconds": seconds, "images": record.images,
            "detections": record.detections, **({"error": record.error} if record.error else {}),
            **({"cause": record.cause} if record.cause else {}),
        }, quiet=refused)
