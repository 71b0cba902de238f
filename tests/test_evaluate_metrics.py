"""sodd.training.evaluation against pycocotools run independently and against faster-coco-eval."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sodd.training.evaluation import CocoMetrics, evaluate_coco

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VISDRONE50 = SHARED / "sahi" / "visdrone2019-det-train-first50image.json"


def _tiny_gt() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}],
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "bus"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 10, 60, 60], "area": 3600, "iscrowd": 0},
        ],
    }


def _noisy_detections(gt: dict, seed: int = 0) -> list[dict]:
    """Jittered copies of most ground-truth boxes plus some false positives."""
    rng = random.Random(seed)
    dets = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        if rng.random() < 0.75:
            box = [x + rng.uniform(-3, 3), y + rng.uniform(-3, 3), w * rng.uniform(0.8, 1.2), h]
            dets.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": ann["category_id"],
                    "bbox": box,
                    "score": rng.random(),
                }
            )
        if rng.random() < 0.2:
            dets.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": ann["category_id"],
                    "bbox": [x + 40, y + 40, w, h],
                    "score": rng.random() * 0.5,
                }
            )
    return dets


def _pycocotools_stats(gt: dict, dets: list[dict]) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats]


def _headline(m: CocoMetrics) -> list[float]:
    return [
        m.ap,
        m.ap50,
        m.ap75,
        m.ap_small,
        m.ap_medium,
        m.ap_large,
        m.ar1,
        m.ar10,
        m.ar100,
        m.ar_small,
        m.ar_medium,
        m.ar_large,
    ]


def test_perfect_detections_give_ap_one() -> None:
    gt = _tiny_gt()
    dets = [{"image_id": 1, "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in gt["annotations"]]
    m = evaluate_coco(gt, dets)
    assert m.ap == pytest.approx(1.0)
    assert m.ap50 == pytest.approx(1.0)
    assert m.per_class["car"] == pytest.approx(1.0)
    assert m.per_class["bus"] == -1.0  # no ground truth for this class
    assert m.ap_large == -1.0  # no object over 96x96 px


def test_empty_detections_give_zero_and_print_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    m = evaluate_coco(_tiny_gt(), [])
    assert (m.ap, m.ap50, m.ap75, m.ap_small, m.ap_medium) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert m.per_class["car"] == 0.0
    assert m.num_detections == 0
    assert capsys.readouterr().out == ""


def test_inputs_are_not_modified() -> None:
    gt = _tiny_gt()
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}]
    before = (copy.deepcopy(gt), copy.deepcopy(dets))
    evaluate_coco(gt, dets)
    assert (gt, dets) == before


def test_ground_truth_without_area_or_iscrowd() -> None:
    gt = _tiny_gt()
    for ann in gt["annotations"]:
        del ann["area"], ann["iscrowd"]
    dets = [{"image_id": 1, "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in gt["annotations"]]
    m = evaluate_coco(gt, dets)
    assert m.ap == pytest.approx(1.0)
    assert m.ap_small == pytest.approx(1.0) and m.ap_medium == pytest.approx(1.0)


def test_clashing_category_names_stay_apart() -> None:
    gt = _tiny_gt()
    gt["categories"][1]["name"] = "car"
    m = evaluate_coco(gt, [])
    assert m.per_class == {"car (id 1)": 0.0, "car (id 2)": -1.0}


def test_unknown_image_is_rejected() -> None:
    with pytest.raises(ValueError, match="image ids"):
        evaluate_coco(_tiny_gt(), [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}])


def test_to_dict_is_json_serialisable() -> None:
    d = evaluate_coco(_tiny_gt(), []).to_dict()
    assert json.loads(json.dumps(d))["per_class"] == {"car": 0.0, "bus": -1.0}


@pytest.fixture(scope="module")
def visdrone50() -> dict:
    if not VISDRONE50.is_file():
        pytest.skip(f"real test data absent: {VISDRONE50} (../shared/data is not beside the repository)")
    gt = json.loads(VISDRONE50.read_text())
    # The first 15 of its 50 images keep the test fast on a shared CPU and still hold 1256 objects.
    gt["images"] = gt["images"][:15]
    kept = {img["id"] for img in gt["images"]}
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in kept]
    return gt


def test_equals_independent_pycocotools(visdrone50: dict) -> None:
    dets = _noisy_detections(visdrone50)
    ours = _headline(evaluate_coco(visdrone50, dets))
    ref = _pycocotools_stats(visdrone50, dets)
    assert 0.05 < ours[0] < 0.95  # a non-trivial score, so agreement means something
    for a, b in zip(ours, ref, strict=True):
        assert abs(a - b) <= 1e-9


def test_agrees_with_faster_coco_eval(visdrone50: dict) -> None:
    faster = pytest.importorskip("faster_coco_eval", reason="faster-coco-eval is in the test extra")
    dets = _noisy_detections(visdrone50, seed=1)
    ours = _headline(evaluate_coco(visdrone50, dets))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = faster.COCO(copy.deepcopy(visdrone50))
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = faster.COCOeval_faster(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for a, b in zip(ours, [float(s) for s in ev.stats[:12]], strict=True):
        assert abs(a - b) <= 1e-4
