"""sodd installs from PyPI with nothing built from source, on x86_64 and on 64-bit ARM boards.

A wheel-only resolution (`uv pip compile --only-binary :all:` for a target platform) answers in
seconds what `pip install` on a board finds out after minutes: a dependency with no wheel there
(onnxoptimizer on aarch64 was one). `pip download --platform` would not do: it evaluates
environment markers for the host. glibc 2.35 is the oldest the ARM boards in scope run (Ubuntu
22.04); Debian 12 has 2.36.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLATFORMS = {"x86_64": "x86_64-manylinux_2_35", "aarch64": "aarch64-manylinux_2_35"}
PYTHONS = ("3.10", "3.11", "3.12")
_OFFLINE = ("error sending request", "failed to fetch", "dns error", "connection refused", "timed out")


def _uv() -> str:
    uv = pytest.importorskip("uv", reason="uv (a test dependency) is not installed")
    return uv.find_uv_bin()


def compile_wheels_only(args: list[str], arch: str, python: str, tmp_path: Path) -> dict[str, str]:
    """Resolve for `arch` and `python` from wheels only; returns {name: version}."""
    out = tmp_path / f"{arch}-{python}.txt"
    cmd = [_uv(), "pip", "compile", "--quiet", "--python-platform", PLATFORMS[arch], "--python-version", python,
           "--only-binary", ":all:", "--system-certs", "--no-header", "--no-annotate", "-o", str(out), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    if result.returncode != 0 and any(s in result.stderr.lower() for s in _OFFLINE) and not os.environ.get("CI"):
        pytest.skip(f"PyPI is not reachable here: {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, f"no wheel-only resolution for {arch}, Python {python}:\n{result.stderr}"
    pins = {}
    for line in out.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.split(";")[0].strip()
    return pins


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("arch", sorted(PLATFORMS))
def test_the_project_and_its_test_tools_install_from_wheels(arch: str, python: str, tmp_path: Path) -> None:
    pins = compile_wheels_only(["pyproject.toml", "--extra", "test"], arch, python, tmp_path)
    assert pins["paddlepaddle"] == "3.1.1"
    assert pins["numpy"].startswith("1."), "Paddle Lite needs numpy < 2"
    for package in ("onnxruntime", "openvino", "opencv-python-headless", "onnx", "polygraphy", "grpcio"):
        assert package in pins, f"{package} missing for {arch}, Python {python}"
    board_without_p2o = arch == "aarch64" and python < "3.12"
    # paddle2onnx requires onnxoptimizer there, which has no ARM wheel: `make setup` adds it --no-deps.
    assert ("paddle2onnx" in pins) != board_without_p2o
    assert "onnxoptimizer" not in pins or arch == "x86_64"
    assert ("paddlelite" in pins) == (arch == "x86_64" and python == "3.10")


@pytest.mark.parametrize("python", ("3.10", "3.11"))
def test_paddle2onnx_itself_has_an_arm_wheel(python: str, tmp_path: Path) -> None:
    """What `make setup` installs with --no-deps on aarch64 below Python 3.12."""
    pin = makefile_paddle2onnx()
    requirement = tmp_path / "p2o.in"
    requirement.write_text(pin + "\n")
    pins = compile_wheels_only(["--no-deps", str(requirement)], "aarch64", python, tmp_path)
    assert pins == {"paddle2onnx": pin.split("==")[1]}


def makefile_paddle2onnx() -> str:
    match = re.search(r"^PADDLE2ONNX\s*:=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert match, "Makefile has no PADDLE2ONNX pin"
    return match.group(1)


def test_makefile_and_pyproject_pin_the_same_paddle2onnx() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"{makefile_paddle2onnx()};' in pyproject


def test_nothing_here_needs_a_build_from_source() -> None:
    """`make setup` passes --only-binary :all: to pip, so a missing wheel fails loudly, not slowly."""
    makefile = (REPO / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and "$(VENV)" in line
                and "--upgrade pip" not in line]
    assert installs and all("--only-binary :all:" in line for line in installs), installs


@pytest.mark.parametrize("python", ("3.9", "3.13"))
def test_the_light_client_builds_and_installs_from_wheels_on_arm(python: str, tmp_path: Path) -> None:
    """clients/ on an ARM board: its build requirements (protoc through grpcio-tools) and its runtime
    requirements with the drawing extra, wheels only, at both ends of the Pythons it promises (x86_64
    installs are real installs in tests/test_client_install.py)."""
    arch = "aarch64"
    text = (REPO / "clients" / "pyproject.toml").read_text()
    build = re.search(r"^requires = \[(.*?)\]", text, re.M | re.S)
    assert build, "clients/pyproject.toml has no build requirements"
    requirements = tmp_path / "client.in"
    requirements.write_text("\n".join(re.findall(r'"([^"]+)"', build.group(1))) + "\n")
    build_pins = compile_wheels_only([str(requirements)], arch, python, tmp_path)
    assert "grpcio-tools" in build_pins
    runtime = compile_wheels_only(["clients/pyproject.toml", "--extra", "draw"], arch, python, tmp_path)
    assert {"grpcio", "protobuf", "pillow"} <= runtime.keys()
    assert not {"numpy", "paddlepaddle", "opencv-python-headless"} & runtime.keys()
