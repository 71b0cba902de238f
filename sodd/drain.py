"""Graceful stop: refuse new calls with UNAVAILABLE, let the ones already running finish.

grpc's own `server.stop(grace)` cancels calls that reached the server but had not been matched to
a handler yet, so a client can see CANCELLED (which clients do not retry) for a request sent just
before the stop. Refusing in an interceptor first gives every call one of two clear outcomes: an
answer, or UNAVAILABLE, which clients retry elsewhere. Health checks are never refused, so probes
see NOT_SERVING rather than an error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc

from sodd.auth import OPEN_SERVICES, refusal


class DrainInterceptor(grpc.aio.ServerInterceptor):
    """Counts running unary calls; after `stop_accepting` refuses new calls (streams too)."""

    def __init__(self) -> None:
        self.accepting = True
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        return self._running

    def stop_accepting(self) -> None:
        self.accepting = False

    async def wait_idle(self, timeout: float) -> bool:
        """True once no counted call runs; False when `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler_call_details.method.startswith(OPEN_SERVICES) or handler is None:
            return handler
        if not self.accepting:
            return refusal(handler, grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another one")
        if not handler.unary_unary:
            return handler  # streams such as watches would hold the stop to its timeout; they end with it
        behavior = handler.unary_unary
        # Counted from here, not from the handler's start: the request body may still be on its way,
        # and a stop in between must wait for it. (A call whose body never parses stays counted, which
        # costs at most the drain timeout.)
        self._running += 1
        self._idle.clear()

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            finally:
                self._running -= 1
                if self._running == 0:
                    self._idle.set()

        return grpc.unary_unary_rpc_method_handler(counted, handler.request_deserializer, handler.response_serializer)


async def drain(server: grpc.aio.Server, interceptor: DrainInterceptor, timeout: float) -> int:
    """Refuse new calls, wait for running ones up to `timeout`, then stop the server; returns how many
    calls were still running when the time was up (they are cancelled)."""
    started = time.monotonic()
    interceptor.stop_accepting()
    await interceptor.wait_idle(timeout)
    left = interceptor.running
    await server.stop(max(0.0, timeout - (time.monotonic() - started)))
    return left
