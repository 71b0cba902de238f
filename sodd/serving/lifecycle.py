"""The serving loop between start and stop: signals, reloads and the systemd watchdog.

SIGHUP runs the reload callbacks in order (configuration and certificates first, then whatever
else registered, such as the model repository), wrapped in RELOADING=1 ... READY=1. SIGTERM or
SIGINT ends the loop; stopping is the caller's job. The watchdog is pinged from the same event
loop that serves requests, from start to exit, so a loop that hangs stops pinging and systemd
restarts the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from sodd.serving.sdnotify import Notifier

log = logging.getLogger(__name__)

ReloadCallback = Callable[[], Awaitable[None]]


async def _ping_watchdog(notifier: Notifier, every: float) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(every)


def start_watchdog(notifier: Notifier) -> asyncio.Task | None:
    """Ping every WATCHDOG_USEC/2, as sd_watchdog_enabled(3) advises, so one late ping does not kill us."""
    if not (notifier.enabled and notifier.watchdog_seconds):
        return None
    return asyncio.create_task(_ping_watchdog(notifier, notifier.watchdog_seconds / 2))


async def reload_all(callbacks: list[ReloadCallback], notifier: Notifier, status: Callable[[], str]) -> bool:
    """Run every callback even when one fails; systemd hears READY=1 either way, the status says what failed."""
    notifier.reloading("reloading")
    failures = []
    for callback in list(callbacks):
        try:
            await callback()
        except Exception as exc:  # noqa: BLE001 - a bad reload keeps the daemon serving what it had
            name = getattr(callback, "__qualname__", repr(callback))
            log.error("reload: %s failed: %s", name, exc)
            failures.append(str(exc))
    text = status()
    if failures:
        text += f"; last reload failed: {'; '.join(failures)}"
    notifier.ready(text)
    log.info("reload done%s", " with errors" if failures else "")
    return not failures


def catch_signals() -> asyncio.Queue[signal.Signals]:
    """Queue SIGTERM, SIGINT and SIGHUP from now on: called before the daemon says it listens, so
    a reload or stop sent right after that message is never handled by the default action."""
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    return signals


async def run_until_stopped(signals: asyncio.Queue[signal.Signals], notifier: Notifier,
                            reload_callbacks: list[ReloadCallback], status: Callable[[], str]) -> signal.Signals:
    """Serve reloads until SIGTERM or SIGINT arrives; returns that signal."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            sig = await signals.get()
            if sig != signal.SIGHUP:
                return sig
            log.info("SIGHUP: reloading")
            await reload_all(reload_callbacks, notifier, status)
    finally:
        # SIGTERM/SIGINT stay handled (and ignored) so that a second one does not cut the drain short.
        loop.remove_signal_handler(signal.SIGHUP)
