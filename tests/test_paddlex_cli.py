"""`sodd paddlex -c CONFIG -o Global.mode=...`: PaddleX's documented command line, on the shared real images.

A LabelMe dataset is made from the real VisDrone and SAHI images and their annotations; then the
documentation's four steps run in order: check_dataset with LabelMe conversion and a 67/33 split,
train, evaluate and predict, each writing the files PaddleX writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from sodd.cli import main as sodd_main
from tests.conftest import SHARED_DATA, shared_file

DOC_CONFIG = "paddlex/configs/modules/small_object_detection/PP-YOLOE_plus_SOD-S.yaml"
VISDRONE_NAMES = {1: "pedestrian", 2: "people", 3: "bicycle", 4: "car", 5: "van", 6: "truck", 7: "tricycle",
                  8: "awning-tricycle", 9: "bus", 10: "motorcycle"}


def rectangle(label: str, x: float, y: float, w: float, h: float) -> dict:
    return {"label": label, "points": [[x, y], [x + w, y + h]], "shape_type": "rectangle"}


@pytest.fixture(scope="module")
def labelme_dataset(tmp_path_factory) -> Path:
    """Three real images with their real boxes, as a LabelMe dataset with a train list only."""
    visdrone = shared_file(SHARED_DATA / "visdrone" / "0000315_01601_d_0000509.jpg")
    root = tmp_path_factory.mktemp("labelme") / "dataset"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    shapes: dict[str, list[dict]] = {visdrone.name: []}
    for line in visdrone.with_suffix(".txt").read_text().splitlines():
        x, y, w, h, _, category = (int(v) for v in line.split(",")[:6])
        if category in VISDRONE_NAMES and w > 0 and h > 0:
            shapes[visdrone.name].append(rectangle(VISDRONE_NAMES[category], x, y, w, h))
    for name in ("terrain1", "terrain2"):
        coco = json.loads(shared_file(SHARED_DATA / "sahi" / f"{name}_coco.json").read_text())
        image = coco["images"][0]
        names = {c["id"]: c["name"] for c in coco["categories"]}
        shapes[image["file_name"]] = [rectangle(names[a["category_id"]], *a["bbox"]) for a in coco["annotations"]]
    sources = {visdrone.name: visdrone, **{n: SHARED_DATA / "sahi" / n for n in shapes if n != visdrone.name}}
    lines = []
    for file_name, boxes in shapes.items():
        shutil.copyfile(sources[file_name], root / "images" / file_name)
        from PIL import Image

        width, height = Image.open(sources[file_name]).size
        label = Path(file_name).stem + ".json"
        (root / "annotations" / label).write_text(json.dumps(
            {"imagePath": f"../images/{file_name}", "imageWidth": width, "imageHeight": height, "shapes": boxes}))
        lines.append(f"annotations/{label}\n")
    (root / "train_anno_list.txt").write_text("".join(lines))
    return root


def paddlex(*overrides: str, config: str = DOC_CONFIG) -> int:
    return sodd_main(["paddlex", "-c", config, *(a for o in overrides for a in ("-o", o))])


def test_documented_steps_check_train_evaluate_predict(labelme_dataset: Path, visdrone_image: Path,
                                                       tmp_path: Path, capsys) -> None:
    output = tmp_path / "output"
    common = [f"Global.dataset_dir={labelme_dataset}", f"Global.output={output}", "Global.device=cpu"]

    assert paddlex("Global.mode=check_dataset", *common, "CheckDataset.convert.enable=True",
                   "CheckDataset.convert.src_dataset_type=LabelMe", "CheckDataset.split.enable=True",
                   "CheckDataset.split.train_percent=67") == 0
    result = json.loads((output / "check_dataset_result.json").read_text())
    assert result["check_pass"] is True and result["dataset_type"] == "COCODetDataset"
    assert (result["attributes"]["train_samples"], result["attributes"]["val_samples"]) == (2, 1)
    assert (labelme_dataset / "annotations" / "instance_train.json.bak").exists()  # the split kept the old file
    num_classes = result["attributes"]["num_classes"]

    # The tiny configuration keeps the test short; the keys are the documentation's.
    assert paddlex("Global.mode=train", *common, "Global.model=sodd-SOD-tiny", f"Train.num_classes={num_classes}",
                   "Train.epochs_iters=1", "Train.batch_size=2", "Train.warmup_steps=1") == 0
    train_result = json.loads((output / "train_result.json").read_text())
    assert train_result["done_flag"] is True
    assert (output / "best_model" / "best_model.pdparams").is_file()
    assert (output / "best_model" / "inference" / "inference.yml").is_file()

    assert paddlex("Global.mode=evaluate", *common, "Global.model=sodd-SOD-tiny",
                   f"Evaluate.weight_path={output / 'best_model' / 'best_model.pdparams'}") == 0
    evaluation = json.loads((output / "evaluate_result.json").read_text())
    assert evaluation["done_flag"] is True and 0 <= evaluation["metrics"]["AP"] <= 1

    capsys.readouterr()
    assert paddlex("Global.mode=predict", *common, f"Predict.model_dir={output / 'best_model' / 'inference'}",
                   f"Predict.input={visdrone_image}") == 0
    assert "'res': {'input_path': " in capsys.readouterr().out
    written = json.loads((output / f"{visdrone_image.stem}_res.json").read_text())
    assert written["input_path"] == str(visdrone_image) and "boxes" in written
    assert (output / f"{visdrone_image.stem}_res.jpg").is_file()


def test_unknown_keys_are_refused_by_name(tmp_path: Path, capsys) -> None:
    assert paddlex("Global.mode=train", "Train.epoch_iters=3") == 2
    assert "unknown configuration key 'Train.epoch_iters'" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"Global": {"model": "PP-YOLOE_plus_SOD-S", "mode": "predict"},
                                      "Predict": {"input": "x.jpg", "use_tta": True}}))
    assert paddlex(config=str(config)) == 2
    assert "unknown configuration key 'Predict.use_tta'" in capsys.readouterr().err
    assert paddlex("Global.mode=deploy") == 2
    assert "Global.mode must be one of" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["PP-YOLOE_plus_SOD-S", "PP-YOLOE_plus_SOD-L", "PP-YOLOE_plus_SOD-largesize-L"])
def test_built_in_configs_round_trip(model: str, tmp_path: Path, capsys) -> None:
    assert sodd_main(["paddlex", "--print-config", model]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["Global"]["model"] == model
    assert {"CheckDataset", "Train", "Evaluate", "Predict"} <= set(config)
    path = tmp_path / f"{model}.yaml"
    path.write_text(yaml.safe_dump(config))
    # The printed file is accepted as -c; predict without an input says which key is missing.
    assert paddlex("Global.mode=predict", config=str(path)) == 2
    assert "Predict.input is needed" in capsys.readouterr().err
