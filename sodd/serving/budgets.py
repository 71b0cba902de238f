"""Concurrency budgets: how many calls of each kind may be in progress, and how long a body may take.

gRPC's own `maximum_concurrent_rpcs` counts every call alike, and grpc does not time out a call
whose body never comes: 128 health Watch streams (which need no token) or 128 Detect calls that
send headers only refused every real Detect and every health check. Here each kind of call draws
on its own budget, so one kind cannot starve another:

- inference (Detect, DetectBatch, DetectStream): `max_inference_calls`, and `max_calls_per_peer`
  per client host (the transport's address, never a header; the Unix socket is left out, as its
  clients cannot be told apart and its file mode already says who may connect);
- management (every other Detector call: LoadModel, UnloadModel, WatchModels, ListModels, GetModel,
  ListDevices): `max_management_calls`;
- health Watch and reflection streams: `max_health_watches`, a reserve no other kind can take;
- health Check: no budget (it is cheap), so a probe always gets an answer; only checks that hold
  their place without sending a request are capped, per client host (`max_calls_per_peer`).

A refused call gets RESOURCE_EXHAUSTED naming its budget, before its body is read. A call whose
request message does not arrive within `request_body_timeout_seconds` gets DEADLINE_EXCEEDED.

An admitted call keeps its places until it has ended, not only until its handler returns: gRPC
writes an answer only as far as the client's HTTP/2 receive window allows, so a client that never
opens it leaves each answered call running. When such calls gave their places back on return, one
client sending a few at a time piled them up until gRPC's own limit was full, and every other client,
health checks included, got "Concurrent RPC limit exceeded". Now a client host holds at most its
share (`max_calls_per_peer`) of such calls, for as long as it keeps its connection; gRPC offers no
way to cut one call whose answer waits, so `max_connection_age_seconds` (a GOAWAY, then the
connection closed after its grace) is what bounds how long.

Reading the body here, rather than letting grpc read it before any handler runs, is what allows
both: a unary request is served by a stream-request handler that reads the one message itself
(the bytes on the wire are the same). Detector calls reach the inner interceptors (metrics, drain,
tokens) only once admitted and read; a call refused here is reported to `on_refused`, which counts
and logs it like any other request.

Detector requests arrive as bytes and are parsed here, those of PARSE_OFF_LOOP_BYTES or more on a
thread of their own: parsing a 60 MB DetectBatch on the event loop held health checks up by tens
of milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import grpc
from google.protobuf import message_factory

from sodd.config.schema import ServeConfig
from sodd.model.names import name_problem
from sodd.oip import grpc_service_pb2
from sodd.serving.auth import outcome
from sodd.serving.deadlines import deadline_passed
from sodd.serving.streams import ended_with_call, relayed, when_call_ends
from sodd.v1 import detector_pb2

log = logging.getLogger(__name__)

DETECTOR = detector_pb2.DESCRIPTOR.services_by_name["Detector"]
# The KServe v2 / Open Inference Protocol service (sodd.serving.kserve) draws on the same budgets.
KSERVE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
INFERENCE_METHODS = frozenset([*(f"/{DETECTOR.full_name}/{m}" for m in ("Detect", "DetectBatch", "DetectStream")),
                               *(f"/{KSERVE.full_name}/{m}" for m in ("ModelInfer", "ModelStreamInfer"))])
# KServe's probes are as cheap as a health Check and, like it, draw on no budget.
PROBE_METHODS = frozenset(f"/{KSERVE.full_name}/{m}" for m in ("ServerLive", "ServerReady", "ModelReady"))
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# Long-lived streams of the open services: they share the reserved budget.
RESERVED_STREAMS = frozenset(("/grpc.health.v1.Health/Watch",
                              "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                              "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"))
# Request fields holding a name: bounded as soon as the request is read, so a 100 KB name gets
# INVALID_ARGUMENT naming the field instead of travelling on into messages and logs.
NAME_FIELDS = {f"/{DETECTOR.full_name}/{m}": f for m, f in (
    ("Detect", "model"), ("DetectBatch", "model"), ("GetModel", "name"), ("LoadModel", "name"),
    ("UnloadModel", "name"), ("WatchModels", "name"))}
# gRPC's own ceiling stays as a last resort, this far above the budgets' sum: refused calls and
# health checks hold a place in it while they are answered.
GRPC_CEILING_HEADROOM = 256
# Requests at least this large are parsed off the event loop; smaller ones are parsed faster than a
# thread hand-off takes.
PARSE_OFF_LOOP_BYTES = 1024 * 1024
# What a refusal here is reported with: the method, the status code and its message.
OnRefused = Callable[[str, grpc.StatusCode, str], None]


@dataclass(frozen=True)
class _Shape:
    request_streaming: bool
    response_streaming: bool
    deserialize: Callable[[bytes], Any]


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


# Detector and KServe calls are admitted before the inner interceptors see them, so their handler's
# kind and message types come from the service description rather than from the inner handler.
SHAPES = {f"/{service.full_name}/{m.name}": _Shape(m.client_streaming, m.server_streaming,
                                                   message_factory.GetMessageClass(m.input_type).FromString)
          for service in (DETECTOR, KSERVE) for m in service.methods}


class Budget:
    """Places for calls of one kind; `name` and `setting` make the refusal say which was full."""

    def __init__(self, name: str, setting: str, limit: int) -> None:
        self.name = name
        self.setting = setting
        self.limit = limit
        self.in_use = 0

    def take(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def give_back(self) -> None:
        self.in_use -= 1

    def refusal(self) -> str:
        return (f"the {self.name} budget is full: {self.limit} {self.name} calls are in progress "
                f"({self.setting}); retry later")


def peer_host(peer: str) -> str | None:
    """The client host of grpc's `context.peer()` ("ipv4:1.2.3.4:5678" -> "ipv4:1.2.3.4"); None for
    the Unix socket, whose clients all look alike."""
    peer = unquote(peer)
    if peer.startswith("ipv6:["):
        return peer.partition("]")[0] + "]"
    if peer.startswith("ipv4:"):
        return peer.rpartition(":")[0]
    if not peer or peer.startswith("unix"):
        return None
    return peer


class PeerBudget:
    """`limit` inference calls per client host; hosts leave the table when their last call ends."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use: dict[str, int] = {}

    def take(self, host: str) -> bool:
        held = self.in_use.get(host, 0)
        if held >= self.limit:
            return False
        self.in_use[host] = held + 1
        return True

    def give_back(self, host: str) -> None:
        held = self.in_use[host] - 1
        if held:
            self.in_use[host] = held
        else:
            del self.in_use[host]


