"""Closed-loop HTTP load on PaddleX's serving, the same shape as the gRPC load on sodd.

C client threads, each with its own keep-alive connection, post prebuilt JSON bodies (base64
image, no visualisation) and time send to receive; only `errorCode == 0` answers count.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from sodd.tools.bench.stats import Measurement


def request_bodies(images: Sequence[bytes]) -> list[bytes]:
    return [json.dumps({"image": base64.b64encode(data).decode("ascii"), "visualize": False}).encode()
            for data in images]


def _phase(url: str, bodies: list[bytes], concurrency: int, total: int, timeout: float,
           latencies: list[float], errors: dict[str, int]) -> float:
    parts = urlsplit(url)
    counter = itertools.count()
    lock = threading.Lock()

    def fail(key: str) -> None:
        with lock:
            errors[key] = errors.get(key, 0) + 1

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            while (i := next(counter)) < total:  # itertools.count is atomic under the GIL
                body = bodies[i % len(bodies)]
                start = time.perf_counter()
                try:
                    conn.request("POST", parts.path, body, {"Content-Type": "application/json"})
                    response = conn.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    fail(type(exc).__name__)
                    conn.close()
                    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
                    continue
                elapsed = time.perf_counter() - start
                if response.status != 200:
                    fail(f"HTTP {response.status}")
                    continue
                if json.loads(payload).get("errorCode") != 0:
                    fail("errorCode != 0")
                    continue
                with lock:
                    latencies.append(elapsed)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def measure(url: str, images: Sequence[bytes], size: str, concurrency: int, requests: int, warmup: int,
            timeout: float = 300.0) -> Measurement:
    bodies = request_bodies(images)
    _phase(url, bodies, concurrency, warmup, timeout, [], {})
    latencies: list[float] = []
    errors: dict[str, int] = {}
    seconds = _phase(url, bodies, concurrency, requests, timeout, latencies, errors)
    return Measurement("paddlex-serving", "", size, concurrency, requests, len(latencies), seconds, latencies, errors)
