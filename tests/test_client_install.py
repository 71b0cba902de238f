"""The light client distribution (clients/) installs into a fresh venv on the oldest and the newest
Python it supports, brings only grpcio and protobuf, and talks to the daemon there: the same JSON as
the client inside the server's environment. Its stubs are the server's stubs (same proto, same
generator pin on the server's Pythons).

Needs PyPI (pip builds the client with grpcio-tools and installs grpcio and protobuf): skipped when
the index cannot be reached, failed instead under CI=true.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, Daemon

CLIENTS = REPO / "clients"
PYTHONS = ("3.9", "3.13")  # the ends of the supported range
SERVER_ONLY = ("paddle", "numpy", "cv2", "PIL", "sodd.runtime")  # the daemon side of sodd


def require_index() -> None:
    url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/")
    try:
        with urllib.request.urlopen(url + ("" if url.endswith("/") else "/") + "grpcio/", timeout=15):
            return
    except OSError as exc:
        message = f"the package index {url} is unreachable ({exc}): cannot build a fresh client venv"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def find_python(version: str) -> tuple[str, dict[str, str]]:
    """An interpreter for `version`: on PATH, or through pyenv as the Makefile finds 3.10."""
    env = dict(os.environ)
    pyenv = shutil.which("pyenv")
    if pyenv:
        installed = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True).stdout.split()
        matching = sorted((v for v in installed if v.startswith(version + ".")),
                          key=lambda v: [int(x) for x in re.findall(r"\d+", v)])
        if matching:
            env["PYENV_VERSION"] = matching[-1]
    exe = shutil.which(f"python{version}")
    if exe:
        probe = subprocess.run([exe, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True,
                               env=env)
        if probe.returncode == 0:
            return probe.stdout.strip(), env
    message = f"Python {version} is not installed (pyenv install {version})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def venv_size_mb(venv: Path) -> float:
    return sum(p.stat().st_size for p in venv.rglob("*") if p.is_file()) / 1e6


@pytest.mark.parametrize("version", PYTHONS)
def test_light_client_installs_alone_and_works(version: str, tiny_daemon: Daemon, visdrone_image: Path,
                                               tmp_path: Path) -> None:
    require_index()
    python, env = find_python(version)
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, env=env)
    vpy = str(venv / "bin" / "python")
    started = time.monotonic()
    install = subprocess.run([vpy, "-m", "pip", "install", "-q", "--no-cache-dir", str(CLIENTS)],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    seconds = time.monotonic() - started

    installed = json.loads(subprocess.run([vpy, "-m", "pip", "list", "--format", "json"], capture_output=True,
                                          text=True, check=True).stdout)
    names = {re.sub(r"[-_.]+", "-", p["name"].lower()) for p in installed} - {"pip", "setuptools", "wheel"}
    # grpcio's own dependency typing-extensions is the only other package.
    assert names <= {"sodd-client", "grpcio", "protobuf", "typing-extensions"}, names
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m.split('.')[0]) " \
            "and (u.find_spec(m) if '.' in m else True)])"
    # From a neutral directory: run from the checkout, `-c` would find the repository's packages.
    assert subprocess.run([vpy, "-c", probe, *SERVER_ONLY], capture_output=True, text=True, cwd=tmp_path,
                          check=True).stdout.strip() == "[]"

    # The stubs in the wheel are generated from the same proto, and talk to the daemon.
    out = tmp_path / "out"
    cli = subprocess.run([str(venv / "bin" / "sodd-client"), "--server", tiny_daemon.address, "detect",
                          str(visdrone_image), "--model", "tiny", "--threshold", "0.3", "--save-json", str(out)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    from sodd_client.cli import main as client_main

    assert client_main(["--server", tiny_daemon.address, "detect", str(visdrone_image), "--model", "tiny",
                        "--threshold", "0.3", "--save-json", str(tmp_path / "here")]) == 0
    name = f"{visdrone_image.stem}_res.json"
    assert (out / name).read_bytes() == (tmp_path / "here" / name).read_bytes()
    assert json.loads((out / name).read_text())["boxes"]

    # PaddleX's example over gRPC, and a clear message where drawing needs the extra.
    example = ("import sys\nfrom sodd_client import Client\n"
               "with Client(sys.argv[1]) as model:\n"
               "    for res in model.predict(sys.argv[2], batch_size=1, model='tiny'):\n"
               "        res.print()\n        res.save_to_json(save_path=sys.argv[3])\n"
               "        try:\n            res.save_to_img(save_path=sys.argv[4])\n"
               "        except ImportError as exc:\n            print('NO-PILLOW', exc)\n")
    run = subprocess.run([vpy, "-c", example, tiny_daemon.address, str(visdrone_image),
                          str(tmp_path / "ex" / "res.json"), str(tmp_path / "ex")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "'res': {'input_path': " in run.stdout and "NO-PILLOW" in run.stdout and "sodd-client[draw]" in run.stdout
    assert (tmp_path / "ex" / "res.json").is_file()
    print(f"\nPython {version}: light client installed in {seconds:.1f} s, venv {venv_size_mb(venv):.0f} MB")


def test_client_stubs_are_the_servers_generated_code(tmp_path: Path) -> None:
    """clients/setup.py runs the same generator as `make proto` on the server's Python: identical files."""
    spec = importlib.util.spec_from_file_location("sodd_client_build", CLIENTS / "setup.py")
    client_setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client_setup)  # `setup()` runs only under __main__
    generated = client_setup.generate(tmp_path)
    for path in generated:
        committed = REPO / "sodd" / "v1" / path.name
        assert committed.read_bytes() == path.read_bytes(), f"{path.name} differs from sodd/v1: run `make proto`"
    # The build pins the generator `make proto` uses here, so wheels carry exactly these stubs.
    from importlib.metadata import version

    pins = (CLIENTS / "pyproject.toml").read_text()
    assert f"\"grpcio-tools=={version('grpcio-tools')}; python_version >= '3.10'\"" in pins
