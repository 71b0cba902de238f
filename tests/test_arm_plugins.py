"""The plugins on 64-bit ARM boards, checked from x86 where the behaviour is decided by facts
(the paddle build, the machine, what Paddle Lite's runtime offers), and SIGTERM with Lite models.

The aarch64 runs themselves happen under QEMU in .ci/arm/check.sh (CI's aarch64 job)."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from sodd.errors import FailedPrecondition
from sodd.model.modeldir import read_model_dir
from tests.conftest import start_daemon

LITE_HERE = importlib.util.find_spec("paddlelite") is not None and platform.machine() in ("x86_64", "AMD64")
needs_lite = pytest.mark.skipif(not LITE_HERE and not os.environ.get("CI"),
                                reason="Paddle Lite's x86 wheel is not installed here")


def test_cpu_probe_reports_the_architecture_and_onednn_of_the_build() -> None:
    from hw_plugins.cpu import CpuPlugin, paddle_has_onednn

    (info,) = CpuPlugin().probe()
    assert info.available, info.reason
    assert info.facts["arch"] == platform.machine()
    onednn = paddle_has_onednn()
    assert info.facts["onednn"].startswith("yes" if onednn else "no")
    assert info.facts["precisions"] == ("fp32,bf16" if onednn else "fp32")
    if platform.machine() == "x86_64":
        assert onednn, "PyPI's x86_64 paddle wheels carry oneDNN"


def test_a_paddle_build_without_onednn_runs_plain_kernels_from_the_start(monkeypatch: pytest.MonkeyPatch,
                                                                        tiny_model_dirs: dict[str, Path]) -> None:
    """As on aarch64: decided from the build, not by a failure (its Config lacks the oneDNN setters)."""
    import hw_plugins.cpu as cpu

    asked: list[bool] = []
    real_config = cpu.cpu_config

    def config(model, threads, onednn, precision="fp32"):  # noqa: ANN001, ANN202 - the real signature
        asked.append(onednn)
        return real_config(model, threads, onednn, precision)

    monkeypatch.setattr(cpu, "paddle_has_onednn", lambda: False)
    monkeypatch.setattr(cpu, "cpu_config", config)
    plugin = cpu.CpuPlugin()
    (info,) = plugin.probe()
    assert info.available and info.facts["onednn"].startswith("no") and info.facts["precisions"] == "fp32"
    model = read_model_dir(tiny_model_dirs["both"])
    predictor = plugin.load(model, "cpu", {})
    assert asked == [False], "a build without oneDNN must not be tried with it"
    assert "has no oneDNN" in predictor.notes
    h, w = model.input_size
    boxes, counts = predictor.run({"image": np.full((1, 3, h, w), 114.0, np.float32),
                                   "scale_factor": np.ones((1, 2), np.float32)})
    assert counts.shape == (1,) and boxes.shape[1] == 6
    with pytest.raises(FailedPrecondition, match="no oneDNN"):
        plugin.load(model, "cpu", {"precision": "bf16"})


def test_on_an_arm_board_without_lite_the_reason_says_what_is_missing_and_where_to_get_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import hw_plugins.arm_lite as arm_lite

    monkeypatch.setattr(arm_lite.platform, "machine", lambda: "aarch64")
    monkeypatch.setitem(sys.modules, "paddlelite", None)  # what a board with PyPI's packages has
    (info,) = arm_lite.ArmLitePlugin().probe()
    assert not info.available
    assert info.facts["arch"] == "aarch64"
    for needed in ("paddlelite.lite", "not importable", "PyPI", "x86_64",
                   "github.com/PaddlePaddle/Paddle-Lite/releases", "build_linux.sh --with_python=ON", "pip install"):
        assert needed in info.reason, (needed, info.reason)


def test_on_x86_without_lite_the_reason_names_the_python_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    import hw_plugins.arm_lite as arm_lite

    monkeypatch.setattr(arm_lite.platform, "machine", lambda: "x86_64")
    monkeypatch.setitem(sys.modules, "paddlelite", None)
    (info,) = arm_lite.ArmLitePlugin().probe()
    assert not info.available and "paddlelite.lite" in info.reason
    assert ("3.10" in info.reason) if sys.version_info >= (3, 11) else ("paddlelite==2.13rc0" in info.reason)


def test_a_lite_runtime_without_optimiser_loads_only_converted_programs(monkeypatch: pytest.MonkeyPatch,
                                                                       tiny_model_dirs: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    """Light-API builds of Lite (common on boards) have no Opt: the load says how to convert elsewhere."""
    import hw_plugins.arm_lite as arm_lite

    light = types.ModuleType("paddlelite.lite")
    light.MobileConfig = object  # type: ignore[attr-defined]
    package = types.ModuleType("paddlelite")
    package.lite = light  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "paddlelite", package)
    monkeypatch.setitem(sys.modules, "paddlelite.lite", light)
    (info,) = arm_lite.ArmLitePlugin().probe()
    assert info.available and "only" in info.facts["programs"]
    target = arm_lite.machine_target()
    with pytest.raises(FailedPrecondition, match=rf"sodd lite MODEL_DIR --target {target}"):
        arm_lite.ArmLitePlugin().load(read_model_dir(tiny_model_dirs["both"]), "arm", {"cache_dir": str(tmp_path)})
    assert not list(tmp_path.glob("*.nb"))


@needs_lite
def test_a_program_named_for_this_target_is_preferred(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    from hw_plugins.arm_lite import READY_NB, ArmLitePlugin, machine_target
    from sodd.commands.lite import convert

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["both"], model_dir)
    target = machine_target()
    nb, _ = convert(model_dir, target)
    assert nb == model_dir / f"inference.{target}.nb"
    (model_dir / READY_NB).write_bytes(b"not a program")  # would fail the trial run if it were chosen
    predictor = ArmLitePlugin().load(read_model_dir(model_dir), "arm", {"cache_dir": str(tmp_path / "cache")})
    assert f"inference.{target}.nb from the model directory" in predictor.notes
    assert not (tmp_path / "cache").exists()


_HANDLED = """
import os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: (print("handled", flush=True), os._exit(0)))
{import_paddle}
os.kill(os.getpid(), signal.SIGTERM)
os._exit(3)  # not reached when our handler runs
"""


def test_importing_paddle_through_the_cpu_plugin_keeps_the_sigterm_handler() -> None:
    """`import paddle` installs libpaddle's SIGTERM handler ("FatalError: Termination signal");
    the plugins' import keeps the process's own, so a daemon that imports paddle late still drains."""
    ours = subprocess.run([sys.executable, "-c", _HANDLED.format(
        import_paddle="from hw_plugins.cpu import import_paddle; import_paddle()")],
        capture_output=True, text=True, timeout=120)
    assert (ours.returncode, ours.stdout.strip()) == (0, "handled"), ours.stderr[-2000:]
    plain = subprocess.run([sys.executable, "-c", _HANDLED.format(import_paddle="import paddle")],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode != 0 and "handled" not in plain.stdout, "paddle no longer replaces SIGTERM handlers?"
    assert plain.returncode == -signal.SIGTERM or "FatalError" in plain.stderr


@needs_lite
def test_sigterm_with_a_lite_model_drains_cleanly(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """With the program already converted, serving it imports no paddle at load; the first
    ListDevices used to import it then, replacing the daemon's SIGTERM handler: no drain, and
    Paddle's "FatalError: Termination signal" in the log."""
    from sodd_client import Client

    from hw_plugins.arm_lite import ArmLitePlugin

    cache = tmp_path / "lite"
    ArmLitePlugin().load(read_model_dir(tiny_model_dirs["both"]), "arm", {"cache_dir": str(cache)}).close()
    daemon = start_daemon(["--model", f"m={tiny_model_dirs['both']}", "--device", f"m=arm?cache_dir={cache}"],
                          tmp_path / "daemon.log")
    try:
        with Client(daemon.address, timeout=60) as client:
            assert client.get_model("m").device == "arm"
            assert {p.name for p in client.list_devices()} >= {"arm", "cpu"}
    finally:
        code = daemon.stop()
    log = daemon.log()
    assert "from the cache" in log, log[-3000:]
    assert code == 0, log[-3000:]
    assert re.search(r"SIGTERM: .*refusing new", log), log[-3000:]  # the drain line
    assert "FatalError" not in log and "Termination signal" not in log, log[-3000:]
    assert "fork_posix" not in log, "something forked the serving process (OpenVINO's telemetry did)"


def test_high_performance_mode_measures_what_the_machine_has() -> None:
    from sodd.runtime.high_performance import CANDIDATES, REFERENCE, machine_candidates

    arm = machine_candidates("aarch64")
    assert arm[0] == REFERENCE and set(arm) == {"cpu", "openvino", "onnxruntime"}
    assert not any("bf16" in c for c in arm), "no oneDNN in Paddle's ARM wheels, no bf16 in OpenVINO's ARM plugin"
    assert machine_candidates("x86_64") == CANDIDATES
    assert machine_candidates() == (arm if platform.machine() == "aarch64" else CANDIDATES)
