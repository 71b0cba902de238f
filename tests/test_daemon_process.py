"""Starting `sodd serve` as a child process: the start-up deadline fires while the child is silent,
a child that exits first is reported with its log, and a process's resident memory is read."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from sodd.tools import daemon_process
from sodd.tools.daemon_process import resident_memory, start_serve


def child(monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    """Run `code` in place of `sodd serve`."""

    def command(args: Sequence[str], python_options: Sequence[str] = ()) -> list[str]:
        return [sys.executable, "-c", code]

    monkeypatch.setattr(daemon_process, "serve_command", command)


def test_the_deadline_fires_while_the_child_says_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A child that neither prints nor exits: a blocking read of its stdout would wait for ever.
    child(monkeypatch, "import sys, threading; print('loading', file=sys.stderr, flush=True); "
                       "threading.Event().wait(120)")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not listen within 2 s") as err:
        start_serve([], tmp_path / "d.log", timeout=2)
    assert time.monotonic() - started < 30
    assert "loading" in str(err.value)  # the end of its log


def test_a_child_that_exits_first_is_reported_with_its_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    child(monkeypatch, "import sys; print('tls_key does not match', file=sys.stderr); sys.exit(3)")
    with pytest.raises(RuntimeError, match="exited with 3") as err:
        start_serve([], tmp_path / "d.log", timeout=60)
    assert "tls_key does not match" in str(err.value)


def test_the_first_listening_address_is_returned_and_stop_ends_the_child(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    child(monkeypatch, "import threading; print('starting'); "
                       "print('sodd: listening on 127.0.0.1:4711 unix:/run/sodd.sock', flush=True); "
                       "threading.Event().wait(120)")
    with start_serve([], tmp_path / "d.log", timeout=60) as serve:
        assert serve.address == "127.0.0.1:4711"
        assert serve.process.poll() is None
    assert serve.process.returncode == -15  # SIGTERM from stop()


def test_resident_memory() -> None:
    own = resident_memory()
    assert 0 < own.rss <= own.peak
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    with pytest.raises(ProcessLookupError):
        resident_memory(process.pid)
