"""A baseline kept loaded in its own process, measuring one round when told.

Interleaved rounds (sodd and a baseline taking turns) make a drift of the machine's load hit both.
The child answers once when it is ready, then reads one JSON order per line on stdin and answers
each with one line starting with RESULT_MARK on stdout (native libraries print other lines there;
they are skipped). It ends at the end of its input.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from sodd.tools.daemon_process import wait_or_kill

RESULT_MARK = "SODD-BENCH-RESULT "  # paddlex_worker.py repeats it: it cannot import sodd


class RoundsChild:
    def __init__(self, name: str, command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in close()
        self._process = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._log, text=True, env=None if env is None else dict(env))
        try:
            self.hello: dict = self._answer()  # what the child says once it is ready
        except BaseException:
            self.close()
            raise

    def _answer(self) -> dict:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if line.startswith(RESULT_MARK):
                return json.loads(line[len(RESULT_MARK):])
        raise RuntimeError(f"{self.name} ended (exit {self._process.wait()}); see {self._log.name}")

    def ask(self, order: dict) -> dict:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(order) + "\n")
        self._process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()  # the child ends at the end of its input
        wait_or_kill(self._process, 30)
        self._log.close()

    def __enter__(self) -> RoundsChild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
