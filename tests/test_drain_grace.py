"""A drain that balancers can see (sodd.serving.drain): NOT_SERVING at once, answers through the grace,
then UNAVAILABLE (never CANCELLED), open watches closed rather than holding the stop; overall
health following the default model; the maximum connection age."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sodd.config.schema import DEFAULT_MODEL_DIR, ModelConfig, ServeConfig
from sodd.oip import grpc_service_pb2 as oip
from sodd.oip import grpc_service_pb2_grpc as oip_grpc
from sodd.serving.drain import QUIET_LIMIT_SECONDS, QUIET_SECONDS, DrainInterceptor
from sodd.serving.server import server_options
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import start_daemon
from tests.service_helpers import jpeg_bytes

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
GRACE = 2.0
NO_RETRY = [("grpc.enable_retries", 0)]


def wait_until(predicate, timeout: float, what: str) -> None:  # noqa: ANN001 - a plain callable
    """Poll `predicate` (each call is a real round trip to the daemon, which paces the loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
    raise AssertionError(f"{what} within {timeout} s")


def test_sigterm_grace_then_unavailable_and_watches_do_not_hold_the_stop(tmp_path: Path) -> None:
    daemon = start_daemon(["--drain-grace", str(GRACE), "--drain-timeout", "30"], tmp_path / "daemon.log",
                          threads=1)
    image = jpeg_bytes(320, 240)
    outcomes: list[tuple[float, grpc.StatusCode]] = []
    lock = threading.Lock()
    done = threading.Event()
    loaded = threading.Event()  # enough answers before the signal
    watching = threading.Event()
    watch_updates: list[int] = []
    watch_end: list[grpc.StatusCode] = []
    models_end: list[grpc.StatusCode] = []
    try:
        channel = grpc.insecure_channel(daemon.address, options=NO_RETRY)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == SERVING  # a balancer is watching
        health_watch = health.Watch(health_pb2.HealthCheckRequest())
        model_watch = pb_grpc.DetectorStub(channel).WatchModels(pb.WatchModelsRequest())

        def read_health() -> None:
            try:
                for update in health_watch:
                    watch_updates.append(update.status)
                    watching.set()
            except grpc.RpcError as exc:
                watch_end.append(exc.code())

        def read_models() -> None:
            try:
                for _ in model_watch:
                    pass
            except grpc.RpcError as exc:
                models_end.append(exc.code())

        def load() -> None:
            # Its own channel, without retries: every refusal shows as it is. Refused, a client goes
            # to another daemon (here: stops), as a balancer or a retrying client would.
            code = grpc.StatusCode.OK
            with grpc.insecure_channel(daemon.address, options=NO_RETRY) as own:
                stub = pb_grpc.DetectorStub(own)
                while not done.is_set() and code == grpc.StatusCode.OK:
                    try:
                        stub.Detect(pb.DetectRequest(image=pb.Image(encoded=image)), timeout=30)
                        code = grpc.StatusCode.OK
                    except grpc.RpcError as exc:
                        code = exc.code()
                    with lock:
                        outcomes.append((time.monotonic(), code))
                        if len(outcomes) >= 10:
                            loaded.set()

        readers = [threading.Thread(target=f) for f in (read_health, read_models, load, load)]
        for t in readers:
            t.start()
        assert loaded.wait(60) and watching.wait(10), "no answers under load"
        signalled = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        # At once: health says NOT_SERVING while Detect still answers.
        wait_until(lambda: health.Check(health_pb2.HealthCheckRequest()).status == NOT_SERVING, 1.0,
                   "health did not turn NOT_SERVING at once")
        assert oip_grpc.GRPCInferenceServiceStub(channel).ServerReady(oip.ServerReadyRequest()).ready is False
        exit_code = daemon.process.wait(30)
        exited = time.monotonic()
        done.set()
        for t in readers:
            t.join(30)
        channel.close()
    finally:
        done.set()
        daemon.stop()
    assert exit_code == 0, daemon.log()
    after = [(t - signalled, code) for t, code in outcomes if t > signalled]
    timeline = ", ".join(f"{t:+.2f} {code.name}" for t, code in after)
    assert all(code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE) for _, code in after), timeline
    # Through the grace every call is answered (one may end just past it, having started before).
    assert all(code == grpc.StatusCode.OK for t, code in after if t < GRACE - 0.2), timeline
    assert any(code == grpc.StatusCode.OK for t, code in after if t > GRACE / 2), timeline
    # The watches saw NOT_SERVING and ended with the drain, not at the 30 s drain timeout.
    assert watch_updates[0] == SERVING and watch_updates[-1] == NOT_SERVING
    assert watch_end == [grpc.StatusCode.UNAVAILABLE] and models_end == [grpc.StatusCode.UNAVAILABLE]
    assert exited - signalled < 20, f"the stop took {exited - signalled:.1f} s: a watch held it"
    print(f"exit {exited - signalled:.2f} s after SIGTERM; {len(after)} calls after it: {timeline}")


