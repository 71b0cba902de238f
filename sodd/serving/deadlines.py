"""Telling a call ended by its deadline from one its client cancelled.

The client and the daemon each count the deadline from their own start. The client's count starts
earlier (before sending), so when the deadline passes the client cancels the call a little before the
daemon's own timer fires, and the daemon sees a cancellation with a few milliseconds left. A
cancellation that close to the deadline is the deadline's.
"""

from __future__ import annotations

import time

import grpc

DEADLINE_SLACK_SECONDS = 0.05


def deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= DEADLINE_SLACK_SECONDS


def deadline_reached(deadline: float | None) -> bool:
    """The same rule for a deadline kept on the monotonic clock (time.monotonic() + time_remaining())."""
    return deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK_SECONDS
