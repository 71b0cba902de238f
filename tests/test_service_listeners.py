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


def test_certificate_reload_that_fails_keeps_the_old_certificates(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca", "sodd test ca")
    cert, key = issue(ca, "server", tmp_path / "issued")
    _, other_key = issue(ca, "other", tmp_path / "issued")
    store = CertificateStore(TlsFiles(cert, key, ca / "ca.crt"))
    assert store._fetch() is None  # nothing new to hand grpc
    with pytest.raises(ListenerError, match="tls_key"):
        store.reload(TlsFiles(cert, other_key, ca / "ca.crt"))
    with pytest.raises(ListenerError, match="tls_client_ca"):
        store.reload(TlsFiles(cert, key, tmp_path / "absent.crt"))
    with pytest.raises(ListenerError, match="needs a restart"):
        store.reload(TlsFiles(cert, key, None))
    assert store._fetch() is None and store.files.key == key
    store.reload(TlsFiles(cert, key, ca / "ca.crt"))
    assert store._fetch() is not None and store._fetch() is None  # handed over once
