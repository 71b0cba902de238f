"""Metrics and log pieces that need no daemon: the listen address, the config checks, the log
formats, how the detection core's report of a batch becomes observations, and how the interceptor
ends refused, expired and cancelled calls."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from sodd.config.schema import ModelConfig, ServeConfig
from sodd.observability.endpoint import split_listen
from sodd.observability.logs import JsonFormatter, log_request, request_log, request_message, setup_logging
from sodd.observability.metrics import Metrics
from sodd.runtime.detection import Detections, DetectResult, StageTimes, report_of
from sodd.serving.metrics_interceptor import MetricsInterceptor
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc


def test_listen_addresses() -> None:
    assert split_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert split_listen("[::1]:0") == ("::1", 0)
    assert split_listen(":9464") == ("0.0.0.0", 9464)
    for bad in ("9464", "host:", "host:port", "host:70000"):
        with pytest.raises(ValueError):
            split_listen(bad)


def test_config_defaults_to_loopback_and_checks_its_fields() -> None:
    models = (ModelConfig(name="m", path=Path(".")),)
    config = ServeConfig(models=models)
    assert (config.metrics_listen, config.log_format) == ("127.0.0.1:9464", "text")
    assert ServeConfig(models=models, metrics_listen="").metrics_listen == ""  # turned off
    with pytest.raises(ValueError, match="metrics_listen"):
        ServeConfig(models=models, metrics_listen="9464")
    with pytest.raises(ValueError, match="log_format"):
        ServeConfig(models=models, log_format="xml")


FIELDS = {"method": "Detect", "request_id": "r1", "model": "m", "version": "2", "device": "npu:0",
          "code": "NOT_FOUND", "latency_seconds": 0.0123, "images": 0, "detections": 0,
          "error": "model 'x' is not served"}


def test_text_request_line_has_every_field_and_no_time_stamp() -> None:
    line = request_message(FIELDS)
    assert line.startswith("Detect request_id=r1 model=m version=2 device=npu:0 code=NOT_FOUND latency_ms=12.3")
    assert line.endswith('error="model \'x\' is not served"')  # quoted: it has spaces


def capture(log_format: str, level: str, fields: dict) -> str:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging(level, log_format)
    try:
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        log_request(fields)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    return stream.getvalue()


def test_answered_requests_log_at_debug_failed_ones_at_warning() -> None:
    ok = {**FIELDS, "code": "OK"}
    ok.pop("error")
    assert capture("text", "INFO", ok) == ""
    assert capture("text", "DEBUG", ok).startswith("DEBUG sodd.requests: Detect request_id=r1")
    assert capture("text", "INFO", FIELDS).startswith("WARNING sodd.requests: Detect request_id=r1")


def test_json_lines_carry_the_fields_and_a_time_stamp() -> None:
    entry = json.loads(capture("json", "INFO", FIELDS))
    assert {k: entry[k] for k in FIELDS} == FIELDS
    assert entry["level"] == "WARNING" and entry["logger"] == "sodd.requests"
    assert entry["time"].endswith("+00:00")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom %s", ("!",), None)
    assert json.loads(JsonFormatter().format(record))["message"] == "boom !"


def test_batch_stages_per_request_and_per_image() -> None:
    metrics = Metrics()
    images = [Detections(np.zeros((n, 4), np.float32), np.zeros(n, np.float32), np.zeros(n, np.int32), ("a",) * n,
                         640, 480, 1, StageTimes(decode=0.004, preprocess=0.002, queue=0.001 * (i + 1), inference=0.05,
                                                 postprocess=0.0005))
              for i, n in enumerate((3, 0))]
    metrics.detected(report_of(DetectResult("r", "m", 1, "cpu", images)))
    get = metrics.registry.get_sample_value
    stage = {"model": "m", "version": "1", "device": "cpu"}
    assert get("sodd_stage_duration_seconds_count", {**stage, "stage": "decode"}) == 1
    assert get("sodd_stage_duration_seconds_count", {**stage, "stage": "queue_wait"}) == 2
    assert get("sodd_stage_duration_seconds_sum", {**stage, "stage": "queue_wait"}) == pytest.approx(0.003)
    assert get("sodd_stage_duration_seconds_count", {**stage, "stage": "slicing"}) is None  # not used
    assert get("sodd_detections_per_image_sum", stage) == 3
    assert get("sodd_input_pixels_bucket", {**stage, "le": "310000.0"}) == 2  # VGA lands at 0.31 MP
    metrics.batch_ran("m", 1, "cpu", 2)
    assert get("sodd_batch_size_sum", stage) == 2


def test_created_series_are_left_out_of_this_registry_only() -> None:
    metrics = Metrics()
    metrics.requests.labels("m", "1", "cpu", "Detect", "OK").inc()
    assert b"_created" not in generate_latest(metrics.registry)
    # prometheus-client's process-wide setting is untouched: other registries keep their `_created`.
    other = CollectorRegistry()
    Counter("other_requests", "A counter of another registry.", registry=other).inc()
    assert b"other_requests_created" in generate_latest(other)


class _RequestLines(logging.Handler):
    """Sets `seen` once a request log line of `method` is written: the interceptor's last step."""

    def __init__(self, method: str) -> None:
        super().__init__(logging.DEBUG)
        self.method = method
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "fields", {}).get("method") == self.method:
            self.seen.set()

    def __enter__(self) -> _RequestLines:
        request_log.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        request_log.removeHandler(self)


