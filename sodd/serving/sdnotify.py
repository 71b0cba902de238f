"""sd_notify without libsystemd: tell systemd (or whoever set NOTIFY_SOCKET) how the daemon is doing.

The protocol is one datagram of newline-separated `KEY=VALUE` lines sent to the AF_UNIX socket
named by NOTIFY_SOCKET; a leading `@` names a socket in the abstract namespace. Without
NOTIFY_SOCKET every call is a no-op, so the daemon behaves the same outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock: and other transports are not used on the devices we run on


class Notifier:
    def __init__(self, notify_socket: str | None, watchdog_usec: str | None = None,
                 watchdog_pid: str | None = None) -> None:
        self._address = _socket_address(notify_socket) if notify_socket else None
        if notify_socket and self._address is None:
            log.warning("NOTIFY_SOCKET=%s is not a path or an abstract socket; not notifying", notify_socket)
        self._sock: socket.socket | None = None
        self.watchdog_seconds = self._watchdog_seconds(watchdog_usec, watchdog_pid)

    @classmethod
    def from_environment(cls) -> Notifier:
        """Take the variables out of the environment so that child processes do not notify for us."""
        return cls(os.environ.pop("NOTIFY_SOCKET", None), os.environ.pop("WATCHDOG_USEC", None),
                   os.environ.pop("WATCHDOG_PID", None))

    @staticmethod
    def _watchdog_seconds(usec: str | None, pid: str | None) -> float | None:
        if not usec:
            return None
        if pid and pid.strip() != str(os.getpid()):
            return None  # the watchdog is meant for another process
        try:
            value = int(usec)
        except ValueError:
            log.warning("WATCHDOG_USEC=%r is not an integer; not pinging the watchdog", usec)
            return None
        return value / 1e6 if value > 0 else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        if self._address is None:
            return False
        payload = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            # A lost notification must never take the daemon down; systemd will time us out if it matters.
            log.warning("sd_notify %s failed: %s", lines[0] if lines else "", exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self, status: str = "reloading") -> bool:
        # MONOTONIC_USEC lets systemd (253+, Type=notify-reload) match the reload to its request.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                           f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
