"""A sodd daemon started for a benchmark: loopback, a free port, the model under one name."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

MODEL_NAME = "bench"


class ChildServer:
    """A server process the benchmark started and must stop, whatever happens: terminate, then kill."""

    _process: subprocess.Popen

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> ChildServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BenchDaemon(ChildServer):
    def __init__(self, model_dir: Path, log_path: Path, serve_args: Sequence[str] = (),
                 timeout: float = 300.0) -> None:
        cmd = [sys.executable, "-m", "sodd.cli", "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
               "--model", f"{MODEL_NAME}={model_dir}", *serve_args]
        self.log_path = log_path
        with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
            self._process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        self.address = self._wait_listening(timeout)

    def _wait_listening(self, timeout: float) -> str:
        assert self._process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._process.stdout.readline()
            if not line:
                if self._process.poll() is not None:
                    raise RuntimeError(f"sodd serve exited with {self._process.returncode}: "
                                       f"{self.log_path.read_text(errors='replace')[-2000:]}")
                time.sleep(0.05)
                continue
            match = re.search(r"listening on (\S+)", line)
            if match:
                return match.group(1)
        self.stop()
        raise TimeoutError(f"sodd serve did not listen within {timeout:g} s; its log is {self.log_path}")
