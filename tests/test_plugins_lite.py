"""The Paddle Lite plugin in process: ready `.nb` files, crash containment, concurrent conversions,
and batches run natively or one image at a time."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from sodd.model import pipeline
from sodd.model.modeldir import read_model_dir

# CI must run these: there a missing wheel fails them instead of skipping.
pytestmark = pytest.mark.skipif(
    (importlib.util.find_spec("paddlelite") is None or platform.machine() not in ("x86_64", "AMD64"))
    and not os.environ.get("CI"),
    reason="Paddle Lite's x86 wheel is not installed here")


@pytest.fixture(scope="module")
def converted(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's x86 program, converted once for the module."""
    from hw_plugins.arm_lite import ArmLitePlugin

    cache = tmp_path_factory.mktemp("lite")
    ArmLitePlugin().load(read_model_dir(tiny_model_dirs["both"]), "arm", {"cache_dir": str(cache)}).close()
    (nb,) = cache.glob("*.nb")
    return nb


@pytest.fixture(scope="module")
def batch_inputs(tiny_model_dirs: dict[str, Path], real_images: list[Path]) -> dict[str, np.ndarray]:
    import cv2

    model = read_model_dir(tiny_model_dirs["both"])
    prepared = pipeline.prepare_images(model, [cv2.imread(str(p)) for p in real_images])
    return pipeline.network_inputs(prepared, ("image", "scale_factor"))


def test_ready_nb_in_the_directory_is_used_even_beside_a_pir_program(tiny_model_dirs: dict[str, Path],
                                                                   converted: Path, tmp_path: Path,
                                                                   batch_inputs: dict[str, np.ndarray]) -> None:
    from hw_plugins.arm_lite import READY_NB, ArmLitePlugin

    shipped = tmp_path / "shipped"
    shutil.copytree(tiny_model_dirs["pir"], shipped)
    shutil.copy(converted, shipped / READY_NB)
    cache = tmp_path / "cache"
    predictor = ArmLitePlugin().load(read_model_dir(shipped), "arm", {"cache_dir": str(cache)})
    assert "from the model directory" in predictor.notes
    assert not cache.exists()  # nothing converted
    boxes, counts = predictor.run(batch_inputs)
    assert counts.shape == (3,) and boxes.shape == (int(counts.sum()), 6)


def test_a_nb_that_crashes_lite_fails_the_load_not_the_process(tiny_model_dirs: dict[str, Path],
                                                               tmp_path: Path) -> None:
    """An ARM program on x86 makes Lite segfault; the trial run in a child turns that into an error."""
    from hw_plugins.arm_lite import READY_NB, ArmLitePlugin

    both = tiny_model_dirs["both"]
    wrong = tmp_path / "wrong"
    shutil.copytree(both, wrong)
    subprocess.run([sys.executable, "-m", "hw_plugins.arm_lite.tool", "convert", str(both / "inference.pdmodel"),
                    str(both / "inference.pdiparams"), "arm", str(wrong / "inference")], check=True,
                   capture_output=True)
    assert (wrong / READY_NB).is_file()
    with pytest.raises(RuntimeError, match=r"crashed \(SIG"):
        ArmLitePlugin().load(read_model_dir(wrong), "arm", {})


def test_concurrent_first_loads_publish_one_complete_program(tiny_model_dirs: dict[str, Path],
                                                            tmp_path: Path, converted: Path) -> None:
    from hw_plugins.arm_lite import ArmLitePlugin

    model = read_model_dir(tiny_model_dirs["both"])
    errors: list[BaseException] = []

    def load() -> None:
        try:
            ArmLitePlugin().load(model, "arm", {"cache_dir": str(tmp_path)}).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    (nb,) = tmp_path.glob("*.nb")
    assert nb.name == converted.name
    # Opt's output is not byte-for-byte repeatable, so check the winner is whole by running it.
    subprocess.run([sys.executable, "-m", "hw_plugins.arm_lite.tool", "trial", str(nb), "320", "320"], check=True,
                   capture_output=True)
    assert [p.name for p in tmp_path.iterdir()] == [nb.name]  # no staging left behind


def test_batches_run_natively_or_one_image_at_a_time_alike(tiny_model_dirs: dict[str, Path], converted: Path,
                                                          batch_inputs: dict[str, np.ndarray]) -> None:
    from hw_plugins.arm_lite import ArmLitePlugin

    model = read_model_dir(tiny_model_dirs["both"])
    cache = {"cache_dir": str(converted.parent)}
    native = ArmLitePlugin().load(model, "arm", cache).run(batch_inputs)
    one = ArmLitePlugin().load(model, "arm", {**cache, "batch": "one"}).run(batch_inputs)
    singles = [ArmLitePlugin().load(model, "arm", cache).run({k: v[i:i + 1] for k, v in batch_inputs.items()})
               for i in range(3)]
    assert native[1].tolist() == one[1].tolist() == [int(s[1][0]) for s in singles]
    assert np.array_equal(native[0], one[0])
    assert np.array_equal(native[0], np.concatenate([s[0] for s in singles]))


def test_no_boxes_and_bad_batch_counts_are_normalised() -> None:
    from hw_plugins.arm_lite import _counts_match, _no_boxes_as_empty

    placeholder = [np.full((1, 1), -1, np.float32), np.zeros(1, np.int32)]
    boxes, counts = _no_boxes_as_empty(placeholder)
    assert boxes.shape == (0, 6) and counts.tolist() == [0]
    rows = np.zeros((5, 6), np.float32)
    assert _counts_match([rows, np.array([2, 3], np.int32)], 2)
    assert not _counts_match([rows, np.array([5], np.int32)], 2)
    assert not _counts_match([rows, np.array([2, 2], np.int32)], 2)


def test_clones_answer_like_the_original(tiny_model_dirs: dict[str, Path], converted: Path,
                                         batch_inputs: dict[str, np.ndarray]) -> None:
    """The engine runs clones on other threads: Lite's and the Paddle Inference wrapper's must agree."""
    from paddle import inference

    from hw_plugins.arm_lite import ArmLitePlugin
    from hw_plugins.paddle_predictor import PaddlePredictor

    model = read_model_dir(tiny_model_dirs["both"])
    lite = ArmLitePlugin().load(model, "arm", {"cache_dir": str(converted.parent)})
    config = inference.Config(str(model.model_file), str(model.params_file))
    config.disable_gpu()
    paddle_predictor = PaddlePredictor(config, "cpu through the shared wrapper")
    for original in (lite, paddle_predictor):
        twin = original.clone()
        assert twin.input_names == original.input_names
        expected, got = original.run(batch_inputs), twin.run(batch_inputs)
        assert np.array_equal(expected[1], got[1]) and np.allclose(expected[0], got[0], atol=1e-5)
    assert paddle_predictor.clone().notes == "cpu through the shared wrapper"
