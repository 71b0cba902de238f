"""High-performance mode: our NMS against Paddle's own op, each backend's boxes against Paddle
Inference fp32 (also the real PicoDet on the real images), the conversion cache, and the selection."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import pytest

from sodd.model import pipeline
from sodd.model.modeldir import read_model_dir
from sodd.model.nms import NmsParams, multiclass_nms
from sodd.plugins.devices import DeviceSpec
from sodd.runtime.high_performance import (
    BF16_TOLERANCE,
    CANDIDATES,
    Timing,
    Tolerance,
    agreement,
    machine_candidates,
    select_backend,
)

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("paddle2onnx", "onnxruntime", "openvino")),
    reason="paddle2onnx, onnxruntime and openvino are not installed (pip install -e .)")


# -- our NMS equals Paddle's multiclass_nms3 ------------------------------------------------------

def paddle_nms(boxes: np.ndarray, scores: np.ndarray, p: NmsParams) -> tuple[np.ndarray, np.ndarray]:
    import paddle
    from paddle import _C_ops

    out, _index, counts = _C_ops.multiclass_nms3(
        paddle.to_tensor(boxes), paddle.to_tensor(scores), None, p.score_threshold, p.nms_top_k, p.keep_top_k,
        p.nms_threshold, p.normalized, p.nms_eta, p.background_label)
    return out.numpy(), counts.numpy()


def random_case(rng: np.random.Generator, trial: int) -> tuple[np.ndarray, np.ndarray, NmsParams]:
    b, m, c = int(rng.integers(1, 3)), int(rng.integers(1, 250)), int(rng.integers(1, 6))
    xy = rng.uniform(0, 100, (b, m, 2))
    wh = rng.uniform(-2, 40, (b, m, 2))  # some inverted boxes, which have zero area in the kernel
    if trial % 4 == 0:  # integer corners: touching boxes and exact IoU ties
        xy, wh = np.round(xy), np.round(wh)
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (b, c, m)).astype(np.float32)
    if trial % 3 == 0:  # score ties, which the kernel breaks by index and then by class
        scores = np.round(scores, 1).astype(np.float32)
    params = NmsParams(
        score_threshold=float(rng.choice([0.0, 0.01, 0.3])), nms_top_k=int(rng.choice([-1, 10, 100])),
        keep_top_k=int(rng.choice([-1, 5, 50, 100])), nms_threshold=float(rng.choice([0.3, 0.5, 0.6, 0.7])),
        normalized=bool(rng.integers(0, 2)), nms_eta=float(rng.choice([1.0, 1.0, 0.9])),
        background_label=int(rng.choice([-1, -1, 0])))
    return boxes, scores, params


def test_numpy_nms_equals_paddle_multiclass_nms3_on_random_inputs() -> None:
    rng = np.random.default_rng(0)
    for trial in range(120):
        boxes, scores, params = random_case(rng, trial)
        expected, expected_counts = paddle_nms(boxes, scores, params)
        rows, counts = multiclass_nms(boxes, scores, params)
        assert np.array_equal(counts, expected_counts), (trial, params)
        assert rows.shape == expected.shape and np.array_equal(rows, expected), (trial, params)


def test_numpy_nms_at_detector_scale_and_with_nothing_kept() -> None:
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 600, (2, 8400, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 60, (2, 8400, 2))], -1).astype(np.float32)
    scores = (rng.uniform(0, 1, (2, 10, 8400)) ** 4).astype(np.float32)
    tied = np.round(scores, 2).astype(np.float32)  # many ties where the first walk's candidate set is cut
    for params, s in ((NmsParams(), scores), (NmsParams(keep_top_k=100, nms_top_k=500), scores),
                      (NmsParams(keep_top_k=-1, nms_top_k=300), scores), (NmsParams(keep_top_k=100), tied),
                      (NmsParams(keep_top_k=300, nms_threshold=0.95), tied)):
        expected, expected_counts = paddle_nms(boxes, s, params)
        rows, counts = multiclass_nms(boxes, s, params)
        assert np.array_equal(counts, expected_counts) and np.array_equal(rows, expected), params
    rows, counts = multiclass_nms(boxes, np.zeros_like(scores), NmsParams())
    assert rows.shape == (0, 6) and counts.tolist() == [0, 0]


# -- OpenVINO's NonMaxSuppression op where it gives Paddle's rows ------------------------------------

needs_openvino_nms = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or platform.machine() not in ("x86_64", "AMD64"),
    reason="OpenVINO's NMS op stands in for the numpy NMS on x86-64 only")


def openvino_nms(params: NmsParams):
    from hw_plugins.openvino import import_openvino
    from hw_plugins.openvino.nms import OpenVinoNms

    return OpenVinoNms(import_openvino(), params, threads=2)


def assert_openvino_nms_gives_paddles_rows(boxes: np.ndarray, scores: np.ndarray, params: NmsParams) -> list[int]:
    """The op's rows and counts equal Paddle's multiclass_nms3; the counts, for more checks."""
    expected, expected_counts = paddle_nms(boxes, scores, params)
    rows, counts = openvino_nms(params).run(boxes, scores)
    assert np.array_equal(counts, expected_counts) and np.array_equal(rows, expected), params
    return counts.tolist()


@needs_openvino_nms
def test_openvino_nms_op_gives_paddles_rows_or_declines() -> None:
    """Random scenes (ties, touching boxes, IoU exactly at the threshold, small nms_top_k): the op's
    result equals Paddle's multiclass_nms3 whenever it is used, and it declines (None) exactly where
    a box has no positive width or height."""
    from hw_plugins.openvino.nms import supports

    rng = np.random.default_rng(2)
    used = 0
    for trial in range(240):
        boxes, scores, params = random_case(rng, trial)
        if trial % 2:  # mostly proper boxes, as detectors give
            boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2] + np.float32(0.5))
        params = NmsParams(params.score_threshold, params.nms_top_k, params.keep_top_k, params.nms_threshold)
        assert supports(params)
        got = openvino_nms(params).run(boxes, scores.copy())
        proper = bool(np.all(boxes[..., 2:] > boxes[..., :2]))
        assert (got is not None) == proper, trial
        if got is not None:
            used += 1
            expected, expected_counts = paddle_nms(boxes, scores, params)
            assert np.array_equal(got[1], expected_counts), (trial, params)
            assert got[0].shape == expected.shape and np.array_equal(got[0], expected), (trial, params)
    assert used >= 120
    assert not supports(NmsParams(normalized=False)) and not supports(NmsParams(nms_eta=0.9))
    assert not supports(NmsParams(background_label=0))


@needs_openvino_nms
def test_openvino_nms_op_keeps_a_box_whose_iou_is_exactly_the_threshold() -> None:
    """Paddle suppresses above the threshold, the op from it on: at exactly 0.6 both boxes stay."""
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 6], [0, 0, 10, 7]]], dtype=np.float32)  # IoU 0.6, 0.7
    scores = np.array([[[0.9, 0.8, 0.7]]], dtype=np.float32)
    assert assert_openvino_nms_gives_paddles_rows(boxes, scores, NmsParams(nms_threshold=0.6)) == [2]


@needs_openvino_nms
def test_openvino_nms_op_walks_every_candidate_when_the_best_boxes_overlap() -> None:
    """The first try keeps only boxes scoring above the 8 x keep_top_k-th best; when those all
    overlap, it keeps too few, and the answer needs the low-scoring boxes too."""
    cluster = np.tile([[10, 10, 50, 50]], (40, 1)) + np.linspace(0, 1, 40)[:, None]
    spread = np.array([[100 + 20 * i, 0, 110 + 20 * i, 10] for i in range(60)])
    boxes = np.concatenate([cluster, spread])[None].astype(np.float32)
    scores = np.concatenate([np.linspace(0.9, 0.5, 40), np.linspace(0.1, 0.05, 60)])[None, None].astype(np.float32)
    assert assert_openvino_nms_gives_paddles_rows(boxes, scores, NmsParams(keep_top_k=5)) == [5]


@needs_openvino_nms
def test_openvino_nms_op_at_detector_scale_cuts_candidates_as_paddle_does() -> None:
    """Thousands of candidates per class, so Paddle's nms_top_k cut (with ties on the cut) decides."""
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 600, (2, 8400, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 60, (2, 8400, 2))], -1).astype(np.float32)
    scores = (rng.uniform(0, 1, (2, 10, 8400)) ** 4).astype(np.float32)
    tied = np.round(scores, 2).astype(np.float32)
    for params, s in ((NmsParams(), scores), (NmsParams(keep_top_k=100, nms_top_k=500), scores),
                      (NmsParams(keep_top_k=-1, nms_top_k=300), scores), (NmsParams(keep_top_k=100), tied),
                      (NmsParams(keep_top_k=300, nms_threshold=0.95), tied), (NmsParams(nms_top_k=0), scores)):
        assert_openvino_nms_gives_paddles_rows(boxes, s, params)