class BudgetInterceptor(grpc.aio.ServerInterceptor):
    """The outermost interceptor: admits calls by budget and reads unary requests with a deadline.

    `refuses` (the token check's) says a call will be refused whatever its request holds; such a
    call is not made to wait for its body."""

    def __init__(self, config: ServeConfig, refuses: Callable[[grpc.HandlerCallDetails], bool] | None = None,
                 on_refused: OnRefused | None = None) -> None:
        self.on_refused = on_refused or (lambda method, code, details: None)
        self._parsers = ThreadPoolExecutor(2, thread_name_prefix="parse")
        self.inference = Budget("inference", "max_inference_calls", config.max_inference_calls)
        self.management = Budget("management", "max_management_calls", config.max_management_calls)
        self.reserved = Budget("health watch and reflection", "max_health_watches", config.max_health_watches)
        self.per_peer = PeerBudget(config.max_calls_per_peer)
        self.checks_per_peer = PeerBudget(config.max_calls_per_peer)
        self.body_timeout = config.request_body_timeout_seconds
        self.refuses = refuses or (lambda _: False)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        shape = SHAPES.get(method)
        if shape is not None and (shape.response_streaming or not shape.request_streaming):
            budget = self.inference if method in INFERENCE_METHODS else \
                None if method in PROBE_METHODS else self.management
            return self._admitted(method, shape, budget, continuation, handler_call_details)
        if method == HEALTH_CHECK or method in RESERVED_STREAMS:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            if handler.stream_unary:
                return handler  # no such call among the open services
            shape = _Shape(bool(handler.stream_stream), bool(handler.unary_stream or handler.stream_stream),
                           handler.request_deserializer)
            budget = self.reserved if method in RESERVED_STREAMS else None

            async def known(_: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
                return handler

            return self._admitted(method, shape, budget, known, handler_call_details)
        return await continuation(handler_call_details)

    # -- admission ---------------------------------------------------------------------------

    def _take(self, budget: Budget | None, context: grpc.aio.ServicerContext) -> tuple[Callable[[], None] | None, str]:
        """A function giving the places back, or None and the refusal."""
        if budget is None:
            # A health Check holds a place only while it is answered, a moment for a real probe; but
            # one whose request never comes holds it until the body deadline, so such calls are
            # capped per client host: else one host could fill gRPC's own ceiling with them and lock
            # every call out again.
            host = peer_host(context.peer() or "")
            if host is None:
                return (lambda: None), ""
            if not self.checks_per_peer.take(host):
                return None, (f"this client already has {self.checks_per_peer.limit} health checks in progress "
                              "(max_calls_per_peer); retry later")
            return (lambda: self.checks_per_peer.give_back(host)), ""
        host = peer_host(context.peer() or "") if budget is self.inference else None
        if host is not None and not self.per_peer.take(host):
            return None, (f"this client already has {self.per_peer.limit} inference calls in progress "
                          "(max_calls_per_peer); retry later")
        if not budget.take():
            if host is not None:
                self.per_peer.give_back(host)
            return None, budget.refusal()

        def give_back() -> None:
            budget.give_back()
            if host is not None:
                self.per_peer.give_back(host)

        return give_back, ""

    async def _refuse(self, method: str, context: grpc.aio.ServicerContext, code: grpc.StatusCode,
                      details: str) -> None:
        self.on_refused(method, code, details)
        await context.abort(code, details)

    async def _enter(self, method: str, budget: Budget | None,
                     context: grpc.aio.ServicerContext) -> Callable[[], None]:
        give_back, refusal = self._take(budget, context)
        if give_back is None:
            await self._refuse(method, context, grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        assert give_back is not None
        return give_back

    async def _parse(self, shape: _Shape, data: Any) -> Any:
        """A request message from its bytes; large ones on a parser thread, off the event loop."""
        if not isinstance(data, bytes):
            return data  # already parsed (the open services' own deserializers)
        if len(data) < PARSE_OFF_LOOP_BYTES:
            return shape.deserialize(data)
        return await asyncio.get_running_loop().run_in_executor(self._parsers, shape.deserialize, data)

    async def _parsed(self, shape: _Shape, requests: Any) -> AsyncIterator[Any]:
        async for data in requests:
            yield await self._parse(shape, data)

    async def _read_one(self, method: str, shape: _Shape, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        # Aborts come after the try: raised inside an except block they would chain the caught
        # exception, whose traceback holds this frame and its request until a full collection.
        failure: tuple[grpc.StatusCode, str] | None = None
        try:
            data = await asyncio.wait_for(requests.__aiter__().__anext__(), self.body_timeout)
            request = await self._parse(shape, data)
            del data
        except asyncio.TimeoutError:
            failure = grpc.StatusCode.DEADLINE_EXCEEDED, f"request body not received within {self.body_timeout:g} s"
        except StopAsyncIteration:
            failure = grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its request message"
        except Exception as exc:  # noqa: BLE001 - bytes that do not parse as the method's message
            failure = grpc.StatusCode.INVALID_ARGUMENT, f"the request does not parse: {type(exc).__name__}"
        else:
            field = NAME_FIELDS.get(method)
            problem = name_problem(getattr(request, field), field) if field is not None else None
            if problem is not None:
                failure = grpc.StatusCode.INVALID_ARGUMENT, problem
        if failure is not None:
            request = None
            await self._refuse(method, context, *failure)
        return request

    async def _read_until_ended(self, method: str, shape: _Shape, requests: Any,
                                context: grpc.aio.ServicerContext) -> Any:
        """`_read_one`; a call that ends while its request is on its way (the client cancelled, or its
        deadline passed) is reported too, as it never reaches the interceptors that count calls."""
        try:
            return await self._read_one(method, shape, requests, context)
        except asyncio.CancelledError:
            expired = deadline_passed(context)
            self.on_refused(method, grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED,
                            "the call ended before its request was read")
            raise

    def _admitted(self, method: str, shape: _Shape, budget: Budget | None,
                  continuation: Callable[[grpc.HandlerCallDetails], Any],
                  details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        async def inner(context: grpc.aio.ServicerContext) -> grpc.RpcMethodHandler:
            handler = await continuation(details)
            if handler is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served")
            return handler

        # The request is read before the inner interceptors see the call: the drain counts it from
        # then on, and only its handler's end uncounts it. A call the token check refuses anyway is
        # refused at once, taking no place and not waiting for its body (the refusal ignores it).
        if not shape.request_streaming and not shape.response_streaming:
            async def unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                if self.refuses(details):
                    return await outcome((await inner(context)).unary_unary(None, context))
                when_call_ends(await self._enter(method, budget, context))
                request = await self._read_until_ended(method, shape, requests, context)
                handler = await inner(context)
                return await outcome(handler.unary_unary(request, context))

            return grpc.stream_unary_rpc_method_handler(unary, self._wire_deserializer(method, shape), _serialize)

        async def stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            refused = self.refuses(details)
            if not refused:
                when_call_ends(await self._enter(method, budget, context))
            if shape.request_streaming:
                result = (await inner(context)).stream_stream(self._parsed(shape, requests), context)
            else:
                request = None if refused else await self._read_until_ended(method, shape, requests, context)
                result = (await inner(context)).unary_stream(request, context)
            async with relayed(result) as responses:
                async for response in responses:
                    yield response

        # The outermost layer of every streaming call: it ends the layers below when the call ends.
        return grpc.stream_stream_rpc_method_handler(ended_with_call(stream), self._wire_deserializer(method, shape),
                                                     _serialize)

    @staticmethod
    def _wire_deserializer(method: str, shape: _Shape) -> Callable[[bytes], Any] | None:
        """None (grpc hands over the bytes, `_parse` parses them) for Detector calls; the open
        services' small messages are parsed by grpc as they come."""
        return None if method in SHAPES else shape.deserialize


def grpc_ceiling(config: ServeConfig) -> int:
    """gRPC's own limit on calls in progress: what the operator set, but never so low that it
    refuses before the budgets do (then a health check could be refused again)."""
    floor = config.max_inference_calls + config.max_management_calls + config.max_health_watches \
        + GRPC_CEILING_HEADROOM
    if config.max_concurrent_rpcs < floor:
        log.warning("max_concurrent_rpcs %d is below the call budgets' sum plus %d; using %d",
                    config.max_concurrent_rpcs, GRPC_CEILING_HEADROOM, floor)
    return max(config.max_concurrent_rpcs, floor)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard one: every client connection holds a
    descriptor, and the usual soft limit of 1,024 let 1,100 idle connections lock new clients out
    (and break the model watcher). Returns the soft limit before and after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, exc)
        return soft, soft
    log.info("open files limit raised from %d to %d (the hard limit)", soft, hard)
    return soft, hard
