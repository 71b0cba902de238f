"""The HTTP endpoint Prometheus scrapes: a registry's series in the text format (or OpenMetrics when
asked), served from threads of its own with bounded connections."""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app

from sodd.config.addresses import split_host_port

log = logging.getLogger(__name__)

# The metrics endpoint's bounds (MetricsEndpoint): threads rendering answers, connections waiting
# for their request at once, how long one may take to send it, and how long it may be.
METRICS_WORKERS = 2
METRICS_CONNECTIONS = 256
METRICS_TIMEOUT_SECONDS = 5.0
METRICS_HEAD_BYTES = 16 * 1024
METRICS_BACKLOG = 128


def split_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT, with [v6] brackets, into a host and a port; no host means every interface."""
    host, port = split_host_port(listen)
    return host or "0.0.0.0", port


class MetricsEndpoint:
    """The HTTP endpoint Prometheus scrapes, on threads of its own: scrapes never wait on the
    asyncio loop, so a busy daemon still answers Prometheus.

    prometheus-client's own server gives every connection a thread and waits on it without a
    timeout: 1,000 idle connections made 1,023 threads, and a scrape after them timed out. Here
    one thread waits on every connection until its request head has arrived (at most
    METRICS_HEAD_BYTES, within METRICS_TIMEOUT_SECONDS, or the connection is closed), at most
    METRICS_CONNECTIONS connections wait at once (a new one closes the oldest), and
    METRICS_WORKERS threads render the answers with prometheus-client's WSGI app. Each answer
    closes its connection (Prometheus opens one per scrape when asked to)."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        host, port = split_listen(listen)
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(METRICS_BACKLOG)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self._app = make_wsgi_app(registry)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        # Connections waiting for their request head, oldest first: (deadline, bytes so far).
        self._waiting: dict[socket.socket, tuple[float, bytearray]] = {}
        self._workers = ThreadPoolExecutor(METRICS_WORKERS, thread_name_prefix="sodd-metrics")
        self._queued = 0  # answers handed to the workers and not finished; read and written under _lock
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="sodd-metrics-accept", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._closing = True
        self._wake_write.send(b"x")
        self._thread.join(5)
        self._workers.shutdown(wait=True, cancel_futures=True)

    # -- the waiting thread ------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._closing:
                timeout = None
                if self._waiting:
                    timeout = max(0.0, next(iter(self._waiting.values()))[0] - time.monotonic())
                for key, _ in self._selector.select(timeout):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is not self._wake_read:
                        self._receive(key.fileobj)  # type: ignore[arg-type]
                now = time.monotonic()
                for conn, (deadline, _) in list(self._waiting.items()):
                    if deadline > now:
                        break  # oldest first: the rest have later deadlines
                    self._drop(conn)
        finally:
            for conn in list(self._waiting):
                self._drop(conn)
            self._selector.close()
            self._listener.close()
            self._wake_read.close()
            self._wake_write.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, for one: the connections waiting are closed in time
                log.warning("metrics endpoint cannot accept a connection: %s", exc)
                return
            if len(self._waiting) >= METRICS_CONNECTIONS:
                self._drop(next(iter(self._waiting)))
            conn.setblocking(False)
            self._waiting[conn] = (time.monotonic() + METRICS_TIMEOUT_SECONDS, bytearray())
            self._selector.register(conn, selectors.EVENT_READ)

    def _receive(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        head = self._waiting[conn][1]
        head += data
        if not data or len(head) > METRICS_HEAD_BYTES:
            self._drop(conn)
        elif b"\r\n\r\n" in head:
            self._selector.unregister(conn)
            del self._waiting[conn]
            with self._lock:
                busy = self._queued >= METRICS_WORKERS * 4
                if not busy:
                    self._queued += 1
            if busy:  # scrapes arrive far slower than workers answer them: this is a flood
                conn.close()
            else:
                self._workers.submit(self._answer, conn, bytes(head))

    def _drop(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        del self._waiting[conn]
        conn.close()

    # -- the workers -------------------------------------------------------------------------

    def _answer(self, conn: socket.socket, head: bytes) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(METRICS_TIMEOUT_SECONDS)
            conn.sendall(self._response(head))
        except OSError:
            pass  # the client went away or stopped reading: nothing to tell it
        except Exception:  # noqa: BLE001 - a bug here must not end the worker
            log.exception("metrics endpoint failed to answer")
        finally:
            conn.close()
            with self._lock:
                self._queued -= 1

    def _response(self, head: bytes) -> bytes:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        method, target, _ = parts
        path, _, query = target.partition("?")
        headers = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                   "HTTP_ACCEPT": headers.get("accept", ""),
                   "HTTP_ACCEPT_ENCODING": headers.get("accept-encoding", ""), "SERVER_PROTOCOL": "HTTP/1.1"}
        started: list[Any] = []

        def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [status, response_headers]

        body = b"".join(self._app(environ, start_response))
        status, response_headers = started
        lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in response_headers),
                 f"Content-Length: {len(body)}", "Connection: close", "", ""]
        return "\r\n".join(lines).encode("latin-1") + (b"" if method == "HEAD" else body)
