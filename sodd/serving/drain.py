"""Graceful stop that load balancers can see: announce, keep serving, refuse, finish, exit.

On SIGTERM the server calls `drain`, which goes through these steps:

1. Health turns NOT_SERVING at once (the caller does this, before `drain`), so balancers that
   check health take the daemon out of rotation.
2. Grace: the daemon keeps answering every call for `grace` seconds, the time a polling balancer
   (HAProxy, Envoy, the kubelet's readiness probe) needs to see NOT_SERVING. Refusing at once
   would fail the calls those balancers still send. The grace is skipped when no health check
   (grpc.health.v1 or KServe's ServerReady/ModelReady) reached the daemon in the last
   PROBED_WITHIN_SECONDS: then nothing is polling, and a single-box stop stays quick.
3. Refuse: new calls get UNAVAILABLE, which clients and balancers retry elsewhere. Streams end:
   request streams (DetectStream, ModelStreamInfer) are read no further, the frames already taken
   are answered, then the stream ends with UNAVAILABLE; answer-only streams (WatchModels, health
   Watch, reflection) end with UNAVAILABLE at once, so no open watch holds the stop.
4. Finish: calls already running get up to `timeout` seconds.
5. Quiet: before the listener closes, wait until no call has been refused or has finished for
   QUIET_SECONDS (at most QUIET_LIMIT_SECONDS). grpc's `server.stop` cancels, with CANCELLED
   (which clients do not retry), calls that reach the server while it stops; a client that is
   still sending here has not heard yet, and gets UNAVAILABLE instead. That includes a client
   whose call finished a moment ago and which sends its next one at once.
6. Stop: `server.stop` sends GOAWAY and closes the listeners; the process exits.

Health checks are never refused, so probes see NOT_SERVING rather than an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from sodd.serving.auth import OPEN_SERVICES, outcome, refusal
from sodd.serving.streams import relayed

log = logging.getLogger(__name__)

# A daemon whose health nobody checked for this long has no balancer to wait for: the Kubernetes
# readiness probe runs every 10 s by default, HAProxy and Envoy every few seconds.
PROBED_WITHIN_SECONDS = 60.0
PROBES = ("/grpc.health.v1.Health/", "/inference.GRPCInferenceService/ServerReady",
          "/inference.GRPCInferenceService/ModelReady")
QUIET_SECONDS = 0.25
QUIET_LIMIT_SECONDS = 2.0
SHUTTING_DOWN = "the server is shutting down; retry on another one"


class DrainInterceptor(grpc.aio.ServerInterceptor):
    """Counts running calls, refuses new ones after `stop_accepting`, and ends streams then."""

    def __init__(self) -> None:
        self.accepting = True
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = asyncio.Event()
        self.last_probe: float | None = None
        self.last_activity = 0.0  # when a call was last refused, or last finished

    @property
    def running(self) -> int:
        return self._running

    def stop_accepting(self) -> None:
        self.accepting = False
        self._closing.set()

    def probed_within(self, seconds: float) -> bool:
        return self.last_probe is not None and time.monotonic() - self.last_probe <= seconds

    async def wait_idle(self, timeout: float) -> bool:
        """True once no counted call runs; False when `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def wait_quiet(self, quiet: float, limit: float) -> None:
        """Until no call has been refused or has finished for `quiet` seconds, or `limit` seconds passed."""
        end = time.monotonic() + limit
        while (now := time.monotonic()) < end:
            gap = now - self.last_activity
            if gap >= quiet:
                return
            await asyncio.sleep(min(quiet - gap, end - now))

    def _enter(self) -> None:
        self._running += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.last_activity = time.monotonic()
        self._running -= 1
        if self._running == 0:
            self._idle.set()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if method.startswith(PROBES):
            self.last_probe = time.monotonic()
        streaming = handler.unary_stream or handler.stream_stream
        if method.startswith(OPEN_SERVICES):
            # Health checks answer NOT_SERVING throughout; their watches must not hold the stop.
            return self._closable(handler) if streaming else handler
        if not self.accepting:
            self.last_activity = time.monotonic()
            return refusal(handler, grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        if streaming:
            return self._closable(handler)
        if not handler.unary_unary:
            return handler  # no client-streaming call in sodd's services
        behavior = handler.unary_unary
        # Counted from here, not from the handler's start: the request body may still be on its way,
        # and a stop in between must wait for it. (A call whose body never parses stays counted, which
        # costs at most the drain timeout.)
        self._enter()

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await outcome(behavior(request, context))
            finally:
                self._leave()

        return grpc.unary_unary_rpc_method_handler(counted, handler.request_deserializer, handler.response_serializer)

    def _closable(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """A streaming handler that ends when the drain starts refusing (see the module's step 3)."""
        reads = bool(handler.stream_stream)
        behavior = handler.stream_stream or handler.unary_stream
        self._enter()

        async def closable(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            cut: list[bool] = [False]
            try:
                source = self._until_closing(request, cut) if reads else request
                async with contextlib.aclosing(self._answers_until_closing(behavior(source, context), wait=reads,
                                                                           cut=cut)) as responses:
                    async for response in responses:
                        yield response
                if cut[0]:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            finally:
                self._leave()

        make = grpc.stream_stream_rpc_method_handler if reads else grpc.unary_stream_rpc_method_handler
        return make(closable, handler.request_deserializer, handler.response_serializer)

    async def _first(self, step: asyncio.Future) -> bool:
        """Wait for `step` or the closing signal; True when `step` finished first."""
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            done, _ = await asyncio.wait({step, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        return step in done

    async def _until_closing(self, requests: Any, cut: list[bool]) -> AsyncIterator[Any]:
        """The client's messages until the drain refuses; then the service sees the stream end."""
        iterator = aiter(requests)
        while not self._closing.is_set():
            step = asyncio.ensure_future(anext(iterator))
            if not await self._first(step):
                step.cancel()
                break
            try:
                yield step.result()
            except StopAsyncIteration:
                return
        cut[0] = True

    async def _answers_until_closing(self, result: Any, wait: bool, cut: list[bool]) -> AsyncIterator[Any]:
        """The service's answers; an answer-only stream is cut when the drain refuses, a request
        stream runs on until it has answered the frames it took (its requests end then)."""
        async with relayed(result) as responses:
            while True:
                step = asyncio.ensure_future(anext(responses))
                if wait or await self._first(step):
                    try:
                        yield await step
                    except StopAsyncIteration:
                        return
                    continue
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                cut[0] = True
                return


async def drain(server: grpc.aio.Server, interceptor: DrainInterceptor, grace: float, timeout: float) -> int:
    """Steps 2 to 6 of the module's description; returns how many calls were still running when
    `timeout` was up (they are cancelled)."""
    if grace > 0 and interceptor.probed_within(PROBED_WITHIN_SECONDS):
        log.info("serving for %.1f s more so that load balancers see NOT_SERVING", grace)
        await asyncio.sleep(grace)  # the whole point: keep answering while balancers catch up
    started = time.monotonic()
    interceptor.stop_accepting()
    log.info("refusing new calls; %d calls and streams to finish", interceptor.running)
    await interceptor.wait_idle(timeout)
    left = interceptor.running
    remaining = max(0.0, timeout - (time.monotonic() - started))
    await interceptor.wait_quiet(QUIET_SECONDS, min(QUIET_LIMIT_SECONDS, remaining))
    log.info("closing the listeners after %.2f s of draining", time.monotonic() - started)
    await server.stop(max(0.0, timeout - (time.monotonic() - started)))
    return left
