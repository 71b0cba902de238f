"""The embedded default model: small enough to ship, loads without PaddleX, finds generated objects,
and its legacy program runs on Paddle Lite's x86 target with the same boxes."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from sodd.datasets.synth.generator import SynthConfig, render_image
from tests.conftest import paddle_boxes

MODEL_DIR = Path(__file__).resolve().parent.parent / "sodd" / "default_model"


@pytest.fixture(scope="module")
def model_dir():
    if not (MODEL_DIR / "inference.pdiparams").is_file():
        pytest.skip("sodd/default_model has no exported model")
    return MODEL_DIR


def _scene(seed: int):
    img_bgr, anns = render_image(np.random.default_rng([seed, 2, 0]), SynthConfig())
    rgb = img_bgr[..., ::-1].astype(np.float32).transpose(2, 0, 1)[None].copy()
    return rgb, anns


def _paddle_inference(model_dir, program, image):
    return paddle_boxes(model_dir / program, model_dir / "inference.pdiparams", image)


def _iou(a, b):
    lt = np.maximum(a[:2], b[:2])
    rb = np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


def test_size_and_files(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"inference.json", "inference.pdmodel", "inference.pdiparams", "inference.yml"} <= names
    assert sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file()) <= 15 * 10**6
    yml = yaml.safe_load((model_dir / "inference.yml").read_text())
    assert yml["label_list"] == ["disc", "square", "triangle", "cross", "ring", "star"]


def test_finds_generated_objects(model_dir):
    found = total = 0
    for seed in (101, 102):
        image, anns = _scene(seed)
        boxes = _paddle_inference(model_dir, "inference.json", image)
        boxes = boxes[boxes[:, 1] > 0.3]
        for a in anns:
            x, y, w, h = a["bbox"]
            gt = np.array([x, y, x + w, y + h])
            total += 1
            found += any(int(b[0]) == a["category"] and _iou(b[2:], gt) >= 0.5 for b in boxes)
    assert found / total >= 0.5, (found, total)


def test_legacy_program_matches_and_runs_on_paddle_lite(model_dir, tmp_path):
    lite = pytest.importorskip("paddlelite.lite")
    image, _ = _scene(103)
    ref = _paddle_inference(model_dir, "inference.json", image)
    legacy = _paddle_inference(model_dir, "inference.pdmodel", image)
    np.testing.assert_allclose(legacy, ref, atol=1e-3)
    opt = lite.Opt()
    opt.set_model_file(str(model_dir / "inference.pdmodel"))
    opt.set_param_file(str(model_dir / "inference.pdiparams"))
    opt.set_valid_places("x86")
    opt.set_model_type("naive_buffer")
    opt.set_optimize_out(str(tmp_path / "model"))
    opt.run()
    cfg = lite.MobileConfig()
    cfg.set_model_from_file(str(tmp_path / "model.nb"))
    predictor = lite.create_paddle_predictor(cfg)
    predictor.get_input(0).from_numpy(image)
    predictor.get_input(1).from_numpy(np.ones((1, 2), np.float32))
    predictor.run()
    out = predictor.get_output(0).numpy()
    strong = ref[ref[:, 1] > 0.3]
    assert len(strong) > 0
    for row in strong:  # same boxes; the order of equal-score rows may differ between runtimes
        assert np.abs(out - row).max(axis=1).min() < 1e-2, row
