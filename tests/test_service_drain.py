"""Graceful stop: SIGTERM under load. Health turns NOT_SERVING, new requests are refused, every
request already accepted gets its answer, and the process exits 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sodd_client import Client

from tests.conftest import start_daemon
from tests.service_helpers import jpeg_bytes, wait_until

CLIENTS = 8
# A request sent this long before the signal has surely reached the daemon, even on a busy machine.
IN_TRANSIT_MARGIN = 0.5


def test_sigterm_under_load_answers_every_accepted_request(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    daemon = start_daemon(["--model", f"tiny={tiny_model_dirs['both']}", "--drain-timeout", "30"],
                          tmp_path / "daemon.log")
    image = jpeg_bytes(800, 600)
    records: list[tuple[float, float, grpc.StatusCode]] = []
    lock = threading.Lock()
    health_seen: list[int] = []

    def client_loop() -> None:
        with Client(daemon.address, timeout=60) as client:
            while True:
                started = time.monotonic()
                try:
                    client.detect(image)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                with lock:
                    records.append((started, time.monotonic(), code))
                if code != grpc.StatusCode.OK:
                    return

    def watch_health() -> None:
        with grpc.insecure_channel(daemon.address) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            try:
                for update in stream:
                    health_seen.append(update.status)
                    if update.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        stream.cancel()  # a watcher that lingers would hold the drain to its timeout
            except grpc.RpcError:
                pass

    try:
        watcher = threading.Thread(target=watch_health)
        watcher.start()
        threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        load_started = time.monotonic()
        # Enough answered requests, and load for long enough that some were sent well before the signal.
        wait_until(lambda: len(records) >= 5 * CLIENTS and time.monotonic() - load_started >= 3 * IN_TRANSIT_MARGIN,
                   60, interval=0.02, what=f"{5 * CLIENTS} answered requests")
        signalled = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        watcher.join(60)
        assert daemon.process.wait(60) == 0, daemon.log()
        exited = time.monotonic()
    finally:
        daemon.stop()

    OK, UNAVAILABLE, CANCELLED = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED
    timeline = "\n".join(f"{a - signalled:+.3f} {b - signalled:+.3f} {code.name}" for a, b, code in sorted(records))
    sent_before = [r for r in records if r[0] < signalled - IN_TRANSIT_MARGIN]
    assert sent_before and all(code == OK for _, _, code in sent_before), timeline
    in_flight = [r for r in records if r[0] < signalled < r[1]]
    assert any(code == OK for _, _, code in in_flight), f"no request was in flight at the signal\n{timeline}"
    # Every other request was either answered or refused with UNAVAILABLE before it began (the daemon
    # had not received it yet). Only one sent after the signal may meet grpc's own stop right as the
    # last answer leaves, and see CANCELLED.
    refused = [r for r in records if r[2] != OK]
    assert all(code == UNAVAILABLE or (code == CANCELLED and started > signalled)
               for started, _, code in refused), timeline
    assert health_seen[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
    assert exited - signalled < 30, "the drain waited for its timeout although every request had finished"
    print(f"{len(records)} requests: {len(sent_before)} sent well before SIGTERM, {len(in_flight)} in flight at it, "
          f"{len(refused)} refused after it; exit {exited - signalled:.2f} s after the signal\n{timeline}")
