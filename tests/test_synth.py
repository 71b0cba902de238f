"""The synthetic dataset generator: layout, determinism, and mostly small objects."""

import json

import numpy as np

from sodd.datasets.synth import CLASSES, SynthConfig, generate_dataset
from sodd.datasets.synth.generator import render_image


def test_layout_and_coco_fields(tmp_path):
    counts = generate_dataset(tmp_path, 3, 2, seed=1)
    train = json.loads((tmp_path / "annotations" / "instance_train.json").read_text())
    val = json.loads((tmp_path / "annotations" / "instance_val.json").read_text())
    assert len(train["images"]) == 3 and len(val["images"]) == 2
    assert counts == {"train": len(train["annotations"]), "val": len(val["annotations"])}
    assert [c["name"] for c in train["categories"]] == CLASSES
    for im in train["images"]:
        assert (tmp_path / "images" / im["file_name"]).is_file()
    for a in train["annotations"]:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and 1 <= a["category_id"] <= len(CLASSES)


def test_same_seed_same_scene_other_seed_differs():
    a_img, a_ann = render_image(np.random.default_rng([7, 0, 3]), SynthConfig())
    b_img, b_ann = render_image(np.random.default_rng([7, 0, 3]), SynthConfig())
    c_img, _ = render_image(np.random.default_rng([8, 0, 3]), SynthConfig())
    assert np.array_equal(a_img, b_img) and a_ann == b_ann
    assert not np.array_equal(a_img, c_img)


def test_most_objects_are_small():
    sides = []
    for i in range(12):
        _, anns = render_image(np.random.default_rng([0, 0, i]), SynthConfig())
        sides += [max(a["bbox"][2], a["bbox"][3]) for a in anns]
    sides = np.array(sides)
    assert len(sides) > 60
    assert (sides < 32).mean() > 0.7


def test_cli_writes_dataset(tmp_path, capsys):
    from sodd.cli import main

    assert main(["synth", "--output", str(tmp_path), "--train", "2", "--val", "1", "--size", "96", "96"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == {"train": 2, "val": 1}
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 3
