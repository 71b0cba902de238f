"""A real Prometheus scrapes a real daemon: the counters it stores equal the requests sent, per
code, and the documented PromQL (p99 latency per model, error ratio) gives finite answers."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sodd_client import Client

from tests.conftest import Daemon, start_daemon
from tests.metrics_helpers import metrics_url, prometheus_tool
from tests.service_helpers import wait_until

# The queries docs/metrics.md and the README give operators.
P99_BY_MODEL = ("histogram_quantile(0.99, sum by (model, le) "
                "(rate(sodd_request_duration_seconds_bucket[5m])))")
ERROR_RATIO = 'sum(rate(sodd_requests_total{code!="OK"}[5m])) / sum(rate(sodd_requests_total[5m]))'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, process: subprocess.Popen, url: str, log_path: Path) -> None:
        self.process, self.url, self.log_path = process, url, log_path

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, promql: str, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0):
        results: list[list[dict[str, Any]]] = []

        def answered() -> bool:
            results.append(self.query(promql))
            return done(results[-1])

        try:  # Prometheus scrapes every second: only asking again shows the next scrape
            wait_until(answered, timeout, interval=0.25, what=promql)
        except TimeoutError:
            raise AssertionError(f"{promql} gave {results[-1]} after {timeout} s\n"
                                 f"{self.log_path.read_text()[-3000:]}") from None
        return results[-1]


def by_label(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


@pytest.fixture
def daemon(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(["--model", f"tiny={tiny_model_dirs['both']}"], tmp_path / "daemon.log")
    yield d
    assert d.stop() == 0, d.log()


@pytest.fixture
def prometheus(daemon: Daemon, tmp_path: Path) -> Iterator[Prometheus]:
    binary = prometheus_tool("prometheus")
    target = urllib.parse.urlsplit(metrics_url(daemon)).netloc
    config = tmp_path / "prometheus.yml"
    # One-second scrapes keep the test short; the daemon's endpoint is cheap to scrape.
    config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                      f"scrape_configs:\n  - job_name: sodd\n    static_configs:\n"
                      f"      - targets: ['{target}']\n")
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    server = Prometheus(process, f"http://127.0.0.1:{port}", log_path)
    try:
        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{log_path.read_text()}")
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                return response.status == 200

        try:
            wait_until(ready, 30, interval=0.2, retry_on=(OSError,), what="prometheus ready")
        except TimeoutError:
            raise AssertionError(f"prometheus did not start:\n{log_path.read_text()}") from None
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_prometheus_sees_every_request_by_code(daemon: Daemon, prometheus: Prometheus,
                                               visdrone_image: Path) -> None:
    # The series exist before the first request, so rate() has a zero to start from.
    prometheus.wait_for('sodd_requests_total{job="sodd",code="OK"}', lambda r: len(r) >= 1)
    image = visdrone_image.read_bytes()
    sent = {"OK": 0, "INVALID_ARGUMENT": 0, "NOT_FOUND": 0}
    with Client(daemon.address, timeout=60) as client:
        for i in range(12):
            try:
                if i % 4 == 1:
                    client.detect(b"not an image")
                elif i % 6 == 5:
                    client.detect(image, model="no-such-model")
                elif i % 4 == 2:
                    client.detect_batch([image, image])
                else:
                    client.detect(image)
                sent["OK"] += 1
            except grpc.RpcError as exc:
                sent[exc.code().name] += 1
    assert all(sent.values()), sent

    # Every code has a series from the start; those not sent stay at zero.
    expected = {code: float(n) for code, n in sent.items()}

    def nonzero(result: list[dict[str, Any]]) -> dict[str, float]:
        return {code: v for code, v in by_label(result, "code").items() if v}

    counted = prometheus.wait_for("sum by (code) (sodd_requests_total)", lambda r: nonzero(r) == expected)
    assert nonzero(counted) == expected and len(counted) == len(grpc.StatusCode)

    # Every series starts at zero, so rate() sees the increase of every bucket and every code.
    def finite_for_tiny(result: list[dict[str, Any]]) -> bool:
        return math.isfinite(by_label(result, "model").get("tiny", math.nan))

    p99 = by_label(prometheus.wait_for(P99_BY_MODEL, finite_for_tiny), "model")
    assert 0 < p99["tiny"] <= 30, p99
    ratio = by_label(prometheus.wait_for(ERROR_RATIO, lambda r: len(r) == 1 and float(r[0]["value"][1]) > 0), "")
    assert 0 < ratio[""] < 1, ratio
