"""Helpers for the running-as-a-service tests: waiting on a condition, a NOTIFY_SOCKET listener, a
throw-away PKI, an image."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest


def wait_until(predicate: Callable[[], Any], timeout: float, *, interval: float = 0.05,
               retry_on: tuple[type[BaseException], ...] = (), what: str = "condition") -> float:
    """Poll `predicate` until it returns something true; the seconds that took.

    For conditions only visible by asking (a model's state, a file, a log line). An exception in
    `retry_on` counts as "not yet" (NOT_FOUND for a version the daemon has not seen yet). Raises
    TimeoutError after `timeout` seconds, so a test that waits in vain fails instead of hanging."""
    started = time.monotonic()
    deadline = started + timeout
    pause = threading.Event()  # never set: waiting on it is the pause between two polls
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except retry_on:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what} not met within {timeout:g} s")
        pause.wait(min(interval, remaining))


class NotifyListener:
    """What a service manager would hear on NOTIFY_SOCKET: (monotonic time, {key: value}) per datagram."""

    def __init__(self, path: Path) -> None:
        self.address = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.address)
        self._sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._arrived:
                self.messages.append((time.monotonic(), fields))
                self._arrived.notify_all()

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], after: int = 0, timeout: float = 60.0) -> int:
        """Index of the first message from `after` on that satisfies `predicate`."""
        return self.wait_for_count(predicate, 1, after, timeout)[0]

    def wait_for_count(self, predicate: Callable[[dict[str, str]], bool], count: int, after: int = 0,
                       timeout: float = 60.0) -> list[int]:
        """Indices of the first `count` messages from `after` on that satisfy `predicate`, as they arrive."""

        def matching() -> list[int]:
            return [i for i, (_, fields) in enumerate(self.messages[after:], after) if predicate(fields)][:count]

        with self._arrived:
            if not self._arrived.wait_for(lambda: len(matching()) >= count, timeout):
                raise AssertionError(f"{len(matching())} of {count} matching notifications within {timeout} s; "
                                     f"got {self.messages[after:]}")
            return matching()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> Path:
    """A CA (ca.crt, ca.key) in `directory`, which is created."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", "2", "-subj", f"/CN={name}", cwd=directory)
    return directory


def issue(ca: Path, name: str, out: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost named `name`, signed by the CA in `ca`; returns (cert, key)."""
    out.mkdir(parents=True, exist_ok=True)
    key, csr, cert = out / f"{name}.key", out / f"{name}.csr", out / f"{name}.crt"
    ext = out / f"{name}.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", f"/CN={name}", cwd=out)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca / "ca.crt"), "-CAkey", str(ca / "ca.key"),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext), cwd=out)
    return cert, key


def jpeg_bytes(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (9, 9), 0)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()
