"""The attack review, against a real daemon with tokens: nobody can lock the daemon out with open
calls, manage it without authority, learn through health which models exist, forge its logs,
exhaust its metrics endpoint, or find reflection closed."""

from __future__ import annotations

import asyncio
import resource
import shutil
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import Daemon, start_daemon
from tests.http2_helpers import NonReadingClient
from tests.metrics_helpers import metrics_url
from tests.service_helpers import jpeg_bytes
from tests.test_budgets import bodyless, code_details

TINY_ONLY = "tiny-only-0123456789abcdef"
DETECT_ALL = "detect-all-0123456789abcdef"
MANAGER = "manager-0123456789abcdef"
FORGED = "WARNING sodd.forged: "
EVIL_DIR = f"evil\n{FORGED}from a directory name"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def daemon(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("hostile")
    tokens = root / "tokens.toml"
    tokens.write_text(f'"{TINY_ONLY}" = ["tiny"]\n"{DETECT_ALL}" = {{ models = "*" }}\n'
                      f'[tokens."{MANAGER}"]\nmodels = ["tiny"]\nmanage = true\n')
    tokens.chmod(0o600)
    # A complete model under a name with a newline: before, it was served and its name logged raw.
    repository = root / "repository"
    shutil.copytree(tiny_model_dirs["both"], repository / EVIL_DIR / "1")
    # Started with the usual soft limit of 1,024 open files, which the daemon raises itself.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        process = start_daemon(["--model", f"tiny={tiny_model_dirs['both']}", "--model",
                                f"tiny-legacy={tiny_model_dirs['legacy']}", "--model-repository", str(repository),
                                "--tokens-file", str(tokens), "--unix-socket", str(root / "sodd.sock"),
                                "--log-level", "DEBUG", "--max-message-mb", "9", "--request-body-timeout", "60"],
                               root / "daemon.log")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    process.unix_socket = f"unix:{root / 'sodd.sock'}"  # type: ignore[attr-defined]
    yield process
    assert process.stop() == 0, process.log()[-5000:]


def detect(address: str, token: str, model: str = "tiny", **fields: Any) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(address) as channel:
        try:
            pb_grpc.DetectorStub(channel).Detect(pb.DetectRequest(image=pb.Image(encoded=jpeg_bytes(320, 240)),
                                                                  model=model, **fields),
                                                 metadata=bearer(token), timeout=30)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def first(n: int, tasks: list[asyncio.Future], timeout: float) -> list[Any]:
    """The results of the first `n` of `tasks` to finish."""
    results: list[Any] = []

    async def collect() -> None:
        for finished in asyncio.as_completed(tasks):
            results.append(await finished)
            if len(results) == n:
                return

    await asyncio.wait_for(collect(), timeout)
    return results


