"""The shipped unit file passes `systemd-analyze verify` and keeps the settings the daemon relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sodd.config.schema import ServeConfig
from tests.conftest import REPO

UNIT = REPO / "systemd" / "sodd.service"


def unit_settings(text: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+)=(.*)$", text, flags=re.M))


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt install systemd)")
    sodd = Path(sys.executable).parent / "sodd"
    assert sodd.exists(), f"{sodd} is missing: install the package (pip install -e .)"
    # verify checks that ExecStart's binary exists: point it at this environment's sodd.
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={sodd}", UNIT.read_text(), flags=re.M)
    unit = tmp_path / "sodd.service"
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Unknown or misspelt keys are only warnings for systemd: any remark about our unit fails the test.
    assert "sodd" not in output, output


def test_unit_keeps_what_the_daemon_relies_on() -> None:
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == "notify" and s["WatchdogSec"] and s["Restart"] == "on-failure"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "--config /etc/sodd/sodd.toml" in s["ExecStart"]
    stop_seconds = int(s["TimeoutStopSec"].rstrip("s"))
    assert stop_seconds > ServeConfig(models=(), model_repository=Path("/m")).drain_timeout_seconds
    for key in ("DynamicUser", "ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "ReadOnlyPaths",
                "StateDirectory", "CapabilityBoundingSet", "RestrictAddressFamilies", "SystemCallFilter"):
        assert key in s, key
    assert s["ProtectSystem"] == "strict" and s["SystemCallFilter"] == "@system-service"
    # Descriptors for far more connections than the call budgets admit calls, and the metrics
    # endpoint's waiting connections (1,024 let 1,100 idle connections lock clients out).
    config = ServeConfig(models=(), model_repository=Path("/m"))
    assert int(s["LimitNOFILE"]) >= 16 * (config.max_inference_calls + config.max_management_calls
                                          + config.max_health_watches) + 1024
    assert not (REPO / "systemd" / "sodd.socket").exists(), "socket activation is not supported (see README)"
