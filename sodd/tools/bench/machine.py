"""Facts about the machine a benchmark ran on, for the report next to the numbers."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from sodd.plugins.devices import usable_cores

# Instruction sets that change what oneDNN can do on x86 (AVX-512 VNNI/BF16 kernels, AMX tiles).
INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def _cpuinfo() -> tuple[str, list[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    model, flags = "", []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = value.split()
    return model or platform.machine(), flags


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load: other work on the machine shows up in every number."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except OSError:
        return None


def facts() -> dict:
    model, flags = _cpuinfo()
    try:
        # The distribution's metadata: importing paddle here would start its thread pools in the
        # process that then drives the load.
        paddle_version = metadata.version("paddlepaddle")
    except metadata.PackageNotFoundError:
        paddle_version = "not installed"
    memory = _memory_gib()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cores": usable_cores(),
        "flags": [f for f in INTERESTING_FLAGS if f in flags],
        "memory_gib": round(memory, 1) if memory else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "paddle": paddle_version,
        "load_average_start": load_average(),
    }