async def first_answer(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        answer = await call.read()
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


# -- 1: lockout by open calls ------------------------------------------------------------------


def test_open_calls_cannot_lock_out_detection_or_health(daemon: Daemon) -> None:
    """500 Detect calls that never send their body and 200 health watches: before, the first 128
    filled gRPC's one limit and every Detect and health check got RESOURCE_EXHAUSTED."""

    async def scenario() -> None:
        channels = [grpc.aio.insecure_channel(daemon.address) for _ in range(10)]
        try:
            hogs = [bodyless(channels[i % 10], bearer(TINY_ONLY)) for i in range(500)]
            hog_codes = [asyncio.ensure_future(code_details(h)) for h in hogs]
            anonymous = [asyncio.ensure_future(code_details(bodyless(channels[0]))) for _ in range(5)]
            watches = [health_pb2_grpc.HealthStub(channels[i % 10]).Watch(health_pb2.HealthCheckRequest())
                       for i in range(200)]
            watch_answers = await asyncio.wait_for(asyncio.gather(*map(first_answer, watches)), 60)
            # This host's share (max_calls_per_peer, 64) is held; every other hog is refused at once.
            refused = await first(436, hog_codes, 60)
            assert {code for code, _ in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert all("max_calls_per_peer" in details for _, details in refused)
            assert sum(not task.done() for task in hog_codes) == 64  # this host's share, still open
            # Calls without a token are refused without waiting for the body that never comes.
            assert {code for code, _ in await asyncio.wait_for(asyncio.gather(*anonymous), 10)} == \
                {grpc.StatusCode.UNAUTHENTICATED}
            assert watch_answers.count((grpc.StatusCode.OK, "SERVING")) == 32
            assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_health_watches" in details
                       for code, details in watch_answers if code != grpc.StatusCode.OK)

            # Health checks answer at once, and another client detects.
            async with grpc.aio.insecure_channel(daemon.address) as channel:
                started = time.monotonic()
                check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                assert check.status == health_pb2.HealthCheckResponse.SERVING
                assert time.monotonic() - started < 1
            unix = await asyncio.to_thread(detect, daemon.unix_socket, TINY_ONLY)  # type: ignore[attr-defined]
            assert unix == (grpc.StatusCode.OK, "")
            code, details = await asyncio.to_thread(detect, daemon.address, TINY_ONLY)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_calls_per_peer" in details
            for call in (*hogs, *watches):
                call.cancel()
        finally:
            for channel in channels:
                await channel.close()

    asyncio.run(scenario())
    # The places come back when the clients go.
    deadline = time.monotonic() + 30
    while (outcome := detect(daemon.address, TINY_ONLY))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert time.monotonic() < deadline, outcome
    assert outcome == (grpc.StatusCode.OK, "")


def test_answers_a_client_never_takes_cannot_lock_out_detection_or_health(tiny_model_dirs: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    """A client that never opens its HTTP/2 receive window, sending Detect calls a few at a time:
    each call is admitted and answered, and its answer then waits to be written. Before, its places
    went back when the handler returned, so such calls piled up until gRPC's own limit on calls in
    progress was full, and every other client got "Concurrent RPC limit exceeded", health checks
    included. Now they keep their places until they end: the client host holds its share, no more."""
    daemon = start_daemon(["--model", f"tiny={tiny_model_dirs['both']}", "--max-inference-calls", "8",
                           "--max-calls-per-peer", "4", "--max-concurrent-rpcs", "1"], tmp_path / "daemon.log")
    # gRPC's limit is then the budgets' sum plus 256: 8 + 16 + 32 + 256 = 312 calls in progress.
    request = pb.DetectRequest(image=pb.Image(encoded=jpeg_bytes(64, 64))).SerializeToString()

    def send_four(client: NonReadingClient) -> list[int]:
        """Four Detect calls (max_calls_per_peer), once the daemon has answered or refused each."""
        calls = [client.call("/sodd.v1.Detector/Detect", request) for _ in range(4)]
        client.wait(lambda: all(c in client.answered for c in calls), 30, what="the calls' response headers")
        return calls

    try:
        client = NonReadingClient(daemon.address, "127.0.0.2")
        calls = [c for _ in range(100) for c in send_four(client)]  # 400 calls
        waiting = [c for c in calls if c not in client.ended]
        assert waiting == calls[:4]  # this host's share; every later call was refused at once
        assert {client.ended[c] for c in calls[4:]} == {str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])}
        # Another client host is served, and health answers.
        with grpc.insecure_channel(daemon.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            answer = pb_grpc.DetectorStub(channel).Detect(pb.DetectRequest(image=pb.Image(encoded=jpeg_bytes())),
                                                          timeout=30)
            assert answer.model == "tiny"
        # The host's places come back when its connection goes: a new connection's calls are admitted.
        client.close()
        deadline = time.monotonic() + 30
        while True:
            again = NonReadingClient(daemon.address, "127.0.0.2")
            admitted = [c for c in send_four(again) if c not in again.ended]
            again.close()
            if len(admitted) == 4:
                break
            assert time.monotonic() < deadline, "the closed connection's places never came back"
    finally:
        assert daemon.stop() == 0, daemon.log()[-5000:]


# -- 2: management needs authority ---------------------------------------------------------------


def test_management_needs_the_manage_scope_and_remembers_no_made_up_name(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.address, options=[("grpc.max_send_message_length", 16 << 20)]) as channel:
        stub = pb_grpc.DetectorStub(channel)

        def load(token: str, name: str, version: int = 0) -> tuple[grpc.StatusCode, str]:
            try:
                stub.LoadModel(pb.LoadModelRequest(name=name, version=version), metadata=bearer(token), timeout=60)
            except grpc.RpcError as exc:
                return exc.code(), exc.details() or ""
            return grpc.StatusCode.OK, ""

        code, details = load(DETECT_ALL, "tiny")
        assert code == grpc.StatusCode.PERMISSION_DENIED and "manage scope" in details
        assert load(MANAGER, "tiny") == (grpc.StatusCode.OK, "")
        code, details = load(MANAGER, "made-up", 3)
        assert code == grpc.StatusCode.NOT_FOUND and "'made-up'" in details
        rss_before = rss_mib(daemon)
        for i in range(60):
            code, details = load(MANAGER, f"{i:02d}-" + "x" * (8 << 20), 3)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("name: 8388611 characters")
        growth = rss_mib(daemon) - rss_before
        print(f"RSS growth after 60 LoadModel calls with 8 MB names: {growth:.0f} MiB")
        # Was +874 MB and growing with every call: each name was pinned for good, and each request
        # kept alive by its error's traceback. What is left is the allocator's, and levels off.
        assert growth < 400, growth


def rss_mib(daemon: Daemon) -> float:
    for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# -- 3: health says nothing about models a caller may not see ---------------------------------------


def test_per_model_health_answers_only_callers_who_may_see_the_model(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check

        def status(service: str, token: str | None = None) -> str:
            try:
                answer = check(health_pb2.HealthCheckRequest(service=service), timeout=10,
                               metadata=bearer(token) if token else None)
            except grpc.RpcError as exc:
                return f"{exc.code().name} {exc.details()}"
            return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)

        unknown = status("no-such-model")
        assert unknown.startswith("NOT_FOUND")
        for token in (None, "not-a-known-token-at-all"):
            assert status("", token) == status("sodd.v1.Detector", token) == "SERVING"
            assert status("tiny", token) == status("tiny-legacy", token) == unknown
        assert status("tiny", TINY_ONLY) == "SERVING"
        assert status("tiny-legacy", TINY_ONLY) == unknown
        assert status("tiny-legacy", DETECT_ALL) == "SERVING"
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="tiny"), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        watch.cancel()


