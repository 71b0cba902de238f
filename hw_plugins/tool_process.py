"""A plugin's converter run as `python -m <its tool module>` in a child process.

Paddle Lite's optimiser and paddle2onnx are native code that may crash or hang instead of raising;
run in a child, either fails only the model load that asked for the conversion, not the daemon.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable


def run_tool(module: str, args: list[str], what: str, timeout: float,
             crashed: Callable[[str, str], str] | None = None) -> float:
    """Run `python -m module *args` and return the seconds it took.

    RuntimeError naming `what` when it runs past `timeout` or exits non-zero, with the end of its
    output. When a signal killed it and `crashed` is given, `crashed(signal name, output)` words
    the error instead: the caller knows which crashes its tool is prone to.
    """
    started = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what} took longer than {timeout:.0f} s") from exc
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip()[-1500:]
        if result.returncode < 0 and crashed is not None:
            raise RuntimeError(crashed(signal.Signals(-result.returncode).name, tail))
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {tail}")
    return time.perf_counter() - started
