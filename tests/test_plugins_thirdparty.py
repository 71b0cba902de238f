"""A hardware plugin shipped as a separately installed package, and plugins that misbehave.

The package in tests/fixtures/demo_plugin is "installed" the way pip leaves a package on disk: the
package folder beside a `*.dist-info` holding METADATA and entry_points.txt, on the daemon's
PYTHONPATH. The daemon must find it through the `sodd.hw_plugins` entry points, list it, serve with
it, and survive its failures: a failing load moves to the next device or stops the start with a
clear error, a failing run answers INTERNAL while everything else keeps working.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import pytest
from sodd_client import Client

from tests.conftest import REPO, Daemon, serve_exit, start_daemon

FIXTURE_PACKAGE = REPO / "tests" / "fixtures" / "demo_plugin" / "sodd_demo_plugin"
ENTRY_POINTS = """\
[sodd.hw_plugins]
demo = sodd_demo_plugin:DemoPlugin
demo-broken-probe = sodd_demo_plugin:BrokenProbePlugin
not-a-plugin = sodd_demo_plugin:not_a_plugin
missing = sodd_demo_plugin:NoSuchPlugin
"""


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A site directory holding the installed demo plugin; returns the environment that sees it."""
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(FIXTURE_PACKAGE, site / "sodd_demo_plugin")
    dist_info = site / "sodd_demo_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: sodd-demo-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    (dist_info / "top_level.txt").write_text("sodd_demo_plugin\n")
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)] + ([path] if path else []))}


@pytest.fixture(scope="module")
def demo_daemon(demo_site: dict[str, str], tiny_model_dirs: dict[str, Path],
                tmp_path_factory: pytest.TempPathFactory):
    model = tiny_model_dirs["both"]
    args = ["--model", f"demo={model}", "--device", "demo=demo:0",
            "--model", f"demo-fallback={model}", "--device", "demo-fallback=demo:0?fail=load,cpu",
            "--model", f"flaky={model}", "--device", "flaky=demo:0?fail=run",
            "--model", f"tiny={model}"]
    with pytest.MonkeyPatch.context() as mp:
        for key, value in demo_site.items():
            mp.setenv(key, value)
        daemon = start_daemon(args, tmp_path_factory.mktemp("demo") / "daemon.log")
    yield daemon
    assert daemon.stop() == 0, daemon.log()


@pytest.fixture(scope="module")
def client(demo_daemon: Daemon):
    with Client(demo_daemon.address, timeout=60) as c:
        yield c


def test_installed_plugin_is_discovered_and_listed(client: Client) -> None:
    plugins = {p.name: p for p in client.list_devices()}
    demo = plugins["demo"]
    assert list(demo.device_types) == ["demo"]
    devices = {d.device: d for d in demo.devices}
    assert devices["demo:0"].available and devices["demo:0"].facts["vendor"] == "sodd-demo-plugin"
    assert not devices["demo:1"].available and devices["demo:1"].reason == "demo:1 is switched off"
    # Broken plugins are listed with what is wrong, not hidden, and break nothing else.
    assert "probe failed: RuntimeError: probe exploded" in plugins["demo-broken-probe"].error
    assert "does not implement" in plugins["not-a-plugin"].error
    assert "NoSuchPlugin" in plugins["missing"].error
    assert {"cpu", "arm", "gpu", "npu"} <= set(plugins)


def test_installed_plugin_serves_requests(client: Client, visdrone_image: Path) -> None:
    response = client.detect(visdrone_image.read_bytes(), "demo")
    assert (response.model, response.device) == ("demo", "demo:0")
    (box,) = response.boxes
    # The plugin's fixed box at the 320x320 network input, mapped back to the 1360x765 image.
    assert (box.cls_id, box.label) == (0, "pedestrian")
    assert box.score == pytest.approx(0.875)
    assert [box.xmin, box.ymin, box.xmax, box.ymax] == pytest.approx([42.5, 47.8125, 467.5, 525.9375], abs=1e-3)
    batch = client.detect_batch([visdrone_image.read_bytes()] * 3, "demo")
    assert [len(r.boxes) for r in batch.results] == [1, 1, 1]
    assert client.get_model("demo").state_reason == "demo plugin: one fixed box per image"


def test_failing_load_falls_back_to_the_next_device(client: Client, visdrone_image: Path) -> None:
    info = client.get_model("demo-fallback")
    assert info.device == "cpu"
    assert "demo plugin cannot load" in info.state_reason
    assert client.detect(visdrone_image.read_bytes(), "demo-fallback").device == "cpu"


def test_failing_run_answers_internal_and_the_daemon_keeps_serving(client: Client, visdrone_image: Path) -> None:
    data = visdrone_image.read_bytes()
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as caught:
            client.detect(data, "flaky")
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "demo accelerator fell over" in caught.value.details()
        assert len(client.detect(data, "demo").boxes) == 1
        assert client.detect(data, "tiny").device == "cpu"
    with pytest.raises(grpc.RpcError) as caught:
        client.detect_batch([data, data], "flaky")
    assert caught.value.code() == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize("device, message", [
    ("demo:0?fail=load", "demo plugin cannot load"),
    ("demo:1", "demo:1 is switched off"),
    ("demo:7", "device demo:7 does not exist"),
    ("demobroken", "probe exploded"),
    ("quantum:0", "no hardware plugin handles device type 'quantum'"),
])
def test_failing_load_on_the_only_device_stops_the_start(demo_site: dict[str, str], tiny_model_dirs: dict[str, Path],
                                                         device: str, message: str) -> None:
    code, stderr = serve_exit(["--model", f"m={tiny_model_dirs['both']}", "--device", f"m={device}"], env=demo_site)
    assert code == 1, stderr
    assert "could not be loaded on any device" in stderr and message in stderr, stderr
