"""The gRPC interceptor: every call's status code and latency, and each sodd.v1 detection request's
id and end (status code, latency, cancellation cause and request log line, through
sodd.observability.requests).

What ran inside a request (stages, images, pixels, slices, batches) is reported by the detection
core itself to its observer; this only sees calls from outside, including those another
interceptor refuses before the service runs.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
import traceback
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import Message

from sodd.observability.metrics import UNKNOWN, UNKNOWN_MODEL, Metrics
from sodd.observability.requests import RequestRecord, RequestRecorder
from sodd.runtime.registry import ModelRegistry
from sodd.serving.deadlines import deadline_passed
from sodd.serving.streams import relayed
from sodd.v1 import detector_pb2 as pb

log = logging.getLogger(__name__)

UNARY_METHODS = {"/sodd.v1.Detector/Detect": "Detect", "/sodd.v1.Detector/DetectBatch": "DetectBatch"}
# Camera frames: one request per frame, each answered by a response or an error of its own.
STREAM_METHOD = "/sodd.v1.Detector/DetectStream"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def method_name(method: str) -> str | None:
    """The method label of a detection call's full gRPC name; None for other calls."""
    return UNARY_METHODS.get(method) or ("DetectStream" if method == STREAM_METHOD else None)


def _answered(record: RequestRecord, responses: list[pb.DetectResponse]) -> None:
    """What the answer says ran: the model version it names, its images and boxes."""
    first = responses[0]
    record.answered((first.model, str(first.version), first.device), len(responses),
                    sum(len(r.boxes) for r in responses))


