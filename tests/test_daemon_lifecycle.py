"""The daemon as an object: a failed start releases what it had started; a shutdown releases everything.

These run the daemon in-process (sodd.serving.server.Daemon) so that what is left behind, sockets
and tasks and models, can be looked at from the same process.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sodd.cli import build_parser
from sodd.commands.serve import build_config
from sodd.serving.listeners import ListenerError
from sodd.serving.server import Daemon

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "sodd" / "default_model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_bind(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def serve_config(listen_port: int, metrics_port: int):  # noqa: ANN201 - ServeConfig
    args = build_parser("serve").parse_args([
        "serve", "--model", f"default={DEFAULT_MODEL}", "--listen", f"127.0.0.1:{listen_port}",
        "--metrics-listen", f"127.0.0.1:{metrics_port}", "--threads", "1", "--instances", "1"])
    return build_config(args)


def other_tasks() -> set[asyncio.Task]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


def test_a_start_that_fails_after_loading_releases_the_models_the_endpoint_and_its_tasks() -> None:
    metrics_port = free_port()
    with socket.socket() as taken:  # the gRPC port is taken: the last step of start fails
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = serve_config(taken.getsockname()[1], metrics_port)

        async def attempt() -> Daemon:
            daemon = Daemon(config)
            with pytest.raises(ListenerError):
                await daemon.start()
            assert other_tasks() == set(), "background tasks left running after a failed start"
            return daemon

        daemon = asyncio.run(attempt())
    assert daemon.registry.models() == [], "the loaded model was not closed"
    assert can_bind(metrics_port), "the metrics endpoint still holds its port"


def test_start_serve_and_shutdown_in_one_process_leave_nothing_behind() -> None:
    listen_port, metrics_port = free_port(), free_port()
    config = serve_config(listen_port, metrics_port)

    async def life() -> Daemon:
        daemon = Daemon(config)
        await daemon.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{listen_port}") as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        await daemon.shutdown("test")
        assert other_tasks() == set()
        return daemon

    daemon = asyncio.run(life())
    assert daemon.registry.models() == []
    assert can_bind(listen_port) and can_bind(metrics_port)
