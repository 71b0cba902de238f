"""Hardware plugins and device routing against the real daemon.

One daemon serves each model on `cpu` and on `arm` (Paddle Lite, x86 target) at once; their boxes
for the real VisDrone image must agree. The same daemon shows that unavailable devices are listed
with their reasons and that a fallback list lands on the next device. Devices that cannot be had
at all make `sodd serve` refuse to start with the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from sodd_client import Client
from sodd_client.cli import main as client_main

from sodd.errors import FailedPrecondition, InvalidArgument
from sodd.model.modeldir import read_model_dir
from sodd.plugins.devices import ACCEPTED_FORMS, parse_devices
from sodd.v1 import detector_pb2 as pb
from tests.conftest import REPO, Daemon, serve_exit, start_daemon

LITE_RUNS_HERE = importlib.util.find_spec("paddlelite") is not None and platform.machine() in ("x86_64", "AMD64")
# CI must run the Lite checks: there a missing wheel fails them instead of skipping.
needs_lite = pytest.mark.skipif(not LITE_RUNS_HERE and not os.environ.get("CI"),
                                reason="Paddle Lite's x86 wheel is not installed here")
SCORE_TOL, COORD_TOL = 1e-4, 0.05
PARITY_THRESHOLD = 0.05  # low, so that many boxes are compared


def paddle_has_cuda() -> bool:
    import paddle

    return bool(paddle.device.is_compiled_with_cuda())


@pytest.fixture(scope="module")
def lite_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lite-cache")


@pytest.fixture(scope="module")
def parity_models(tiny_model_dirs: dict[str, Path], sod_model_dir: Path, picodet_dir: Path) -> dict[str, Path]:
    """Our exporter's output (a toy and the PP-YOLOE+ SOD architecture), the real pretrained detector
    and, once it exists, the shipped default model."""
    models = {"tiny": tiny_model_dirs["both"], "ppyoloe-sod": sod_model_dir, "picodet": picodet_dir}
    default = REPO / "sodd" / "default_model"
    if (default / "inference.pdmodel").is_file():
        models["default"] = default
    return models


@pytest.fixture(scope="module")
def plugin_daemon(parity_models: dict[str, Path], tiny_model_dirs: dict[str, Path], lite_cache: Path,
                  tmp_path_factory: pytest.TempPathFactory):
    if not LITE_RUNS_HERE and not os.environ.get("CI"):
        pytest.skip("Paddle Lite's x86 wheel is not installed here")
    args = []
    for name, path in parity_models.items():
        args += ["--model", f"{name}-cpu={path}", "--model", f"{name}-arm={path}",
                 "--device", f"{name}-arm=arm?cache_dir={lite_cache}"]
    args += ["--model", f"fallback={tiny_model_dirs['both']}", "--device", "fallback=gpu:0,cpu",
             "--model", f"pir-fallback={tiny_model_dirs['pir']}",
             "--device", f"pir-fallback=arm?cache_dir={lite_cache},cpu"]
    daemon = start_daemon(args, tmp_path_factory.mktemp("plugins") / "daemon.log", timeout=300)
    yield daemon
    assert daemon.stop() == 0, daemon.log()


@pytest.fixture(scope="module")
def client(plugin_daemon: Daemon):
    with Client(plugin_daemon.address, timeout=120) as c:
        yield c


def box_rows(response: pb.DetectResponse) -> np.ndarray:
    return np.array([[b.cls_id, b.score, b.xmin, b.ymin, b.xmax, b.ymax] for b in response.boxes]).reshape(-1, 6)


def assert_same_boxes(cpu: np.ndarray, arm: np.ndarray, what: str) -> tuple[float, float]:
    assert len(cpu) > 0, f"{what}: no boxes to compare"
    assert cpu.shape == arm.shape, f"{what}: cpu gave {len(cpu)} boxes, arm {len(arm)}"
    assert np.array_equal(cpu[:, 0], arm[:, 0]), f"{what}: classes differ"
    score_diff = float(np.abs(cpu[:, 1] - arm[:, 1]).max())
    coord_diff = float(np.abs(cpu[:, 2:] - arm[:, 2:]).max())
    assert score_diff <= SCORE_TOL, f"{what}: score diff {score_diff}"
    assert coord_diff <= COORD_TOL, f"{what}: coordinate diff {coord_diff} px"
    return score_diff, coord_diff


@needs_lite
def test_cpu_and_arm_give_the_same_boxes(client: Client, parity_models: dict[str, Path],
                                         visdrone_image: Path) -> None:
    data = visdrone_image.read_bytes()
    for name in parity_models:
        cpu = client.detect(data, f"{name}-cpu", threshold=PARITY_THRESHOLD)
        arm = client.detect(data, f"{name}-arm", threshold=PARITY_THRESHOLD)
        assert (cpu.device, arm.device) == ("cpu", "arm")
        score_diff, coord_diff = assert_same_boxes(box_rows(cpu), box_rows(arm), name)
        print(f"{name}: {len(cpu.boxes)} boxes, max |score diff| {score_diff:.2e}, "
              f"max |coord diff| {coord_diff:.2e} px")


@needs_lite
def test_arm_batches_count_boxes_per_image(client: Client, real_images: list[Path]) -> None:
    datas = [p.read_bytes() for p in real_images]
    batch = client.detect_batch(datas, "tiny-arm", threshold=PARITY_THRESHOLD)
    assert len(batch.results) == len(datas)
    for data, result in zip(datas, batch.results, strict=True):
        single = client.detect(data, "tiny-arm", threshold=PARITY_THRESHOLD)
        assert np.allclose(box_rows(result), box_rows(single), atol=1e-5)
        assert len(result.boxes) > 0


@needs_lite
def test_lite_program_is_converted_once_and_reused(plugin_daemon: Daemon, client: Client, lite_cache: Path,
                                                    parity_models: dict[str, Path], tiny_model_dirs: dict[str, Path],
                                                    tmp_path: Path, visdrone_image: Path) -> None:
    # One cached program per model (different files, different keys), published whole.
    programs = sorted(lite_cache.glob("*.nb"))
    assert len(programs) == len(parity_models), programs
    assert not list(lite_cache.glob(".staging-*"))
    assert "converted" in client.get_model("tiny-arm").state_reason
    before = {p.name: p.stat().st_mtime_ns for p in programs}

    second = start_daemon(["--model", f"again={tiny_model_dirs['both']}",
                           "--device", f"again=arm?cache_dir={lite_cache}"], tmp_path / "again.log")
    try:
        with Client(second.address, timeout=60) as c:
            info = c.get_model("again")
            assert info.device == "arm"
            assert "from the cache" in info.state_reason, info.state_reason
            response = c.detect(visdrone_image.read_bytes(), threshold=PARITY_THRESHOLD)
            first = client.detect(visdrone_image.read_bytes(), "tiny-arm", threshold=PARITY_THRESHOLD)
            assert np.array_equal(box_rows(response), box_rows(first))
    finally:
        assert second.stop() == 0, second.log()
    assert "converted to a Paddle Lite" not in second.log()
    assert {p.name: p.stat().st_mtime_ns for p in lite_cache.glob("*.nb")} == before


def test_lite_cache_key_follows_model_bytes_and_conversion_options(tiny_model_dirs: dict[str, Path],
                                                                   picodet_dir: Path) -> None:
    from hw_plugins.artifact_cache import content_key

    tiny = [tiny_model_dirs["both"] / "inference.pdmodel", tiny_model_dirs["both"] / "inference.pdiparams"]
    pico = [picodet_dir / "inference.pdmodel", picodet_dir / "inference.pdiparams"]
    x86 = {"target": "x86", "paddlelite": "2.13rc0"}
    assert content_key(tiny, x86) == content_key(tiny, dict(x86))
    assert content_key(tiny, x86) != content_key(tiny, {**x86, "target": "arm"})
    assert content_key(tiny, x86) != content_key(tiny, {**x86, "paddlelite": "2.14"})
    assert content_key(tiny, x86) != content_key(pico, x86)


@needs_lite
def test_pir_only_directory_on_arm_says_how_to_re_export(client: Client, tiny_model_dirs: dict[str, Path]) -> None:
    from hw_plugins.arm_lite import ArmLitePlugin

    with pytest.raises(FailedPrecondition) as caught:
        ArmLitePlugin().load(read_model_dir(tiny_model_dirs["pir"]), "arm", {})
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    for hint in ("legacy programs", "inference.json", "sodd export", "FLAGS_enable_pir_api=0"):
        assert hint in caught.value.message

    # In a fallback list the next device takes it, and GetModel says why arm was skipped.
    info = client.get_model("pir-fallback")
    assert info.device == "cpu"
    assert "sodd export" in info.state_reason

    code, stderr = serve_exit(["--model", f"m={tiny_model_dirs['pir']}", "--device", "m=arm"])
    assert code != 0
    assert "legacy programs" in stderr and "sodd export" in stderr


def test_unavailable_devices_are_listed_with_reasons(client: Client, plugin_daemon: Daemon,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    plugins = {p.name: p for p in client.list_devices()}
    assert {"cpu", "arm", "gpu", "npu"} <= set(plugins)
    assert list(plugins["gpu"].device_types) == ["gpu"] and list(plugins["npu"].device_types) == ["npu"]
    assert any(d.available for d in plugins["cpu"].devices)
    if not paddle_has_cuda():
        (gpu,) = plugins["gpu"].devices
        assert not gpu.available and "no CUDA" in gpu.reason
    for device in plugins["npu"].devices:
        assert device.available or "CustomDevice" in device.reason

    assert client_main(["--server", plugin_daemon.address, "devices"]) == 0
    out = capsys.readouterr().out
    assert "gpu: unavailable" in out or paddle_has_cuda()
    assert "npu: unavailable" in out


def test_fallback_list_loads_on_the_next_device(client: Client, visdrone_image: Path) -> None:
    info = client.get_model("fallback")
    assert info.device == "cpu"
    if not paddle_has_cuda():
        assert "gpu:0" in info.state_reason and "no CUDA" in info.state_reason
    assert client.detect(visdrone_image.read_bytes(), "fallback").device == "cpu"


@pytest.mark.parametrize("device, reason", [("gpu?mode=trt_fp16", "no CUDA"), ("npu:0", "CustomDevice")])
def test_unavailable_device_stops_the_start_with_the_reason(tiny_model_dirs: dict[str, Path], device: str,
                                                            reason: str) -> None:
    if device.startswith("gpu") and paddle_has_cuda():
        pytest.skip("this paddle build has CUDA")
    code, stderr = serve_exit(["--model", f"m={tiny_model_dirs['both']}", "--device", f"m={device}"])
    assert code == 1, stderr
    assert "could not be loaded on any device" in stderr and "unavailable" in stderr and reason in stderr


@pytest.mark.parametrize("text", ["gpu:x", "GPU", "gpu:-1", "cpu,", ":0", "npu:0?type", "gpu:0?mode=a&&b=c"])
def test_malformed_device_string_lists_the_accepted_forms(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_devices(text)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ACCEPTED_FORMS in caught.value.message


def test_serve_refuses_a_malformed_device_string(tiny_model_dirs: dict[str, Path]) -> None:
    code, stderr = serve_exit(["--model", f"m={tiny_model_dirs['both']}", "--device", "m=gpu:zero"])
    assert code == 2
    assert "malformed" in stderr and "gpu:N" in stderr and "npu:N" in stderr


@pytest.mark.parametrize("plugin, device", [("cpu:CpuPlugin", "cpu"), ("gpu:GpuPlugin", "gpu:0"),
                                            ("npu:NpuPlugin", "npu:1"), ("arm_lite:ArmLitePlugin", "arm"),
                                            ("openvino:OpenVinoPlugin", "openvino"),
                                            ("onnxruntime:OnnxRuntimePlugin", "onnxruntime")])
def test_every_plugin_refuses_an_option_it_does_not_take(tiny_model_dirs: dict[str, Path], plugin: str,
                                                         device: str) -> None:
    """Checked before any backend is touched, so this runs where the backends are missing too."""
    module, name = plugin.split(":")
    backend = getattr(importlib.import_module(f"hw_plugins.{module}"), name)()
    with pytest.raises(InvalidArgument) as caught:
        backend.load(read_model_dir(tiny_model_dirs["both"]), device, {"colour": "red"})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message.startswith(f"device {device}: unknown option(s) ['colour']; the ")


def test_option_schema_gives_defaults_and_refuses_bad_values() -> None:
    from sodd.plugins.options import Option, OptionSchema

    schema = OptionSchema("acme", Option("threads", int, None, "threads"),
                          Option("mode", str, "fast", "how", ("fast", "exact")),
                          Option("cache_dir", Path, None, "where"))
    assert schema.parse("acme:0", {}) == {"threads": None, "mode": "fast", "cache_dir": None}
    assert schema.parse("acme:0", {"threads": "3", "mode": "exact", "cache_dir": "/tmp/c"}) == {
        "threads": 3, "mode": "exact", "cache_dir": Path("/tmp/c")}
    assert schema.parse("acme:0", parse_devices("acme:0?threads=")[0].options)["threads"] is None
    for given, message in (({"threads": "0"}, "threads must be a positive integer, got '0'"),
                           ({"threads": "two"}, "threads must be a positive integer, got 'two'"),
                           ({"mode": "slow"}, "mode must be one of ['fast', 'exact'], got 'slow'"),
                           ({"Mode": "fast"}, "unknown option(s) ['Mode']; the acme plugin takes "
                                              "['threads', 'mode', 'cache_dir']")):
        with pytest.raises(InvalidArgument) as caught:
            schema.parse("acme:0", given)
        assert caught.value.message == f"device acme:0: {message}"
    assert schema.describe()[1] == "mode=fast|exact (default fast): how"


@needs_lite
def test_plugin_options_are_checked(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    from hw_plugins.arm_lite import ArmLitePlugin

    model = read_model_dir(tiny_model_dirs["both"])
    with pytest.raises(InvalidArgument, match="unknown option"):
        ArmLitePlugin().load(model, "arm", {"colour": "red"})
    with pytest.raises(InvalidArgument, match="power_mode"):
        ArmLitePlugin().load(model, "arm", {"power_mode": "turbo"})
    # A .nb for ARM would crash Lite on x86 instead of raising: refused before converting.
    with pytest.raises(FailedPrecondition, match="target=x86"):
        ArmLitePlugin().load(model, "arm", {"target": "arm", "cache_dir": str(tmp_path)})
    assert not list(tmp_path.iterdir())


@needs_lite
def test_lite_settings_the_build_cannot_apply_are_reported(tiny_model_dirs: dict[str, Path], lite_cache: Path) -> None:
    from hw_plugins.arm_lite import ArmLitePlugin

    predictor = ArmLitePlugin().load(read_model_dir(tiny_model_dirs["both"]), "arm",
                                     {"cache_dir": str(lite_cache), "threads": "2", "power_mode": "high"})
    from paddlelite import lite

    if not hasattr(lite.MobileConfig(), "set_threads"):  # the x86 wheel
        assert "threads ignored" in predictor.notes and "power_mode ignored" in predictor.notes


def test_tensorrt_shapes_come_from_hpi_else_from_the_resize_target(picodet_dir: Path, tiny_model_dirs: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    import shutil

    import yaml

    from hw_plugins.gpu import GpuPlugin, program_inputs, shapes_for, trt_dynamic_shapes

    picodet = read_model_dir(picodet_dir)
    shapes = trt_dynamic_shapes(picodet, max_batch=4)
    assert shapes["image"] == [[1, 3, 416, 416], [1, 3, 416, 416], [4, 3, 416, 416]]
    assert shapes["scale_factor"] == [[1, 2], [1, 2], [4, 2]]
    # Exactly the program's inputs, in its order (im_shape is not one of PicoDet's).
    names = program_inputs(picodet_dir / "inference.pdmodel", picodet_dir / "inference.pdiparams")
    assert list(shapes_for(shapes, names, picodet)) == names == ["image", "scale_factor"]
    with pytest.raises(FailedPrecondition, match="no TensorRT shapes"):
        shapes_for({"image": shapes["image"]}, names, picodet)

    with_hpi = tmp_path / "hpi"
    shutil.copytree(tiny_model_dirs["both"], with_hpi)
    yml = yaml.safe_load((with_hpi / "inference.yml").read_text())
    yml["Hpi"] = {"backend_configs": {"paddle_infer": {"trt_dynamic_shapes": {
        "image": [[1, 3, 320, 320], [2, 3, 320, 320], [16, 3, 320, 320]],
        "scale_factor": [[1, 2], [2, 2], [16, 2]]}}}}
    (with_hpi / "inference.yml").write_text(yaml.safe_dump(yml))
    shapes = trt_dynamic_shapes(read_model_dir(with_hpi), max_batch=4)
    assert shapes == yml["Hpi"]["backend_configs"]["paddle_infer"]["trt_dynamic_shapes"]

    # Options are checked before any CUDA call, so this runs on machines without a GPU too.
    with pytest.raises(InvalidArgument, match="mode must be one of"):
        GpuPlugin().load(read_model_dir(picodet_dir), "gpu:0", {"mode": "trt_int4"})
    with pytest.raises(InvalidArgument, match="unknown option"):
        GpuPlugin().load(read_model_dir(picodet_dir), "gpu:0", {"precision": "fp16"})


# Runs the cpu plugin's predictor in a fresh process (Paddle's flags are the process's) and prints
# the most wake-ups per run of any thread other than the caller: Paddle's garbage collector's.
GC_WAKEUPS = """
import glob, sys, threading
from hw_plugins.cpu import CpuPlugin, smoke_inputs
from sodd.model.modeldir import read_model_dir
model = read_model_dir(sys.argv[1])
predictor = CpuPlugin().load(model, "cpu", {"threads": "2"})
inputs = smoke_inputs(model, predictor.input_names)
for _ in range(3):
    predictor.run(inputs)
