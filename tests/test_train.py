"""Training: a few steps reduce the loss; a broken annotation stops training with file and entry."""

import json

import paddle
import pytest

from sodd.datasets.synth import SynthConfig, generate_dataset
from sodd.training.dataset import DatasetError, batches, load_coco
from sodd.training.ppyoloe.model import build_model
from sodd.training.trainer import TrainConfig, lr_at, train

SMALL = {"input_size": 128, "num_classes": 6}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, 4, 2, seed=3, cfg=SynthConfig(image_size=(128, 128), max_objects=10))
    return root


def test_a_few_steps_reduce_the_loss(tiny_dataset):
    paddle.seed(0)
    model = build_model("sodd-SOD-tiny", SMALL)
    model.train()
    data = load_coco(tiny_dataset, "train")
    batch = next(batches(data.samples, 128, 4, None))
    args = [paddle.to_tensor(x) for x in (batch.labels, batch.boxes, batch.mask)]
    image = paddle.to_tensor(batch.images)
    opt = paddle.optimizer.AdamW(2e-3, parameters=model.parameters())
    losses = []
    for _ in range(8):
        loss = model.loss(model(image), *args)["loss"]
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    assert losses[-1] < 0.9 * losses[0], losses


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(dataset="x", output="y", lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(55, 100, cfg) == pytest.approx(0.55)
    assert lr_at(100, 100, cfg) == pytest.approx(0.1)


def test_train_runs_evaluates_and_resumes(tiny_dataset, tmp_path):
    cfg = TrainConfig(dataset=str(tiny_dataset), output=str(tmp_path), model_overrides=SMALL, epochs=1,
                      batch_size=2, eval_interval=1)
    state = train(cfg, log=lambda *_: None)
    assert state["step"] == 2 and state["best_epoch"] == 1
    assert (tmp_path / "best.pdparams").is_file() and (tmp_path / "last.pdopt").is_file()
    resumed = TrainConfig(**{**cfg.__dict__, "epochs": 2, "resume": str(tmp_path / "last.pdparams")})
    assert train(resumed, log=lambda *_: None)["step"] == 4


def _break(root, entry_index, **changes):
    path = root / "annotations" / "instance_train.json"
    gt = json.loads(path.read_text())
    gt["annotations"][entry_index].update(changes)
    path.write_text(json.dumps(gt))
    return path, gt["annotations"][entry_index]["id"]


@pytest.mark.parametrize(
    ("changes", "why"),
    [({"bbox": [1, 2, -3, 4]}, "non-positive width"), ({"bbox": [1, 2]}, "4 finite numbers"),
     ({"category_id": 99}, "category_id 99"), ({"image_id": 12345}, "image_id")],
)
def test_broken_annotation_names_file_and_entry(tmp_path, changes, why):
    generate_dataset(tmp_path, 2, 1, seed=0, cfg=SynthConfig(image_size=(64, 64), max_objects=6))
    path, ann_id = _break(tmp_path, 3, **changes)
    with pytest.raises(DatasetError) as err:
        train(TrainConfig(dataset=str(tmp_path), output=str(tmp_path / "out"), model_overrides=SMALL))
    msg = str(err.value)
    assert str(path) in msg and "annotations[3]" in msg and f"id {ann_id}" in msg and why in msg


def test_cli_reports_broken_annotation(tmp_path, capsys):
    from sodd.cli import main

    generate_dataset(tmp_path, 2, 1, seed=0, cfg=SynthConfig(image_size=(64, 64), max_objects=6))
    _break(tmp_path, 0, bbox=[0, 0, 0, 5])
    assert main(["train", "--dataset", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "instance_train.json: annotations[0]" in capsys.readouterr().err
