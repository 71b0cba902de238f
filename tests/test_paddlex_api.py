"""`from sodd import create_model`: finding models by name, refusing what it cannot do, and predict's inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pytest

from sodd import create_model
from sodd.paddlex_api import ModelNotFound
from sodd.runtime.local import LocalDetector


@pytest.fixture(scope="module")
def repository(tiny_model_dirs: dict[str, Path], tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(tiny_model_dirs["pir"], root / "det" / "1")
    shutil.copytree(tiny_model_dirs["pir"], root / "det" / "2")
    (root / "det" / "3").mkdir()  # incomplete: never chosen
    return root


def test_model_name_is_found_in_a_repository(repository: Path, monkeypatch, visdrone_image: Path) -> None:
    with create_model("det", repository=repository) as model:
        assert model.model_dir == repository / "det" / "2"  # the newest complete version
        assert len(list(model.predict(str(visdrone_image)))) == 1
    monkeypatch.setenv("SODD_MODEL_REPOSITORY", str(repository))
    # By Global.model_name too: the tiny export says PP-YOLOE_plus_SOD-S.
    with create_model(model_name="PP-YOLOE_plus_SOD-S") as model:
        assert model.model_dir.parent == repository / "det" and model.model_name == "PP-YOLOE_plus_SOD-S"


def test_a_name_without_weights_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SODD_MODEL_REPOSITORY", raising=False)
    with pytest.raises(ModelNotFound, match="does not download weights"):
        create_model("PP-YOLOE_plus_SOD-L", repository=tmp_path)


def test_refusals(tiny_model_dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="Global.model_name 'PP-YOLOE_plus_SOD-S'"):
        create_model(model_name="PP-YOLOE_plus_SOD-L", model_dir=tiny_model_dirs["pir"])
    with pytest.raises(TypeError, match="use_hpip"):
        create_model(model_dir=tiny_model_dirs["pir"], use_hpip=True)
    with pytest.raises(ValueError, match="needs model_name"):
        create_model()


def test_predict_matches_the_detection_core(tiny_model_dirs: dict[str, Path], visdrone_image: Path) -> None:
    bgr = cv2.imread(str(visdrone_image))
    core = LocalDetector(tiny_model_dirs["pir"])
    try:
        expected = core.detect(bgr, threshold=0.3)
        sliced, runs = core.detect_sliced(bgr, _slices(), threshold=0.3)
    finally:
        core.close()
    with create_model(model_dir=tiny_model_dirs["pir"], threshold=0.3) as model:
        from_array, from_file = model.predict([bgr, str(visdrone_image)], batch_size=2)
        windows = next(model.predict(bgr, slicing={"slice_height": 320, "slice_width": 320, "auto": False}))
        nothing = next(model.predict(bgr, threshold=1))  # an int is a float here (PaddleX ignores it)
    assert [b["cls_id"] for b in from_array["boxes"]] == [b.cls_id for b in expected]
    assert [b["score"] for b in from_file["boxes"]] == [b.score for b in expected]
    assert from_array["input_path"] is None and from_file["input_path"] == str(visdrone_image)
    assert len(windows["boxes"]) == len(sliced) and runs > 1
    assert nothing["boxes"] == []


def _slices():  # noqa: ANN202
    from sodd.runtime.detection import SlicingRequest

    return SlicingRequest(given={"slice_height": 320, "slice_width": 320, "auto": False}).resolve(None)