def woken():
    counts = {}
    for task in glob.glob("/proc/self/task/*"):
        status = open(task + "/status").read()
        counts[task] = int(status.split("\\nvoluntary_ctxt_switches:")[1].split()[0])
    return counts
caller = f"/proc/self/task/{threading.get_native_id()}"
before = woken()
for _ in range(20):
    predictor.run(inputs)
after = woken()
print(max((after[t] - before.get(t, 0)) / 20 for t in after if t != caller))
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="counts wake-ups in /proc")
def test_cpu_predictor_frees_tensors_in_batches_not_after_every_op(tiny_model_dirs: dict[str, Path]) -> None:
    """Paddle's garbage-collector thread woke once per op (PaddleX's setting), preempting a math
    thread each time; the cpu plugin has it free in batches, unless the operator set the flag."""
    def wakeups(env: dict[str, str]) -> float:
        env = {**{k: v for k, v in os.environ.items() if k != "FLAGS_eager_delete_tensor_gb"}, **env}
        done = subprocess.run([sys.executable, "-c", GC_WAKEUPS, str(tiny_model_dirs["both"])], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300, check=True)
        return float(done.stdout.split()[-1])

    per_op = wakeups({"FLAGS_eager_delete_tensor_gb": "0"})  # the operator's choice is kept
    batched = wakeups({})
    assert per_op >= 10, f"the tiny program's collector woke {per_op} times a run"
    assert batched <= per_op / 4, f"batched collection woke {batched} times a run, per-op {per_op}"
