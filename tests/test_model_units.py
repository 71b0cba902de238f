"""Unit tests of the pure model steps: directory reading, preprocessing, postprocessing."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from sodd.errors import ModelDirError
from sodd.model.modeldir import NormalizeImage, Permute, Resize, read_model_dir
from sodd.model.postprocess import apply_threshold, finish, resolve_threshold, split_per_image
from sodd.model.preprocess import CV2_INTERP, normalize, prepare, prepare_step_by_step


def write_dir(root: Path, yml: dict, files=("inference.json", "inference.pdiparams")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for f in files:
        (root / f).write_bytes(b"x")
    (root / "inference.yml").write_text(yaml.safe_dump(yml))
    return root


BASE_YML = {"Global": {"model_name": "PP-YOLOE_plus_SOD-S"}, "draw_threshold": 0.5, "label_list": ["a", "b"],
            "Preprocess": [{"type": "Resize", "target_size": [640, 480], "interp": 2, "keep_ratio": False},
                           {"type": "Permute"}]}


def test_reads_every_interp_code_and_prefers_the_pir_program(tmp_path: Path) -> None:
    for code in range(5):
        yml = {**BASE_YML, "Preprocess": [{**BASE_YML["Preprocess"][0], "interp": code}, {"type": "Permute"}]}
        d = write_dir(tmp_path / str(code), yml, ("inference.json", "inference.pdmodel", "inference.pdiparams"))
        model = read_model_dir(d)
        assert model.preprocess[0] == Resize((640, 480), code, False)
        assert model.model_file.name == "inference.json" and model.legacy_model_file is not None
        assert model.input_size == (640, 480)


@pytest.mark.parametrize("change, message", [
    ({"Preprocess": [{"type": "Pad", "size": [640, 640]}]}, "'Pad' is not supported"),
    ({"Preprocess": [{"type": "Resize", "target_size": [640, 640], "interp": 9}]}, "interp 9"),
    ({"Global": {}}, "Global.model_name"),
    ({"label_list": []}, "label_list"),
    ({"draw_threshold": 3}, "draw_threshold"),
    ({"Preprocess": [{"type": "NormalizeImage", "mean": [0, 0], "std": [1, 1, 1]}]}, "NormalizeImage.mean"),
])
def test_bad_yml_names_the_problem(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ModelDirError, match=message.replace("[", r"\[")):
        read_model_dir(write_dir(tmp_path, {**BASE_YML, **change}))


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="inference.pdiparams"):
        read_model_dir(write_dir(tmp_path / "a", BASE_YML, ("inference.json",)))
    with pytest.raises(ModelDirError, match="neither inference.json nor inference.pdmodel"):
        read_model_dir(write_dir(tmp_path / "b", BASE_YML, ("inference.pdiparams",)))
    d = write_dir(tmp_path / "c", BASE_YML)
    (d / "inference.yml").write_text("Global: [unclosed")
    with pytest.raises(ModelDirError, match="not valid YAML"):
        read_model_dir(d)


def test_reads_the_real_picodet_directory(picodet_dir: Path) -> None:
    model = read_model_dir(picodet_dir)
    assert model.model_name == "PicoDet-XS" and len(model.label_list) == 80
    assert isinstance(model.preprocess[1], NormalizeImage) and model.input_size == (416, 416)


def test_prepare_resizes_like_cv2_and_reports_scale_factors() -> None:
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    for code, flag in CV2_INTERP.items():
        p = prepare(bgr, (Resize((320, 480), code), ))
        expected = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (480, 320), interpolation=flag)
        assert np.array_equal(p.image, expected.astype(np.float32))
        assert p.scale_factor == (320 / 300, 480 / 500) and p.original_hw == (300, 500)
    kept = prepare(bgr, (Resize((400, 400), 1, keep_ratio=True),))
    assert kept.resized_hw == (240, 400)


def test_normalize_matches_per_channel_float32_arithmetic() -> None:
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    op = NormalizeImage((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    out = normalize(img, op)
    for c in range(3):
        channel = img[..., c].astype(np.float32)
        channel *= (1 / 255) / op.std[c]
        channel += -op.mean[c] / op.std[c]
        assert np.array_equal(out[..., c], channel)


NORMALIZATIONS = (NormalizeImage((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  NormalizeImage((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), is_scale=False),
                  NormalizeImage((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), norm_type="none"))


@pytest.mark.parametrize("norm", NORMALIZATIONS, ids=["imagenet", "unscaled", "none"])
def test_table_lookup_gives_the_step_by_step_bytes(norm: NormalizeImage) -> None:
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (301, 517, 3), dtype=np.uint8)
    images = {"photo": photo, "crop view": photo[13:213, 7:407], "at the target size": photo[:320, :480].copy(),
              "every level": np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)}
    recipes = [(Resize((320, 480), code), norm, Permute()) for code in CV2_INTERP]
    recipes += [(Resize((416, 416), 2, keep_ratio=True), norm, Permute()), (norm, Permute())]
    for name, image in images.items():
        for recipe in recipes:
            fast, slow = prepare(image, recipe), prepare_step_by_step(image, recipe)
            assert fast.image.dtype == np.float32 and fast.image.flags.c_contiguous
            assert fast.image.tobytes() == slow.image.tobytes(), (name, recipe)
            assert (fast.scale_factor, fast.resized_hw, fast.original_hw) == (
                slow.scale_factor, slow.resized_hw, slow.original_hw)


ROWS = np.array([
    [3, 0.90, -5, 10, 50, 60],     # clipped on the left
    [0, 0.50, 10, 10, 20, 20],     # exactly at 0.5: dropped by the strict >
    [3, 0.40, 10, 10, 20, 20],
    [0, 0.80, 10, 10, 2000, 20],   # clipped on the right
    [-1, 0.99, 10, 10, 20, 20],    # no class
    [1, 0.70, 5, 5, 5, 30],        # zero width
], dtype=np.float32)


def test_float_threshold_is_strict_and_keeps_nms_order() -> None:
    boxes = finish(ROWS, 0.5, ("a", "b", "c", "d"), width=100, height=100)
    assert [(b.cls_id, b.score) for b in boxes] == [(3, pytest.approx(0.9)), (0, pytest.approx(0.8))]
    assert boxes[0].xmin == 0 and boxes[1].xmax == 100


def test_dict_threshold_groups_by_class_in_ascending_order() -> None:
    kept = apply_threshold(ROWS, {3: 0.3})
    assert kept[:, 0].tolist() == [0, 1, 3, 3]  # classes 0 and 1 at the default 0.5, then class 3
    assert apply_threshold(ROWS[:0], {3: 0.3}).shape == (0, 6)


def test_threshold_priority() -> None:
    assert resolve_threshold(0.2, 0.3, 0.4) == 0.2
    assert resolve_threshold(None, 0.3, 0.4) == 0.3
    assert resolve_threshold(None, None, 0.4) == 0.4
    assert resolve_threshold(None, None, None) == 0.5
    assert resolve_threshold(1, None, None) == 1.0 and isinstance(resolve_threshold(1, None, None), float)


def test_split_per_image_handles_empty_outputs() -> None:
    parts = split_per_image(np.zeros((0, 6), np.float32), np.array([0, 0]))
    assert [p.shape for p in parts] == [(0, 6), (0, 6)]
    parts = split_per_image(ROWS, np.array([2, 0, 4]))
    assert [len(p) for p in parts] == [2, 0, 4]


def test_image_label_boxes_covering_the_picture_are_dropped() -> None:
    rows = np.array([[1, 0.9, 0, 0, 100, 100], [1, 0.8, 0, 0, 10, 10], [0, 0.9, 0, 0, 100, 100]], np.float32)
    boxes = finish(rows, 0.5, ("car", "image"), width=100, height=50)
    assert [(b.cls_id, b.xmax) for b in boxes] == [(1, 10), (0, 100)]


def test_exported_tiny_model_loads_in_both_formats(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    assert read_model_dir(tiny_model_dirs["pir"]).program_format == "pir"
    assert read_model_dir(tiny_model_dirs["legacy"]).program_format == "legacy"
    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dirs["both"], copy)
    assert read_model_dir(copy).legacy_model_file == copy / "inference.pdmodel"
