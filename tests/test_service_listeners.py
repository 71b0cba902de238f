"""Listener set-up without a daemon: the Unix socket's mode, group and stale files, and certificate
reloads that fail without touching the certificates in use."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import grpc
import pytest

from sodd.config.schema import ServeConfig
from sodd.serving.listeners import CertificateStore, ListenerError, TlsFiles, add_listeners
from tests.service_helpers import issue, make_ca


def unix_config(path: Path, **kwargs: object) -> ServeConfig:
    return ServeConfig(models=(), model_repository=Path("/m"), listen="", unix_socket=path, **kwargs)


def test_unix_socket_mode_group_and_stale_file(tmp_path: Path) -> None:
    path = tmp_path / "sodd.sock"
    # A socket file left behind by a crashed daemon (nobody listens on it) is replaced.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))

    async def scenario() -> None:
        server = grpc.aio.server()
        config = unix_config(path, unix_socket_mode=0o600, unix_socket_group=str(os.getgid()))
        assert add_listeners(server, config, None) == [f"unix:{path}"]
        await server.start()
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_gid == os.getgid()
        # A second daemon on the same path is refused instead of stealing the socket.
        with pytest.raises(ListenerError, match="in use"):
            add_listeners(grpc.aio.server(), config, None)
        await server.stop(0)

    async def not_a_socket() -> None:
        path.write_text("not a socket")
        with pytest.raises(ListenerError, match="is not a socket"):
            add_listeners(grpc.aio.server(), unix_config(path), None)

    asyncio.run(scenario())
    assert not path.exists()  # grpc removes its socket on stop
    asyncio.run(not_a_socket())


async def handshake(port: int, ca: Path, client: tuple[Path, Path]) -> bool:
    """Whether a client trusting only `ca` and showing `client`'s certificate gets through the TLS
    handshake: the server has no services, so a call that got through is UNIMPLEMENTED."""
    cert, key = client
    credentials = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes(), cert.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        try:
            await channel.unary_unary("/sodd.test.Nothing/Call")(b"", timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return True
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False
    raise AssertionError("a server without services answered")


def test_certificate_reload_that_fails_keeps_the_old_certificates(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca", "sodd test ca")
    rotated = make_ca(tmp_path / "rotated", "sodd rotated ca")
    cert, key = issue(ca, "server", tmp_path / "issued")
    _, other_key = issue(ca, "other", tmp_path / "issued")
    new_cert, new_key = issue(rotated, "server-2", tmp_path / "issued")
    client = issue(ca, "client", tmp_path / "issued")
    store = CertificateStore(TlsFiles(cert, key, ca / "ca.crt"))

    async def scenario() -> None:
        server = grpc.aio.server()
        port = server.add_secure_port("127.0.0.1:0", store.credentials())
        await server.start()
        try:
            assert await handshake(port, ca / "ca.crt", client)
            assert not await handshake(port, rotated / "ca.crt", client)
            with pytest.raises(ListenerError, match="tls_key"):
                store.reload(TlsFiles(cert, other_key, ca / "ca.crt"))
            with pytest.raises(ListenerError, match="tls_client_ca"):
                store.reload(TlsFiles(cert, key, tmp_path / "absent.crt"))
            with pytest.raises(ListenerError, match="needs a restart"):
                store.reload(TlsFiles(cert, key, None))
            # Each failed reload left the certificate in use, for new handshakes too.
            assert store.files.key == key
            assert await handshake(port, ca / "ca.crt", client)
            assert not await handshake(port, rotated / "ca.crt", client)
            store.reload(TlsFiles(new_cert, new_key, ca / "ca.crt"))
            # New handshakes get the new certificate, and keep getting it.
            for _ in range(2):
                assert await handshake(port, rotated / "ca.crt", client)
                assert not await handshake(port, ca / "ca.crt", client)
        finally:
            await server.stop(0)

    asyncio.run(scenario())