def test_the_listener_stays_open_a_quiet_while_after_the_last_call_finished() -> None:
    """Found on an emulated aarch64 board: a client whose call finished as the drain ended sent its
    next call at once and got CANCELLED from grpc's stop, not UNAVAILABLE, because the quiet wait
    counted only refusals. A finished call now restarts the quiet, as a refusal does."""

    async def scenario() -> float:
        interceptor = DrainInterceptor()
        interceptor.stop_accepting()
        interceptor._enter()  # a call admitted before the drain...
        interceptor._leave()  # ...finishes now: its client may send again at once
        started = time.monotonic()
        await interceptor.wait_quiet(QUIET_SECONDS, QUIET_LIMIT_SECONDS)
        return time.monotonic() - started

    waited = asyncio.run(scenario())
    assert waited >= QUIET_SECONDS * 0.9, f"the listener would close {waited:.3f} s after the last call finished"


def test_no_grace_when_nothing_checks_health(tmp_path: Path) -> None:
    daemon = start_daemon(["--drain-grace", "30", "--drain-timeout", "30"], tmp_path / "daemon.log", threads=1)
    try:
        signalled = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(30) == 0
        assert time.monotonic() - signalled < 10, "the grace was kept although no balancer checks health"
    finally:
        daemon.stop()


def test_overall_health_follows_the_default_model(tmp_path: Path) -> None:
    second = f"other={DEFAULT_MODEL_DIR}"
    daemon = start_daemon(["--model", f"main={DEFAULT_MODEL_DIR}", "--model", second], tmp_path / "daemon.log",
                          threads=1)
    try:
        with grpc.insecure_channel(daemon.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            detector = pb_grpc.DetectorStub(channel)
            kserve = oip_grpc.GRPCInferenceServiceStub(channel)

            def statuses() -> list[int]:
                return [health.Check(health_pb2.HealthCheckRequest(service=s)).status
                        for s in ("", "sodd.v1.Detector", "main", "other", "liveness")]

            assert statuses() == [SERVING] * 5
            detector.UnloadModel(pb.UnloadModelRequest(name="main"))
            # "liveness" (Kubernetes' liveness probe) stays SERVING: the process is fine.
            wait_until(lambda: statuses() == [NOT_SERVING, NOT_SERVING, NOT_SERVING, SERVING, SERVING], 10,
                       "overall health did not follow the unloaded default model")
            assert kserve.ServerReady(oip.ServerReadyRequest()).ready is False
            assert kserve.ModelReady(oip.ModelReadyRequest(name="other")).ready is True
            detector.LoadModel(pb.LoadModelRequest(name="main"))
            wait_until(lambda: statuses() == [SERVING] * 5, 30, "overall health did not come back")
            assert kserve.ServerReady(oip.ServerReadyRequest()).ready is True
    finally:
        daemon.stop()


def test_max_connection_age_sends_clients_elsewhere(tmp_path: Path) -> None:
    daemon = start_daemon(["--max-connection-age", "1"], tmp_path / "daemon.log", threads=1)
    states: list[grpc.ChannelConnectivity] = []
    went_idle = threading.Event()

    def follow(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if state == grpc.ChannelConnectivity.IDLE and grpc.ChannelConnectivity.READY in states:
            went_idle.set()

    try:
        with grpc.insecure_channel(daemon.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == SERVING
            channel.subscribe(follow)
            # The GOAWAY after about a second (+-10 %) drops the connection; the next call reconnects.
            assert went_idle.wait(10), f"the connection was not aged out: {states}"
            assert health.Check(health_pb2.HealthCheckRequest()).status == SERVING
            channel.unsubscribe(follow)
    finally:
        daemon.stop()


def test_connection_age_and_drain_settings() -> None:
    base = ServeConfig(models=(ModelConfig("m", DEFAULT_MODEL_DIR),))
    assert base.drain_grace_seconds == 5.0 and base.max_connection_age_seconds == 0
    assert not any("connection_age" in key for key, _ in server_options(base))
    aged = ServeConfig(models=base.models, max_connection_age_seconds=300, max_connection_age_grace_seconds=30)
    assert dict(server_options(aged))["grpc.max_connection_age_ms"] == 300_000
    assert dict(server_options(aged))["grpc.max_connection_age_grace_ms"] == 30_000
    for key in ("drain_grace_seconds", "max_connection_age_seconds", "max_connection_age_grace_seconds"):
        with pytest.raises(ValueError, match=key):
            ServeConfig(models=base.models, **{key: -1.0})