def _frame_answer(record: RequestRecord, answer: Any) -> None:
    """Fill a frame's record from its DetectStreamResponse: a response or a per-frame error."""
    if not isinstance(answer, pb.DetectStreamResponse):
        record.code = grpc.StatusCode.OK
        return
    kind = answer.WhichOneof("result")
    if kind == "error":
        record.code = _CODES.get(answer.error.code, grpc.StatusCode.UNKNOWN)
        record.error = answer.error.message
    elif kind == "response":
        _answered(record, [answer.response])
    else:
        record.code = grpc.StatusCode.OK


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Ends every Detect, DetectBatch and DetectStream frame with its final status code and latency,
    under the model version that answered it. It also gives each request an id before the service
    sees it, so the id the client gets back, the service's own log lines and the request log line
    all agree."""

    def __init__(self, metrics: Metrics | None, registry: ModelRegistry,
                 shutting_down: Callable[[], bool] = lambda: False) -> None:
        self._requests = RequestRecorder(metrics)
        self._metrics = metrics
        self._registry = registry
        self._shutting_down = shutting_down

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED without a handler
            return handler
        return self._counted(handler_call_details.method, self._detection(handler_call_details, handler))

    def _count_call(self, method: str, code: grpc.StatusCode, started: float) -> None:
        if self._metrics is not None:
            self._metrics.calls.labels(method, code.name).inc()
            self._metrics.call_duration.labels(method).observe(time.perf_counter() - started)

    @contextlib.contextmanager
    def _call_ends(self, method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
        """Counts the call under `method` however its body ends: the code it set, or the one its
        exception (cancellation included) stands for."""
        started, code = time.perf_counter(), grpc.StatusCode.UNKNOWN
        try:
            yield
            code = context.code() or grpc.StatusCode.OK
        except BaseException as exc:
            code = self._ended_by(exc, context)[0]
            raise
        finally:
            self._count_call(method, code, started)

    def _counted(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The same handler, its end counted under `method`: code and latency, for every kind of call."""

        def unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with self._call_ends(method, context):
                    result = behaviour(request, context)
                    return await result if inspect.isawaitable(result) else result
            return call

        # grpc.aio tells streaming handlers apart by being async generator functions: so is this one.
        def streaming(behaviour: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                with self._call_ends(method, context):
                    async with relayed(behaviour(request, context)) as answers:
                        async for answer in answers:
                            yield answer
            return call

        kinds = {"unary_unary": (unary, grpc.unary_unary_rpc_method_handler),
                 "stream_unary": (unary, grpc.stream_unary_rpc_method_handler),
                 "unary_stream": (streaming, grpc.unary_stream_rpc_method_handler),
                 "stream_stream": (streaming, grpc.stream_stream_rpc_method_handler)}
        for kind, (wrap, make) in kinds.items():
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return make(wrap(behaviour), request_deserializer=handler.request_deserializer,
                            response_serializer=handler.response_serializer)
        return handler

    def _detection(self, handler_call_details: grpc.HandlerCallDetails,
                   handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Detection calls also get a request id and a request record; others pass unchanged."""
        method = UNARY_METHODS.get(handler_call_details.method)
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
                async with contextlib.aclosing(self._observe_stream(stream, requests, context)) as answers:
                    async for answer in answers:
                        yield answer

            return grpc.stream_stream_rpc_method_handler(
                observed_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler

    def record_refusal(self, method: str, code: grpc.StatusCode, details: str) -> None:
        """A call refused before its request was read (call budgets, body deadline): counted, and a
        detection call also logged like an answered one, under unknown model labels."""
        self._count_call(method, code, time.perf_counter())
        name = method_name(method)
        if name is None:
            log.debug("%s refused: %s %s", method, code.name, details)
            return
        record = RequestRecord(name, code=code, error=details)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            record.cause = "deadline"
        elif code == grpc.StatusCode.CANCELLED:
            record.cause = "shutdown" if self._shutting_down() else "client"
        self._requests.finish(record, refused=True)

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
            return UNKNOWN_MODEL

    def _begin(self, method: str, request: Any) -> RequestRecord:
        # Another interceptor may hand over a refusing handler that never parses the request (the
        # token check does): such a request is still counted, under unknown labels.
        if not isinstance(request, Message):
            return self._requests.begin(method, UNKNOWN_MODEL)
        if not request.request_id:
            request.request_id = uuid.uuid4().hex
        return self._requests.begin(method, self._labels(request), request.request_id)

    def _finish(self, record: RequestRecord) -> None:
        try:
            self._requests.finish(record)
        except Exception:  # a logging or metrics bug must not turn an answer into an error
            log.exception("recording the end of %s failed", record.method)

    def _ended_by(self, exc: BaseException,
                  context: grpc.aio.ServicerContext) -> tuple[grpc.StatusCode, str, str]:
        """The status code, error text and cancellation cause of a call that ended with `exc`."""
        if isinstance(exc, grpc.aio.AbortError):
            return context.code() or grpc.StatusCode.UNKNOWN, context.details() or "", ""
        if isinstance(exc, Exception):
            return grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}", ""
        # Cancelled: by the client, by its deadline, or by the daemon stopping.
        if deadline_passed(context):
            return grpc.StatusCode.DEADLINE_EXCEEDED, "", "deadline"
        return grpc.StatusCode.CANCELLED, "", "shutdown" if self._shutting_down() else "client"

    def _failed(self, exc: BaseException, context: grpc.aio.ServicerContext, record: RequestRecord) -> None:
        record.code, record.error, record.cause = self._ended_by(exc, context)

    async def _observe(self, method: str, behaviour: Callable[..., Any], request: Any,
                       context: grpc.aio.ServicerContext) -> Any:
        record = self._begin(method, request)
        try:
            result = behaviour(request, context)
            response = await result if inspect.isawaitable(result) else result
            code = context.code() or grpc.StatusCode.OK
            if code != grpc.StatusCode.OK:  # answered with a status set, not aborted
                record.code, record.error = code, context.details() or ""
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    record.cause = "deadline"  # it passed while the request waited for a predictor
            elif isinstance(response, pb.DetectBatchResponse) and response.results:
                _answered(record, list(response.results))
            elif isinstance(response, pb.DetectResponse):
                _answered(record, [response])
            else:
                record.code = code
            return response
        except BaseException as exc:
            self._failed(exc, context, record)
            # The finished handler's frames hold the request; cleared, no cycle through the failure
            # can keep its payload alive until a full garbage collection.
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            self._finish(record)

    async def _observe_stream(self, behaviour: Callable[..., Any], requests: AsyncIterator[Any],
                              context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """Each frame counts as one request, timed from when the service takes it to its answer.
        Answers come one per frame in the order sent, so a queue pairs them up."""
        method = "DetectStream"
        waiting: deque[RequestRecord] = deque()

        async def frames() -> AsyncIterator[Any]:
            async for request in requests:
                waiting.append(self._begin(method, request))
                yield request

        stream_started = time.perf_counter()
        failure: RequestRecord | None = None
        try:
            async with relayed(behaviour(frames(), context)) as answers:
                async for answer in answers:
                    if waiting:
                        record = waiting.popleft()
                        _frame_answer(record, answer)
                        self._finish(record)
                    yield answer
        except BaseException as exc:
            # A stream refused or broken between frames counts once; it was never counted in flight.
            failure = RequestRecord(method, started=stream_started)
            self._failed(exc, context, failure)
            raise
        finally:
            if failure is not None and not waiting:
                self._finish(failure)
            while waiting:  # frames taken but never answered share the stream's fate
                record = waiting.popleft()
                record.code = failure.code if failure else grpc.StatusCode.UNKNOWN
                record.error = failure.error if failure else "the stream ended before this frame's answer"
                self._finish(record)