# -- backends against Paddle Inference fp32 -----------------------------------------------------

BACKENDS = {
    "onnxruntime": ("onnxruntime", {}),
    "openvino": ("openvino", {}),
}


def load(name: str, model_dir: Path, cache: Path, **options: str):
    from hw_plugins.cpu import CpuPlugin
    from hw_plugins.onnxruntime import OnnxRuntimePlugin
    from hw_plugins.openvino import OpenVinoPlugin

    plugin = {"cpu": CpuPlugin, "onnxruntime": OnnxRuntimePlugin, "openvino": OpenVinoPlugin}[name]()
    if name != "cpu":
        options["cache_dir"] = str(cache)
    return plugin.load(read_model_dir(model_dir), name, {"threads": "2", **options})


def rows_on(predictor, model_dir: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    model = read_model_dir(model_dir)
    out = []
    for image in images:
        prepared = pipeline.prepare_images(model, [image])
        outputs = predictor.run(pipeline.network_inputs(prepared, predictor.input_names))
        out.append(np.asarray(outputs[0]).reshape(-1, 6))
        assert np.asarray(outputs[1]).tolist() == [out[-1].shape[0]]
    return out


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Laid out like the default cache (`$CACHE_DIRECTORY/onnx`), so the registry test reuses it."""
    path = tmp_path_factory.mktemp("cache") / "onnx"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def real_bgr(real_images: list[Path]) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in real_images]


@pytest.fixture(scope="module")
def synthetic_bgr() -> list[np.ndarray]:
    from sodd.datasets.synth.generator import SynthConfig, render_image

    return [render_image(np.random.default_rng([5, i]), SynthConfig(image_size=(256, 256)))[0] for i in range(2)]


def agreeing_rows(name: str, options: Mapping[str, str], model_dir: Path, images: list[np.ndarray],
                  cache: Path, tolerance: Tolerance, what: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Paddle Inference fp32's rows on the CPU (the reference) and backend `name`'s with `options`,
    on the same images, after checking that they agree within `tolerance`."""
    reference = rows_on(load("cpu", model_dir, cache), model_dir, images)
    rows = rows_on(load(name, model_dir, cache, **options), model_dir, images)
    result = agreement(reference, rows, tolerance)
    assert result.checked > 0, f"{what}: no boxes to compare"
    assert result.fraction >= tolerance.min_matched, f"{what}: {result} ({tolerance.describe()})"
    return reference, rows


@needs_onnx
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_real_picodet_boxes_agree_with_paddle_fp32_on_real_images(
        backend: str, picodet_dir: Path, real_bgr: list[np.ndarray], onnx_cache: Path) -> None:
    reference, rows = agreeing_rows(*BACKENDS[backend], picodet_dir, real_bgr, onnx_cache, Tolerance(),
                                    f"{backend} on PicoDet-XS")
    # Stricter than the stated tolerance: fp32 backends give Paddle's rows, in Paddle's order.
    for ref, got in zip(reference, rows, strict=True):
        assert got.shape == ref.shape and np.array_equal(got[:, 0], ref[:, 0])
        assert np.abs(got[:, 1] - ref[:, 1]).max() < 1e-4 and np.abs(got[:, 2:] - ref[:, 2:]).max() < 0.05


@needs_onnx
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_sod_architecture_boxes_agree_with_paddle_fp32(
        backend: str, sod_model_dir: Path, synthetic_bgr: list[np.ndarray], onnx_cache: Path) -> None:
    agreeing_rows(*BACKENDS[backend], sod_model_dir, synthetic_bgr, onnx_cache, Tolerance(),
                  f"{backend} on the SOD architecture")


@needs_onnx
def test_openvino_outputs_outlive_the_next_run(sod_model_dir: Path, synthetic_bgr: list[np.ndarray],
                                               onnx_cache: Path) -> None:
    """OpenVINO reads inputs and writes outputs in its own buffers without copies; what a run
    returns must still be copied out, since the next run of the same request overwrites them."""
    predictor = load("openvino", sod_model_dir, onnx_cache)
    model = read_model_dir(sod_model_dir)
    first, second = (pipeline.network_inputs(pipeline.prepare_images(model, [image]), predictor.input_names)
                     for image in synthetic_bgr)
    outputs = predictor._run_graph(first)
    kept = [o.copy() for o in outputs]
    assert not all(np.array_equal(a, b) for a, b in zip(predictor._run_graph(second), kept, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(outputs, kept, strict=True))


@needs_onnx
@needs_openvino_nms
def test_openvino_plugin_finishes_on_the_nms_op_with_the_numpy_rows(sod_model_dir: Path,
                                                                    synthetic_bgr: list[np.ndarray],
                                                                    onnx_cache: Path) -> None:
    from hw_plugins.onnx_common import finish_outputs

    predictor = load("openvino", sod_model_dir, onnx_cache)
    assert "NMS on OpenVINO" in predictor.notes
    model = read_model_dir(sod_model_dir)
    for image in synthetic_bgr:
        graph = predictor._run_graph(pipeline.network_inputs(pipeline.prepare_images(model, [image]),
                                                             predictor.input_names))
        assert predictor._fast_nms.run(*graph) is not None  # the op, not the numpy fallback
        rows, counts = predictor._finish(graph)
        expected_rows, expected_counts = finish_outputs(graph, predictor._nms)
        assert np.array_equal(counts, expected_counts) and np.array_equal(rows, expected_rows)


@pytest.mark.parametrize("backend", ["cpu?precision=bf16", "openvino?precision=bf16"])
def test_bf16_backends_agree_only_within_the_bf16_tolerance(
        backend: str, picodet_dir: Path, real_bgr: list[np.ndarray], onnx_cache: Path) -> None:
    """bf16 keeps the same objects but moves scores and corners: it fails the fp32 tolerance (so the
    selection rejects it) and meets the looser one stated for bf16."""
    if backend.startswith("openvino") and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed")
    if backend not in machine_candidates():
        pytest.skip(f"{backend} is an x86_64 candidate; this is {platform.machine()} (machine_candidates)")
    reference, rows = agreeing_rows(backend.split("?")[0], {"precision": "bf16"}, picodet_dir, real_bgr, onnx_cache,
                                    BF16_TOLERANCE, f"{backend} on PicoDet-XS")
    assert agreement(reference, rows, Tolerance()).fraction < Tolerance().min_matched


# -- the conversion cache -----------------------------------------------------------------------

@needs_onnx
def test_conversion_is_cached_by_content_and_a_shipped_inference_onnx_is_used(
        picodet_dir: Path, onnx_cache: Path, tmp_path: Path) -> None:
    from hw_plugins.onnx_common import onnx_program

    model = read_model_dir(picodet_dir)
    first = onnx_program(model, onnx_cache)
    stamp = first.path.stat().st_mtime_ns
    again = onnx_program(model, onnx_cache)
    assert again.path == first.path and "from the cache" in again.note and again.path.stat().st_mtime_ns == stamp
    assert first.nms == NmsParams(score_threshold=np.float32(0.025).item(), nms_top_k=1000, keep_top_k=100,
                                  nms_threshold=np.float32(0.6).item(), normalized=True)
    assert not list(onnx_cache.glob(".staging-*")), "a staging directory was left behind"

    # A directory carrying its own graph: that graph is used, not a conversion.
    shipped = tmp_path / "shipped"
    shutil.copytree(picodet_dir, shipped)
    shutil.copy(first.path, shipped / "inference.onnx")  # a graph that already ends before NMS
    program = onnx_program(read_model_dir(shipped), onnx_cache)
    assert "inference.onnx from the model directory" in program.note and program.path != first.path
    assert program.nms is not None


# -- the selection ------------------------------------------------------------------------------

class FakePredictor:
    """Returns fixed rows after sleeping; `shift` moves every box (a backend that drifts)."""

    input_names = ("image", "scale_factor")
    notes = ""

    def __init__(self, seconds: float, shift: float = 0.0) -> None:
        self.seconds, self.shift, self.closed = seconds, shift, False

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        threading.Event().wait(self.seconds)  # a backend that takes this long per run
        rows = np.array([[0, 0.9, 10, 10, 30, 30], [1, 0.6, 50, 50, 58, 61]], dtype=np.float32)
        rows[:, 2:] += self.shift
        return [rows, np.array([2], dtype=np.int32)]

    def close(self) -> None:
        self.closed = True


def test_selection_picks_the_fastest_backend_that_agrees_and_reports_the_table(sod_model_dir: Path) -> None:
    fakes = {
        "cpu": FakePredictor(0.012),
        "cpu?precision=bf16": FakePredictor(0.001, shift=3.0),  # fastest, but its boxes moved
        "openvino": FakePredictor(0.004),
        "onnxruntime": FakePredictor(0.008),
    }

    def load_fake(spec: DeviceSpec):
        label = spec.name + (f"?precision={spec.options['precision']}" if "precision" in spec.options else "")
        if label not in fakes:
            raise RuntimeError("no such backend here")
        return fakes[label]

    # x86_64's candidates whatever the host: the fakes stand in for every backend.
    selection = select_backend(read_model_dir(sod_model_dir), load_fake, name="m", timing=Timing(rounds=4),
                               candidates=CANDIDATES)
    assert selection.device_label == "openvino" and selection.predictor is fakes["openvino"]
    table = {m.device: m for m in selection.table}
    assert not table["cpu?precision=bf16"].qualified and table["openvino"].qualified
    assert table["openvino?precision=bf16"].error == "no such backend here"
    assert all(f.closed for k, f in fakes.items() if k != "openvino") and not fakes["openvino"].closed
    summary = selection.summary()
    assert summary.startswith("high-performance: openvino (") and "x Paddle fp32" in summary
    assert "cpu?precision=bf16" in summary and "rejected" in summary


def test_selection_falls_back_to_paddle_fp32_when_nothing_else_agrees(sod_model_dir: Path) -> None:
    fakes = {"cpu": FakePredictor(0.005), "openvino": FakePredictor(0.001, shift=5.0)}
    selection = select_backend(read_model_dir(sod_model_dir), lambda spec: fakes[spec.name], name="m",
                               candidates=("cpu", "openvino"), timing=Timing(rounds=2))
    assert selection.device_label == "cpu" and fakes["openvino"].closed


@needs_onnx
def test_registry_serves_the_selected_backend_and_names_it(
        sod_model_dir: Path, onnx_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sodd.config.schema import ModelConfig
    from sodd.plugins.protocol import discover_plugins
    from sodd.runtime.registry import ModelRegistry

    monkeypatch.setenv("CACHE_DIRECTORY", str(onnx_cache.parent))
    plugins, _ = discover_plugins()
    registry = ModelRegistry(plugins, max_pending=4, cpu_threads=2)
    try:
        served = registry.load(ModelConfig(name="sod", path=sod_model_dir, high_performance=True))
        assert served.device in ("cpu", "cpu?precision=bf16", "openvino", "openvino?precision=bf16", "onnxruntime")
        assert served.notes.startswith(f"high-performance: {served.device} (")
        assert registry.statuses()["sod"][1].reason == served.notes  # what GetModel shows as state_reason
    finally:
        registry.close()


def test_bench_turns_run_each_backend_back_to_back_after_an_idle_pause(
        sod_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run by run, every backend after Paddle shares the cores with Paddle's spinning OpenMP threads;
    in turns each backend runs as it serves: alone, its own threads awake."""
    import sodd.runtime.high_performance as hp

    log: list[str] = []

    class Logged(FakePredictor):
        def __init__(self, label: str) -> None:
            super().__init__(0.0)
            self.label = label

        def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            log.append(self.label)
            return super().run(inputs)

    fakes = {"cpu": Logged("cpu"), "openvino": Logged("ov")}
    monkeypatch.setattr(hp, "_idle", lambda seconds: log.append(f"idle {seconds}"))
    select_backend(read_model_dir(sod_model_dir), lambda spec: fakes[spec.name], name="m",
                   candidates=("cpu", "openvino"), timing=Timing(rounds=5, turn=2, settle_s=0.25))
    timed = log[2 * hp.WARMUP_IMAGES:]  # after each backend's outputs on the scenes
    turn = ["idle 0.25", "cpu", "cpu", "cpu", "idle 0.25", "ov", "ov", "ov"]
    assert timed == turn + turn + ["idle 0.25", "cpu", "cpu", "idle 0.25", "ov", "ov"]
    # At load: one run each in turn, no pauses (what the daemon does before serving).
    log.clear()
    select_backend(read_model_dir(sod_model_dir), lambda spec: fakes[spec.name], name="m",
                   candidates=("cpu", "openvino"), timing=Timing(rounds=2))
    assert log[2 * hp.WARMUP_IMAGES:] == ["cpu", "ov", "cpu", "ov"]


class EmptyPredictor(FakePredictor):
    """No boxes, after the same sleep: without it every backend timed alike and the winner was noise."""

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        super().run(inputs)
        return [np.zeros((0, 6), dtype=np.float32), np.array([0], dtype=np.int32)]


def test_with_nothing_to_compare_only_full_precision_backends_qualify(sod_model_dir: Path) -> None:
    fakes = {"cpu": EmptyPredictor(0.003), "cpu?precision=bf16": EmptyPredictor(0.0),
             "openvino": EmptyPredictor(0.001)}
    selection = select_backend(
        read_model_dir(sod_model_dir), lambda spec: fakes[spec.name + ("?precision=bf16" if spec.options else "")],
        name="m", candidates=("cpu", "cpu?precision=bf16", "openvino"), timing=Timing(rounds=3))
    table = {m.device: m for m in selection.table}
    assert not table["cpu?precision=bf16"].qualified and table["openvino"].qualified
    assert selection.device_label == "openvino"
