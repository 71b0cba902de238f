"""Mutual TLS against the real daemon: only clients with a certificate from the configured CA are
served, and a server certificate swapped on disk is used for new connections after SIGHUP."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import grpc
from sodd_client import Client
from sodd_client.cli import main as client_main

from tests.conftest import Daemon, start_daemon
from tests.service_helpers import issue, make_ca


def models_or_code(daemon: Daemon, **tls: Path) -> list[str] | grpc.StatusCode:
    with Client(daemon.address, timeout=20, **{k: str(v) for k, v in tls.items()}) as client:
        try:
            return [m.name for m in client.list_models()]
        except grpc.RpcError as exc:
            return exc.code()


def test_mutual_tls_and_certificate_swap_on_sighup(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    ca, other, rotated = (make_ca(tmp_path / n, f"sodd test {n}") for n in ("ca", "other", "rotated"))
    server_cert, server_key = issue(ca, "server", tmp_path / "issued")
    client_cert, client_key = issue(ca, "client", tmp_path / "issued")
    rogue_cert, rogue_key = issue(other, "rogue", tmp_path / "issued")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(server_cert, live / "server.crt")
    shutil.copy(server_key, live / "server.key")
    daemon = start_daemon(["--model", f"tiny={tiny_model_dirs['both']}", "--tls-cert", str(live / "server.crt"),
                           "--tls-key", str(live / "server.key"), "--tls-client-ca", str(ca / "ca.crt")],
                          tmp_path / "daemon.log")
    try:
        good = {"tls_ca": ca / "ca.crt", "tls_cert": client_cert, "tls_key": client_key}
        assert models_or_code(daemon, **good) == ["tiny"]
        assert models_or_code(daemon, tls_ca=ca / "ca.crt") == grpc.StatusCode.UNAVAILABLE
        assert models_or_code(daemon, tls_ca=ca / "ca.crt", tls_cert=rogue_cert,
                              tls_key=rogue_key) == grpc.StatusCode.UNAVAILABLE
        assert models_or_code(daemon) == grpc.StatusCode.UNAVAILABLE  # plaintext
        assert client_main(["--server", daemon.address, "--tls-ca", str(ca / "ca.crt"), "--tls-cert",
                            str(client_cert), "--tls-key", str(client_key), "models"]) == 0

        # Rotate the server certificate to one from another CA: clients trusting only that CA get in
        # once the daemon re-read the files, and the old certificate is no longer offered.
        trusting_rotated = {**good, "tls_ca": rotated / "ca.crt"}
        assert models_or_code(daemon, **trusting_rotated) == grpc.StatusCode.UNAVAILABLE
        new_cert, new_key = issue(rotated, "server-2", tmp_path / "issued")
        shutil.copy(new_key, live / "server.key")
        shutil.copy(new_cert, live / "server.crt")
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("reload done", timeout=30)
        assert "certificates re-read" in daemon.log()
        # The next handshake after the reload gets the new certificate, the old one no longer.
        assert models_or_code(daemon, **trusting_rotated) == ["tiny"]
        assert models_or_code(daemon, **good) == grpc.StatusCode.UNAVAILABLE
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_a_key_that_does_not_match_its_certificate_stops_the_start(tiny_model_dirs: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca", "sodd test ca")
    cert, _ = issue(ca, "server", tmp_path / "issued")
    _, other_key = issue(ca, "other", tmp_path / "issued")
    try:
        daemon = start_daemon(["--model", f"tiny={tiny_model_dirs['both']}", "--tls-cert", str(cert),
                               "--tls-key", str(other_key)], tmp_path / "daemon.log")
    except RuntimeError as exc:
        assert "exited with 1" in str(exc) and "tls_key" in str(exc)
    else:
        daemon.stop()
        raise AssertionError("the daemon started with a key that does not match its certificate")
