"""A sodd daemon started for a benchmark: loopback, a free port, the model under one name."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from sodd.tools.daemon_process import start_serve, stop_process

MODEL_NAME = "bench"


class ChildServer:
    """A server process the benchmark started and must stop, whatever happens: terminate, then kill."""

    _process: subprocess.Popen

    def stop(self) -> None:
        stop_process(self._process)

    def __enter__(self) -> ChildServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BenchDaemon(ChildServer):
    def __init__(self, model_dir: Path, log_path: Path, serve_args: Sequence[str] = (),
                 timeout: float = 300.0) -> None:
        self.log_path = log_path
        serve = start_serve(["--listen", "127.0.0.1:0", "--metrics-listen", "", "--model", f"{MODEL_NAME}={model_dir}",
                             *serve_args], log_path, timeout)
        self._process = serve.process
        self.address = serve.address
