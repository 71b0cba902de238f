"""Where the daemon listens: TCP (plain, TLS or mutual TLS) and a Unix domain socket for local clients.

Certificates are read once at start and again on reload (SIGHUP). grpc asks for the certificate
configuration before every new TLS handshake, so a swapped certificate is used for new connections
at once while open connections keep theirs; a reload that cannot read or match the files keeps the
certificates in use and reports why.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from sodd.config.addresses import join_host_port, split_host_port
from sodd.config.schema import ServeConfig

log = logging.getLogger(__name__)


class ListenerError(OSError):
    """A listener cannot be set up; the message says which and why."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None

    @classmethod
    def from_config(cls, config: ServeConfig) -> TlsFiles | None:
        if config.tls_cert is None or config.tls_key is None:
            return None
        return cls(config.tls_cert, config.tls_key, config.tls_client_ca)

    def load(self) -> grpc.ServerCertificateConfiguration:
        """Read and check the files: a key that does not match its certificate fails here, not per handshake."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise ListenerError(f"tls_cert {self.cert} / tls_key {self.key}: {exc}") from exc
        try:
            if self.client_ca is not None:
                context.load_verify_locations(cafile=self.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ListenerError(f"tls_client_ca {self.client_ca}: {exc}") from exc
        # ssl checks files and grpc takes bytes, hence a second read; the next reload catches a swap in between.
        chain, key = self.cert.read_bytes(), self.key.read_bytes()
        roots = self.client_ca.read_bytes() if self.client_ca is not None else None
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)


class CertificateStore:
    """Hands grpc the newest certificate configuration; `reload` swaps it in for the next handshakes."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._initial = files.load()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._lock = threading.Lock()  # grpc calls the fetcher from its own threads

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch, require_client_authentication=self.files.client_ca is not None)

    def reload(self, files: TlsFiles) -> None:
        if (files.client_ca is None) != (self.files.client_ca is None):
            # grpc fixes "client certificate required" when the port is added.
            raise ListenerError("turning mutual TLS on or off needs a restart (tls_client_ca)")
        loaded = files.load()
        with self._lock:
            self._pending = loaded
        self.files = files


def _tcp_address(listen: str, port: int) -> str:
    return join_host_port(split_host_port(listen)[0], port)


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a crash blocks bind; one that still answers belongs to a live daemon."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenerError(f"unix_socket {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
            return
    raise ListenerError(f"unix_socket {path} is in use by another process")


def _ids(owner: str | None, group: str | None) -> tuple[int, int]:
    try:
        uid = -1 if owner is None else (int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid)
        gid = -1 if group is None else (int(group) if group.isdigit() else grp.getgrnam(group).gr_gid)
    except KeyError as exc:
        raise ListenerError(f"unix_socket_owner/unix_socket_group: no such user or group: {exc}") from exc
    return uid, gid


def add_unix_socket(server: grpc.aio.Server, config: ServeConfig) -> str:
    path = config.unix_socket
    assert path is not None
    _remove_stale_socket(path)
    # grpc binds here; the tight umask keeps the socket private until its mode and owner are set.
    previous = os.umask(0o177)
    try:
        bound = server.add_insecure_port(f"unix:{path}")
    except RuntimeError as exc:
        raise ListenerError(f"cannot listen on unix_socket {path}: {exc}") from exc
    finally:
        os.umask(previous)
    if not bound:
        raise ListenerError(f"cannot listen on unix_socket {path}")
    try:
        uid, gid = _ids(config.unix_socket_owner, config.unix_socket_group)
        if (uid, gid) != (-1, -1):
            os.chown(path, uid, gid)
        os.chmod(path, config.unix_socket_mode)
    except PermissionError as exc:
        raise ListenerError(f"unix_socket {path}: cannot set owner or mode: {exc}") from exc
    return f"unix:{path}"


def add_listeners(server: grpc.aio.Server, config: ServeConfig,
                  certificates: CertificateStore | None) -> list[str]:
    """Bind every configured listener; returns their addresses (TCP first, with the port bound)."""
    addresses = []
    if config.listen:
        try:
            if certificates is not None:
                port = server.add_secure_port(config.listen, certificates.credentials())
            else:
                port = server.add_insecure_port(config.listen)
        except RuntimeError as exc:
            raise ListenerError(f"cannot listen on {config.listen}: {exc}") from exc
        if port == 0:
            raise ListenerError(f"cannot listen on {config.listen}")
        addresses.append(_tcp_address(config.listen, port))
    if config.unix_socket is not None:
        addresses.append(add_unix_socket(server, config))
    return addresses
