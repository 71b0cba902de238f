"""sd_notify as systemd would hear it: READY once models are loaded, WATCHDOG pings, RELOADING/READY
around a SIGHUP reload (a failed one says why and keeps serving), STOPPING on SIGTERM."""

from __future__ import annotations

import signal
import socket
import uuid
from pathlib import Path

import pytest
from sodd_client import Client

from sodd.serving.sdnotify import Notifier
from tests.conftest import start_daemon
from tests.service_helpers import NotifyListener


def test_abstract_socket_and_watchdog_variables() -> None:
    name = f"sodd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(b"\0" + name.encode())
        receiver.settimeout(5)
        notifier = Notifier(f"@{name}", "3000000", None)
        assert notifier.ready("up")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=up"
        notifier.close()
    assert notifier.watchdog_seconds == 3.0
    assert Notifier(None, "3000000", "1").watchdog_seconds is None  # meant for another process
    assert not Notifier(None).ready()  # outside systemd: nothing to do, nothing fails


def test_ready_watchdog_reload_and_stopping(tiny_model_dirs: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    config = tmp_path / "sodd.toml"
    text = f'[models.tiny]\npath = "{tiny_model_dirs["both"]}"\n'
    config.write_text(text)
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    # Pings every 0.5 s. How close together they come is the event loop's timing, which a loaded
    # machine stretches; what is checked is that they keep coming while the daemon serves.
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    daemon = start_daemon(["--config", str(config)], tmp_path / "daemon.log")
    monkeypatch.delenv("NOTIFY_SOCKET")
    try:
        ready = listener.wait_for(lambda f: f.get("READY") == "1")
        messages = listener.snapshot()
        assert messages[0][1] == {"STATUS": "loading models"}
        assert "tiny" in messages[ready][1]["STATUS"] and daemon.address in messages[ready][1]["STATUS"]

        # Counted from READY: while models load, the loop may be busy for longer at a time. Four pings
        # take 1.5-2 s; 15 s leaves a loaded machine room, and a daemon pinging at a tenth of the
        # rate (every 5 s) would still miss it.
        listener.wait_for_count(lambda f: f.get("WATCHDOG") == "1", 4, after=ready, timeout=15)

        mark = len(listener.snapshot())
        daemon.process.send_signal(signal.SIGHUP)
        reloading = listener.wait_for(lambda f: f.get("RELOADING") == "1", after=mark)
        assert "MONOTONIC_USEC" in listener.snapshot()[reloading][1]
        done = listener.wait_for(lambda f: f.get("READY") == "1", after=reloading)
        assert "failed" not in listener.snapshot()[done][1]["STATUS"]
        # The reload ran on the serving loop; the watchdog pings go on after it.
        listener.wait_for_count(lambda f: f.get("WATCHDOG") == "1", 2, after=done, timeout=30)

        # A reload with a bad file reports the key, and the daemon keeps serving what it had.
        config.write_text(text + "threshhold = 0.5\n")
        daemon.process.send_signal(signal.SIGHUP)
        failed = listener.wait_for(lambda f: f.get("READY") == "1", after=done + 1)
        assert "models.tiny.threshhold: unknown key" in listener.snapshot()[failed][1]["STATUS"]
        with Client(daemon.address, timeout=30) as client:
            assert [m.name for m in client.list_models()] == ["tiny"]

        mark = len(listener.snapshot())
        daemon.process.send_signal(signal.SIGTERM)
        stopping = listener.wait_for(lambda f: f.get("STOPPING") == "1", after=mark)
        assert "draining" in listener.snapshot()[stopping][1]["STATUS"]
        assert daemon.process.wait(60) == 0, daemon.log()
    finally:
        daemon.stop()
        listener.close()
