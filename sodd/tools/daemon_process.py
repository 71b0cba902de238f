"""A `sodd serve` child process, as benchmarks, the soak run and the tests start one, how such a child
is stopped, and the memory a process holds.

The daemon prints `sodd: listening on ADDRESS ...` on its stdout once it accepts requests (after
its models loaded); its log goes to stderr. `start_serve` starts it with stderr in a log file,
waits for that line with a deadline that holds even while the daemon prints nothing, and returns
the process with its first address. A daemon that exits first, or misses the deadline, is reported
with the end of its log.
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LISTENING = re.compile(r"listening on (\S+)")
LOG_TAIL_CHARS = 4000


class ServeProcess:
    """A started `sodd serve`: its process, the address it listens on and its log file."""

    def __init__(self, process: subprocess.Popen, address: str, log_path: Path) -> None:
        self.process = process
        self.address = address
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the daemon drains), then SIGKILL if it has not exited within `timeout`; the exit status."""
        return stop_process(self.process, timeout)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_command(args: Sequence[str], python_options: Sequence[str] = ()) -> list[str]:
    """`sodd serve ARGS` run by this interpreter (so the same environment serves)."""
    return [sys.executable, *python_options, "-m", "sodd.cli", "serve", *args]


def _read_stdout(stdout: IO[str], found: queue.Queue[str | None]) -> None:
    """Hand over the first listening address, then keep draining stdout until the daemon closes it,
    so that a daemon writing more never blocks on a full pipe. None says stdout ended first."""
    announced = False
    for line in stdout:
        if not announced and (match := LISTENING.search(line)):
            found.put(match.group(1))
            announced = True
    if not announced:
        found.put(None)
    stdout.close()


def start_serve(args: Sequence[str], log_path: Path, timeout: float = 120.0, *, python_options: Sequence[str] = (),
                cwd: Path | None = None, env: Mapping[str, str] | None = None) -> ServeProcess:
    """Start `sodd serve ARGS` with its log in `log_path` and wait until it says it listens.

    Raises RuntimeError when the daemon exits before that and TimeoutError (after killing it) when
    `timeout` seconds pass first; both carry the end of its log."""
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(serve_command(args, python_options), stdout=subprocess.PIPE, stderr=log,
                                   text=True, errors="replace", cwd=cwd,
                                   env=dict(env) if env is not None else None)
    assert process.stdout is not None
    found: queue.Queue[str | None] = queue.Queue()
    # A thread reads, so the wait below has a deadline even while the daemon is silent.
    threading.Thread(target=_read_stdout, args=(process.stdout, found), name="sodd-serve-stdout",
                     daemon=True).start()
    try:
        address = found.get(timeout=timeout)
    except queue.Empty:
        process.kill()
        process.wait()
        raise TimeoutError(f"sodd serve did not listen within {timeout:g} s; the end of its log "
                           f"{log_path}:\n{_tail(log_path)}") from None
    if address is None:
        code = wait_or_kill(process, 30)  # stdout closes as it exits
        raise RuntimeError(f"sodd serve exited with {code} before listening; the end of its log "
                           f"{log_path}:\n{_tail(log_path)}")
    return ServeProcess(process, address, log_path)


def wait_or_kill(process: subprocess.Popen, timeout: float) -> int:
    """Wait up to `timeout` seconds for `process` to exit, then SIGKILL it; its exit status."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM (a daemon drains), then SIGKILL if it has not exited within `timeout`; its exit status."""
    if process.poll() is None:
        process.terminate()
    return wait_or_kill(process, timeout)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]


@dataclass(frozen=True)
class ResidentMemory:
    """A process's resident set now (VmRSS) and its peak so far (VmHWM), in bytes."""

    rss: int
    peak: int


def resident_memory(pid: int | str = "self") -> ResidentMemory:
    """Read from /proc/PID/status (Linux); "self" is this process.

    Raises ProcessLookupError when the process is gone or a zombie (which has no memory fields)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid}") from None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024  # the kernel writes kB
    if len(fields) < 2:
        raise ProcessLookupError(f"process {pid} has exited (no VmRSS/VmHWM in its status)")
    return ResidentMemory(rss=fields["VmRSS"], peak=fields["VmHWM"])


def rss_bytes(pid: int | str = "self") -> int:
    return resident_memory(pid).rss

