"""How a streaming call's layers end, even when grpc.aio stops iterating them.

grpc.aio runs a streaming handler (an async generator) by iterating it and writing each answer.
When the call ends while it waits on such a write (a client that stopped reading, then cancelled
or went away), grpc stops iterating and leaves the generator suspended at its `yield`: none of its
`finally` blocks run until a garbage collection happens to find it, which in an idle daemon can be
never. A stream left that way kept its frames counted in flight, its stream slot and its place in
the call budgets. So:

- every layer that passes another layer's answers on closes that layer when it is closed itself
  (`relayed`), so that closing the outermost generator ends all of them;
- the outermost layer closes what it runs once the call has ended (`ended_with_call`, on
  `when_call_ends`, which the call budgets also use to hold their places until then).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import grpc

from sodd.runtime.tasks import TaskSet

log = logging.getLogger(__name__)

StreamBehaviour = Callable[[Any, grpc.aio.ServicerContext], AsyncGenerator[Any, None]]

# Closings in progress, referenced until done (the event loop keeps only weak references).
_closers = TaskSet("closing ended streams")


async def _close(generator: AsyncGenerator[Any, None]) -> None:
    try:
        await generator.aclose()
    except RuntimeError:  # still running: the call's cancellation ends it as it unwinds
        log.debug("a streaming handler was still running when its call ended")


async def _answers(result: Any) -> AsyncIterator[Any]:
    """The responses of a streaming behaviour that is not an async generator: one that writes them
    with `context.write` (grpc_health's Watch does), or a plain iterator."""
    if hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    elif inspect.isawaitable(result):
        await result
    else:
        for response in result:
            yield response


def relayed(result: Any) -> contextlib.aclosing:
    """`async with relayed(behaviour(...)) as responses`: its answers, closed with the block."""
    if hasattr(result, "__aiter__") and hasattr(result, "aclose"):
        return contextlib.aclosing(result)  # an async generator already: no layer in between
    return contextlib.aclosing(_answers(result))


def when_call_ends(callback: Callable[[], None]) -> None:
    """Call `callback` once the current call has ended: answer and status written, or the call
    cancelled; a handler returning is not the end, as its answer may still wait for the client.
    gRPC runs a call, its handlers and the writing of its answers, in one asyncio task."""
    asyncio.current_task().add_done_callback(lambda _task: callback())


def ended_with_call(behaviour: StreamBehaviour) -> StreamBehaviour:
    """`behaviour` as a streaming handler for grpc.aio: when the call ends, the generator
    `behaviour` returned is closed (its `finally` blocks run), whether grpc finished iterating it
    or left it at a `yield`."""

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncGenerator[Any, None]:
        inner = behaviour(request, context)

        when_call_ends(lambda: _closers.spawn(_close(inner)))
        async with relayed(inner) as responses:
            async for response in responses:
                yield response

    return handler
