"""The serving loop between start and stop: signals, reloads and the systemd watchdog.

SIGHUP runs the reload callbacks in order (configuration and certificates first, then whatever
else registered, such as the model repository), wrapped in RELOADING=1 ... READY=1. SIGTERM or
SIGINT ends the loop; stopping is the caller's job. The watchdog is pinged from this same event
loop, so a loop that hangs stops pinging and systemd restarts the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from sodd.sdnotify import Notifier

log = logging.getLogger(__name__)

ReloadCallback = Callable[[], Awaitable[None]]


async def _ping_watchdog(notifier: Notifier, every: float) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(every)


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


async def run_until_stopped(notifier: Notifier, reload_callbacks: list[ReloadCallback],
                            status: Callable[[], str]) -> signal.Signals:
    """Serve reloads until SIGTERM or SIGINT arrives; returns that signal."""
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for sig in handled:
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    watchdog = None
    if notifier.enabled and notifier.watchdog_seconds:
        # Half the timeout, as sd_watchdog_enabled(3) advises, so one late ping does not kill us.
        watchdog = asyncio.create_task(_ping_watchdog(notifier, notifier.watchdog_seconds / 2))
    try:
        while True:
            sig = await signals.get()
            if sig != signal.SIGHUP:
                return sig
            log.info("SIGHUP: reloading")
            await reload_all(reload_callbacks, notifier, status)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        for sig in (signal.SIGHUP,):
            loop.remove_signal_handler(sig)
