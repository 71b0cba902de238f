"""Hot swap under load against the real daemon: no failed request, the right version answers,
broken versions never serve, memory does not grow across load/unload cycles, and WatchModels
reports each step."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import cv2
import grpc
import pytest
from sodd_client import Client

from sodd.tools.daemon_process import rss_bytes
from sodd.training.export.paddlex_dir import ExportSpec, export_paddlex_dir
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import EMULATED_MEMORY, REPO, memory_is_emulated, start_daemon
from tests.service_helpers import wait_until

SETTLE = 0.3
CLIENTS = 8
GOOD_SWAPS = 30
# Served within this long after a complete version is renamed into place (settle + debounce + load).
FOLLOW_BOUND_SECONDS = 10.0


def export_tiny(out: Path, **kwargs: object) -> Path:
    from tests.fixtures.tiny_detector import LABELS

    spec = ExportSpec(factory="tests.fixtures.tiny_detector:build", factory_kwargs=dict(kwargs), weights=None,
                      model_name="PP-YOLOE_plus_SOD-S", input_size=(320, 320), label_list=LABELS)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(REPO)
    try:
        export_paddlex_dir(spec, out, legacy=False)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old
    return out


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants")
    return {"a": export_tiny(root / "a", seed=7), "b": export_tiny(root / "b", seed=11),
            "boxes_only": export_tiny(root / "boxes_only", seed=7, boxes_only=True)}


def place_version(model_root: Path, version: int, source: Path, damage: str = "") -> Path:
    """Write a version elsewhere, optionally break it, then rename it in (the documented way)."""
    staging = model_root.parent / f".staging-{model_root.name}-{version}"
    shutil.copytree(source, staging)
    if damage == "missing_params":
        (staging / "inference.pdiparams").unlink()
    elif damage == "truncated_params":
        params = staging / "inference.pdiparams"
        params.write_bytes(params.read_bytes()[: params.stat().st_size // 3])
    elif damage == "corrupt_yml":
        (staging / "inference.yml").write_text("Global: {model_name: [unclosed\nPreprocess: 3\n")
    elif damage == "half_copied":
        (staging / "inference.yml").unlink()
        params = staging / "inference.pdiparams"
        params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])
    target = model_root / str(version)
    os.rename(staging, target)
    return target


def wait_for(predicate, timeout: float) -> float:
    # NOT_FOUND for a version the daemon has not seen yet is "not yet".
    return wait_until(predicate, timeout, retry_on=(grpc.RpcError,))


@pytest.fixture(scope="module")
def image_bytes(visdrone_image: Path) -> bytes:
    small = cv2.resize(cv2.imread(str(visdrone_image)), (480, 270))
    return cv2.imencode(".png", small)[1].tobytes()


def reference_boxes(model_dir: Path, image: bytes, tmp_path: Path) -> list[tuple]:
    daemon = start_daemon(["--model", f"ref={model_dir}"], tmp_path / f"ref-{model_dir.name}.log")
    try:
        with Client(daemon.address) as c:
            return [(b.cls_id, round(b.score, 5)) for b in c.detect(image, threshold=0.3).boxes]
    finally:
        daemon.stop()


def test_swaps_under_load_lose_no_request(variants, image_bytes: bytes, tmp_path: Path) -> None:
    expected = {name: reference_boxes(variants[name], image_bytes, tmp_path) for name in ("a", "b")}
    assert expected["a"] != expected["b"]
    repo = tmp_path / "repo"
    model_root = repo / "det"
    model_root.mkdir(parents=True)
    place_version(model_root, 1, variants["a"])
    content = {1: "a"}
    daemon = start_daemon(["--model-repository", str(repo), "--settle-seconds", str(SETTLE)], tmp_path / "d.log")
    results: list[tuple[str, int, list[tuple]]] = []
    stop = threading.Event()

    def load_loop() -> None:
        with Client(daemon.address, timeout=60) as c:
            while not stop.is_set():
                try:
                    r = c.detect(image_bytes, "det", threshold=0.3)
                    results.append(("ok", r.version, [(b.cls_id, round(b.score, 5)) for b in r.boxes]))
                except grpc.RpcError as exc:
                    results.append((exc.code().name + ": " + exc.details(), 0, []))

    threads = [threading.Thread(target=load_loop) for _ in range(CLIENTS)]
    follow_times = []
    try:
        with Client(daemon.address) as admin:
            wait_for(lambda: admin.get_model("det").version == 1, 30)
            for t in threads:
                t.start()
            broken = ["missing_params", "truncated_params", "corrupt_yml", "wrong_outputs", "half_copied"] * 2
            version = 1
            for i in range(GOOD_SWAPS):
                if i % 3 == 1 and broken:
                    version += 1
                    damage = broken.pop()
                    source = variants["boxes_only"] if damage == "wrong_outputs" else variants["a"]
                    place_version(model_root, version, source, "" if damage == "wrong_outputs" else damage)
                    wait_for(lambda v=version: admin.get_model("det", v).state == pb.MODEL_STATE_FAILED, 30)
                    assert admin.get_model("det").version == version - 1
                    assert admin.get_model("det", version).state_reason
                    shutil.rmtree(model_root / str(version))
                    version += 1  # the next good version is newer than the removed broken one
                else:
                    version += 1
                name = "b" if i % 2 == 0 else "a"
                place_version(model_root, version, variants[name])
                content[version] = name
                follow_times.append(wait_for(lambda v=version: admin.get_model("det").version == v,
                                             FOLLOW_BOUND_SECONDS))
                # The load is answered by each version before the next swap replaces it.
                wait_for(lambda v=version: any(r[1] == v for r in results[-4 * CLIENTS:]), 30)
            assert not broken
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        daemon.stop()
    failures = [r for r in results if r[0] != "ok"]
    assert not failures, failures[:5]
    assert len(results) > 100
    # Every answer came from the version it names: its boxes are that version's model's boxes.
    for _, version, boxes in results:
        assert boxes == expected[content[version]], version
    print(f"\n{len(results)} requests, {GOOD_SWAPS} swaps, 10 broken; follow time max {max(follow_times):.2f} s, "
          f"median {sorted(follow_times)[len(follow_times) // 2]:.2f} s")


def test_memory_is_flat_across_load_unload_cycles(variants, image_bytes: bytes, tmp_path: Path) -> None:
    if memory_is_emulated():
        pytest.skip(EMULATED_MEMORY)
    daemon = start_daemon(["--model", f"keep={variants['b']}", "--model", f"cycled={variants['a']}"],
                          tmp_path / "rss.log")
    try:
        with Client(daemon.address) as c:
            rss = []
            for _ in range(50):
                c.unload_model("cycled", timeout=60)
                c.load_model("cycled", timeout=60)
                assert c.detect(image_bytes, "cycled").model == "cycled"
                rss.append(rss_bytes(daemon.process.pid) // 1024)
    finally:
        daemon.stop()
    print(f"\nRSS after cycle 1: {rss[0]} KiB, after cycle 50: {rss[-1]} KiB ({rss[-1] / rss[0] - 1:+.1%})")
    assert rss[-1] <= rss[0] * 1.10


def test_watch_models_and_pinned_versions(variants, image_bytes: bytes, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    model_root = repo / "det"
    model_root.mkdir(parents=True)
    place_version(model_root, 1, variants["a"])
    daemon = start_daemon(["--model-repository", str(repo), "--settle-seconds", str(SETTLE)], tmp_path / "w.log")
    events: list[pb.ModelEvent] = []
    try:
        channel = daemon.channel()
        stub = pb_grpc.DetectorStub(channel)
        stream = stub.WatchModels(pb.WatchModelsRequest(name="det"), timeout=60)

        def read() -> None:
            try:
                for event in stream:
                    events.append(event)
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=read)
        reader.start()
        wait_for(lambda: any(e.state == pb.MODEL_STATE_READY and e.version == 1 for e in events), 30)
        place_version(model_root, 2, variants["b"])
        wait_for(lambda: any(e.state == pb.MODEL_STATE_UNLOADED and e.version == 1 for e in events), 30)
        place_version(model_root, 3, variants["a"], "corrupt_yml")
        wait_for(lambda: any(e.state == pb.MODEL_STATE_FAILED and e.version == 3 for e in events), 30)
        with Client(daemon.address) as c:
            assert c.detect(image_bytes, "det", version=2).version == 2
            with pytest.raises(grpc.RpcError) as err:
                c.detect(image_bytes, "det", version=1)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and "available: [2]" in err.value.details()
            # Pin version 1 again beside 2, then unload it: a pinned request gets NOT_FOUND.
            loaded = stub.LoadModel(pb.LoadModelRequest(name="det", version=1), timeout=60)
            assert sorted(v.version for v in loaded.versions) == [1, 2]
            assert c.detect(image_bytes, "det", version=1).version == 1
            assert c.detect(image_bytes, "det").version == 2
            stub.UnloadModel(pb.UnloadModelRequest(name="det", version=1), timeout=60)
            with pytest.raises(grpc.RpcError) as err:
                c.detect(image_bytes, "det", version=1)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        stream.cancel()
        reader.join(10)
    finally:
        daemon.stop()
    states = [(e.version, pb.ModelState.Name(e.state)) for e in events]
    for step in [(2, "MODEL_STATE_LOADING"), (2, "MODEL_STATE_READY"), (1, "MODEL_STATE_DRAINING"),
                 (1, "MODEL_STATE_UNLOADED"), (3, "MODEL_STATE_FAILED")]:
        assert step in states, states
    failed = next(e for e in events if e.version == 3 and e.state == pb.MODEL_STATE_FAILED)
    assert "inference.yml" in failed.reason