# -- 4: names and ids from outside cannot forge or flood the log ----------------------------------


def test_names_and_ids_cannot_forge_log_lines_or_break_statuses(daemon: Daemon) -> None:
    code, _ = detect(daemon.address, DETECT_ALL, model="no-such-model", request_id=f"id\n{FORGED}from a request id")
    assert code == grpc.StatusCode.NOT_FOUND
    # A 100 KB name: before, its quoted name overflowed the status trailer ("Stream removed").
    code, details = detect(daemon.address, DETECT_ALL, model="m" * 100_000)
    assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT) and "model" in details
    assert len(details) < 1000
    code, details = detect(daemon.address, DETECT_ALL, model="n" * (4 << 20))
    assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT) and len(details) < 1000
    # The request log line is written after the answer: wait for it.
    deadline = time.monotonic() + 10
    while "sodd.requests: Detect request_id=\"id\\\\nWARNING sodd.forged" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()[-3000:]
    lines = daemon.log().splitlines()
    assert not [line for line in lines if line.startswith(FORGED)]
    assert max(map(len, lines)) < 10_000
    skipped = [line for line in lines if "skipping directory evil\\nWARNING sodd.forged" in line]
    assert len(skipped) == 1, skipped
    with grpc.insecure_channel(daemon.address) as channel:
        models = pb_grpc.DetectorStub(channel).ListModels(pb.ListModelsRequest(), metadata=bearer(DETECT_ALL),
                                                           timeout=10)
    assert sorted(m.name for m in models.models) == ["tiny", "tiny-legacy"]


# -- 5: the metrics endpoint under idle connections -----------------------------------------------


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_idle_connections_do_not_exhaust_the_metrics_endpoint(daemon: Daemon) -> None:
    url = metrics_url(daemon)
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    before = threads_of(daemon.process.pid)
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(1000)]
    try:
        during = threads_of(daemon.process.pid)
        started = time.monotonic()
        with urllib.request.urlopen(url, timeout=5) as response:
            assert b"sodd_requests_total" in response.read()
        scrape_seconds = time.monotonic() - started
        print(f"threads {before} before, {during} with 1,000 idle connections; scrape {scrape_seconds:.3f} s")
        assert during <= before + 3 and scrape_seconds < 5
    finally:
        for connection in idle:
            connection.close()
    assert "sodd_model_watch_failures_total 0.0" in urllib.request.urlopen(url, timeout=5).read().decode()


# -- 7: reflection is open, in both versions -----------------------------------------------------


@pytest.mark.parametrize("service", ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"])
def test_reflection_needs_no_token(daemon: Daemon, service: str) -> None:
    with grpc.insecure_channel(daemon.address) as channel:
        info = channel.stream_stream(f"/{service}/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="sodd.v1.Detector"),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)]
        listed, detector, itself = list(info(iter(requests), timeout=10))
    assert {s.name for s in listed.list_services_response.service} == {
        "sodd.v1.Detector", "grpc.health.v1.Health", "inference.GRPCInferenceService",
        "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
    assert detector.file_descriptor_response.file_descriptor_proto
    assert itself.file_descriptor_response.file_descriptor_proto, itself


def test_the_daemon_raises_its_open_files_limit(daemon: Daemon) -> None:
    limits = Path(f"/proc/{daemon.process.pid}/limits").read_text().split("Max open files")[1].split()
    soft, hard = int(limits[0]), int(limits[1])
    assert soft == hard
    if hard > 1024:
        assert f"open files limit raised from 1024 to {hard} (the hard limit)" in daemon.log()
