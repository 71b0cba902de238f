"""Metrics and log pieces that need no daemon: the listen address, the config checks, the log
formats, and how stage times of a batch response become observations."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import grpc
import pytest

from sodd.config.schema import ModelConfig, ServeConfig
from sodd.observability.logs import JsonFormatter, log_request, request_message, setup_logging
from sodd.observability.metrics import Metrics, MetricsInterceptor, split_listen
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
    interceptor = MetricsInterceptor(metrics, registry=None)  # type: ignore[arg-type]
    labels = ("m", "1", "cpu")
    results = [pb.DetectResponse(image_width=640, image_height=480, boxes=[pb.Box()] * n, timings=pb.StageTimings(
        decode_seconds=0.004, preprocess_seconds=0.002, queue_seconds=0.001 * (i + 1), inference_seconds=0.05,
        postprocess_seconds=0.0005)) for i, n in enumerate((3, 0))]
    interceptor._record_results(labels, results)
    get = metrics.registry.get_sample_value
    stage = {"model": "m", "version": "1", "device": "cpu"}
    assert get("sodd_stage_duration_seconds_count", {**stage, "stage": "decode"}) == 1
    assert get("sodd_stage_duration_seconds_count", {**stage, "stage": "queue_wait"}) == 2
    assert get("sodd_stage_duration_seconds_sum", {**stage, "stage": "queue_wait"}) == pytest.approx(0.003)
    assert get("sodd_stage_duration_seconds_count", {**stage, "stage": "slicing"}) is None  # not used
    assert get("sodd_detections_per_image_sum", stage) == 3
    assert get("sodd_input_pixels_bucket", {**stage, "le": "310000.0"}) == 2  # VGA lands at 0.31 MP


class _NoModels:
    """A registry that serves nothing: every request's labels are `unknown`."""

    def get(self, name: str, version: int = 0) -> None:
        raise LookupError(name)


class _Slow(pb_grpc.DetectorServicer):
    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        await asyncio.sleep(5)
        return pb.DetectResponse()


class _SlowStream(pb_grpc.DetectorServicer):
    async def DetectStream(self, request_iterator, context):  # noqa: ANN001
        async for request in request_iterator:
            await asyncio.sleep(5)
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
                for call in (stub.DetectBatch(pb.DetectBatchRequest(), timeout=5),
                             stub.Detect(pb.DetectRequest(), timeout=0.2)):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call
                    codes.append(err.value.code())
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub.DetectStream(iter([pb.DetectRequest()]), timeout=5):
                        pass
                codes.append(err.value.code())
            await asyncio.sleep(0.2)  # the server side of the expired call finishes
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
        pb_grpc.add_DetectorServicer_to_server(_SlowStream(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = pb_grpc.DetectorStub(channel).DetectStream(iter([pb.DetectRequest(), pb.DetectRequest()]))
                await asyncio.sleep(0.5)
                assert metrics.registry.get_sample_value("sodd_requests_in_flight", unknown) == 1
                call.cancel()
            await asyncio.sleep(0.3)
        finally:
            await server.stop(None)

    unknown = {"model": "unknown", "version": "unknown", "device": "unknown"}
    asyncio.run(scenario())
    get = metrics.registry.get_sample_value
    # The first frame was taken and never answered; the second was never taken.
    assert get("sodd_requests_total", {**unknown, "method": "DetectStream", "code": "CANCELLED"}) == 1
    assert get("sodd_requests_in_flight", unknown) == 0
