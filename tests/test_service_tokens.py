"""Bearer tokens over TCP and the Unix socket: none or unknown -> UNAUTHENTICATED, a model the token
has no right to -> PERMISSION_DENIED, health without a token; the tokens file is re-read on SIGHUP."""

from __future__ import annotations

import asyncio
import signal
import stat
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sodd_client import AsyncClient, Client
from sodd_client.cli import main as client_main

from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import start_daemon
from tests.service_helpers import jpeg_bytes

TINY_ONLY = "tiny-only-0123456789abcdef"
EVERY_MODEL = "every-model-0123456789abcdef"
ADDED_LATER = "added-later-0123456789abcdef"


def code_of(call) -> grpc.StatusCode:  # noqa: ANN001 - a zero-argument callable making one RPC
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def stream_codes(address: str, token: str, models: list[str], image: bytes) -> list[str]:
    """DetectStream with one frame per model name: each frame's code, then the stream's. Every
    frame is checked, not just the first, and a denied frame does not end the stream."""
    codes = {code.value[0]: code.name for code in grpc.StatusCode}
    with grpc.insecure_channel(address) as channel:
        frames = iter([pb.DetectRequest(image=pb.Image(encoded=image), model=m) for m in models])
        answers = pb_grpc.DetectorStub(channel).DetectStream(frames, timeout=30,
                                                              metadata=[("authorization", f"Bearer {token}")])
        seen = []
        try:
            for answer in answers:
                seen.append(codes[answer.error.code] if answer.WhichOneof("result") == "error" else "OK")
        except grpc.RpcError as exc:
            return [*seen, f"stream {exc.code().name}"]
        return [*seen, "stream OK"]


def test_tokens_over_tcp_and_unix_socket(tiny_model_dirs: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'"{TINY_ONLY}" = ["tiny"]\n"{EVERY_MODEL}" = "*"\n')
    tokens.chmod(0o600)
    socket_path = tmp_path / "sodd.sock"
    daemon = start_daemon(["--model", f"tiny={tiny_model_dirs['both']}", "--model",
                           f"tiny-legacy={tiny_model_dirs['legacy']}", "--tokens-file", str(tokens),
                           "--unix-socket", str(socket_path)], tmp_path / "daemon.log")
    image = jpeg_bytes(320, 240)
    try:
        assert stat.S_ISSOCK(socket_path.stat().st_mode) and stat.S_IMODE(socket_path.stat().st_mode) == 0o660
        for address in (daemon.address, f"unix:{socket_path}"):
            with Client(address, timeout=30) as anonymous:
                assert code_of(anonymous.list_models) == grpc.StatusCode.UNAUTHENTICATED
                assert code_of(lambda c=anonymous: c.detect(image)) == grpc.StatusCode.UNAUTHENTICATED
            with Client(address, timeout=30, token="not-a-known-token-at-all") as stranger:
                assert code_of(stranger.list_models) == grpc.StatusCode.UNAUTHENTICATED
            with Client(address, timeout=30, token=TINY_ONLY) as limited:
                assert code_of(limited.list_models) == grpc.StatusCode.OK
                assert code_of(lambda c=limited: c.detect(image)) == grpc.StatusCode.OK  # the default model
                assert code_of(lambda c=limited: c.detect(image, "tiny")) == grpc.StatusCode.OK
                assert code_of(lambda c=limited: c.detect(image, "tiny-legacy")) == grpc.StatusCode.PERMISSION_DENIED
                assert code_of(lambda c=limited: c.detect_batch([image], "tiny-legacy")) == \
                    grpc.StatusCode.PERMISSION_DENIED
                assert code_of(lambda c=limited: c.get_model("tiny-legacy")) == grpc.StatusCode.PERMISSION_DENIED
            assert stream_codes(address, TINY_ONLY, ["tiny", ""], image) == ["OK", "OK", "stream OK"]
            assert stream_codes(address, TINY_ONLY, ["tiny", "tiny-legacy", "tiny"], image) == \
                ["OK", "PERMISSION_DENIED", "OK", "stream OK"]
            with grpc.insecure_channel(address) as channel:
                unload = pb_grpc.DetectorStub(channel).UnloadModel
                assert code_of(lambda u=unload: u(pb.UnloadModelRequest(name="tiny"), timeout=30, metadata=[
                    ("authorization", f"Bearer {TINY_ONLY}")])) == grpc.StatusCode.PERMISSION_DENIED
            with Client(address, timeout=30, token=EVERY_MODEL) as admin:
                assert code_of(lambda c=admin: c.detect(image, "tiny-legacy")) == grpc.StatusCode.OK
            with grpc.insecure_channel(address) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
                assert health.status == health_pb2.HealthCheckResponse.SERVING

        async def async_calls() -> tuple[list[str], grpc.StatusCode]:
            async with AsyncClient(f"unix:{socket_path}", timeout=30, token=TINY_ONLY) as client:
                names = [m.name for m in await client.list_models()]
                try:
                    await client.detect(image, "tiny-legacy")
                except grpc.aio.AioRpcError as exc:
                    return names, exc.code()
                return names, grpc.StatusCode.OK

        # ListModels shows only what the token may see.
        assert asyncio.run(async_calls()) == (["tiny"], grpc.StatusCode.PERMISSION_DENIED)
        assert client_main(["--server", f"unix:{socket_path}", "--token", TINY_ONLY, "models"]) == 0
        assert client_main(["--server", f"unix:{socket_path}", "models"]) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err

        # The tokens file is re-read on SIGHUP: a new token works, a removed one no longer does.
        tokens.write_text(f'"{ADDED_LATER}" = ["tiny-legacy"]\n"{EVERY_MODEL}" = "*"\n')
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("reload done", timeout=30)
        with Client(daemon.address, timeout=30, token=ADDED_LATER) as added:
            assert code_of(lambda c=added: c.detect(image, "tiny-legacy")) == grpc.StatusCode.OK
        with Client(daemon.address, timeout=30, token=TINY_ONLY) as removed:
            assert code_of(removed.list_models) == grpc.StatusCode.UNAUTHENTICATED
        assert TINY_ONLY not in daemon.log() and EVERY_MODEL not in daemon.log()
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert not socket_path.exists()