class _NoModels:
    """A registry that serves nothing: every request's labels are `unknown`."""

    def get(self, name: str, version: int = 0) -> None:
        raise LookupError(name)


class _Slow(pb_grpc.DetectorServicer):
    """Answers only when its call ends: by its deadline, or by the client cancelling."""

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        await asyncio.Event().wait()
        return pb.DetectResponse()


class _SlowStream(pb_grpc.DetectorServicer):
    """Takes a frame, says so with `taken`, and never answers it."""

    def __init__(self) -> None:
        self.taken = asyncio.Event()

    async def DetectStream(self, request_iterator, context):  # noqa: ANN001
        async for request in request_iterator:
            self.taken.set()
            await asyncio.Event().wait()
            yield pb.DetectStreamResponse(request_id=request.request_id)


class _RefuseBatchesAndStreams(grpc.aio.ServerInterceptor):
    """Refuses DetectBatch and DetectStream with handlers that never parse the request, as the
    token check does."""

    async def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001
        async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no bearer token")

        if handler_call_details.method.endswith("/DetectBatch"):
            return grpc.unary_unary_rpc_method_handler(refuse)
        if handler_call_details.method.endswith("/DetectStream"):
            return grpc.stream_stream_rpc_method_handler(refuse)
        return await continuation(handler_call_details)


def test_refusals_and_deadlines_are_counted_with_their_code() -> None:
    metrics = Metrics()

    async def scenario() -> tuple[grpc.StatusCode, ...]:
        server = grpc.aio.server(interceptors=[MetricsInterceptor(metrics, _NoModels()),  # type: ignore[arg-type]
                                               _RefuseBatchesAndStreams()])
        pb_grpc.add_DetectorServicer_to_server(_Slow(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        codes = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.DetectorStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.DetectBatch(pb.DetectBatchRequest(), timeout=5)
                codes.append(err.value.code())
                with _RequestLines("Detect") as expired:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.Detect(pb.DetectRequest(), timeout=0.2)
                    codes.append(err.value.code())
                    await asyncio.wait_for(expired.seen.wait(), 10)  # the server side of the call has ended
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub.DetectStream(iter([pb.DetectRequest()]), timeout=5):
                        pass
                codes.append(err.value.code())
        finally:
            await server.stop(None)
        return tuple(codes)

    assert asyncio.run(scenario()) == (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.DEADLINE_EXCEEDED,
                                       grpc.StatusCode.UNAUTHENTICATED)
    get = metrics.registry.get_sample_value
    unknown = {"model": "unknown", "version": "unknown", "device": "unknown"}
    assert get("sodd_requests_total", {**unknown, "method": "DetectBatch", "code": "UNAUTHENTICATED"}) == 1
    assert get("sodd_requests_total", {**unknown, "method": "Detect", "code": "DEADLINE_EXCEEDED"}) == 1
    assert get("sodd_requests_total", {**unknown, "method": "DetectStream", "code": "UNAUTHENTICATED"}) == 1
    assert get("sodd_requests_in_flight", unknown) == 0


def test_frames_of_a_cancelled_stream_count_as_cancelled() -> None:
    metrics = Metrics()

    async def scenario() -> None:
        server = grpc.aio.server(interceptors=[MetricsInterceptor(metrics, _NoModels())])  # type: ignore[arg-type]
        servicer = _SlowStream()
        pb_grpc.add_DetectorServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            with _RequestLines("DetectStream") as ended:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    call = pb_grpc.DetectorStub(channel).DetectStream(iter([pb.DetectRequest(), pb.DetectRequest()]))
                    await asyncio.wait_for(servicer.taken.wait(), 10)
                    assert metrics.registry.get_sample_value("sodd_requests_in_flight", unknown) == 1
                    call.cancel()
                await asyncio.wait_for(ended.seen.wait(), 10)
        finally:
            await server.stop(None)

    unknown = {"model": "unknown", "version": "unknown", "device": "unknown"}
    asyncio.run(scenario())
    get = metrics.registry.get_sample_value
    # The first frame was taken and never answered; the second was never taken.
    assert get("sodd_requests_total", {**unknown, "method": "DetectStream", "code": "CANCELLED"}) == 1
    assert get("sodd_requests_in_flight", unknown) == 0
