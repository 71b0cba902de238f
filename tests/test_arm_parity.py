"""Boxes across architectures: exact on the architecture a reference was recorded on, within 1e-3
in score and 0.1 px elsewhere (OpenCV's bicubic resize and the CPU kernels differ slightly between
x86_64 and aarch64 builds). The rule lives in .ci/arm/compare_boxes.py, which CI's emulated
aarch64 check also uses.

The reference is the shipped default model's boxes on three generated scenes, recorded on x86_64
with the cpu plugin. Re-record it after changing the default model or the pipeline:

    .venv/bin/python tests/test_arm_parity.py --record
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "tests" / "fixtures" / "arm" / "default_model_boxes.json"
THRESHOLD = 0.25  # below compare_boxes.MIN_SCORE, so rows near it cannot fall out on one side


def compare_boxes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_boxes", REPO / ".ci" / "arm" / "compare_boxes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("compare_boxes", module)
    spec.loader.exec_module(module)
    return module


def detect_default_model() -> list[list[list[float]]]:
    """Rows [cls, score, x1, y1, x2, y2] per scene, through sodd's in-process detector on `cpu`."""
    import cv2

    from sodd.runtime.local import LocalDetector

    detector = LocalDetector(REPO / "sodd" / "default_model", "cpu")
    try:
        scenes = []
        for data in compare_boxes().synth_images(3):
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            boxes = detector.detect(image, threshold=THRESHOLD)
            scenes.append([[b.cls_id, b.score, b.xmin, b.ymin, b.xmax, b.ymax] for b in boxes])
        return scenes
    finally:
        detector.close()


def test_same_architecture_is_exact_and_across_is_tolerant() -> None:
    cb = compare_boxes()
    assert cb.tolerance_between("x86_64", "AMD64") == cb.EXACT
    assert cb.tolerance_between("aarch64", "arm64") == cb.EXACT
    assert cb.tolerance_between("x86_64", "aarch64") == cb.Tolerance(1e-3, 0.1)


def test_the_rule_matches_rows_by_class_and_place_not_order() -> None:
    cb = compare_boxes()
    ref = np.array([[0, 0.9, 10, 10, 20, 20], [1, 0.5, 30, 30, 40, 40], [2, 0.29, 50, 50, 60, 60]])
    moved = ref[::-1].copy()
    moved[:, 1] += 5e-4
    moved[:, 2:] += 0.05
    agreement = cb.compare_rows(ref, moved, cb.ACROSS_ARCHITECTURES)
    assert (agreement.checked, agreement.unmatched) == (4, 0)  # the 0.29 rows are below MIN_SCORE
    assert agreement.max_score_diff == pytest.approx(5e-4) and agreement.max_coord_diff == pytest.approx(0.05)
    assert cb.compare_rows(ref, moved, cb.EXACT).unmatched == 4
    too_far = ref.copy()
    too_far[0, 2] += 0.2
    assert cb.compare_rows(ref, too_far, cb.ACROSS_ARCHITECTURES).unmatched == 2
    other_class = ref.copy()
    other_class[1, 0] = 5
    assert cb.compare_rows(ref, other_class, cb.ACROSS_ARCHITECTURES).unmatched == 2
    assert cb.compare_rows(ref, ref[:1], cb.ACROSS_ARCHITECTURES).unmatched == 1


def test_default_model_boxes_match_the_recorded_reference_for_this_architecture() -> None:
    cb = compare_boxes()
    reference = json.loads(REFERENCE.read_text())
    tolerance = cb.tolerance_between(reference["arch"], platform.machine())
    got = detect_default_model()
    assert len(got) == len(reference["scenes"])
    for i, (ref_rows, rows) in enumerate(zip(reference["scenes"], got, strict=True)):
        ref_array, array = np.array(ref_rows).reshape(-1, 6), np.array(rows).reshape(-1, 6)
        agreement = cb.compare_rows(ref_array, array, tolerance)
        assert agreement.checked > 0 and agreement.unmatched == 0, (
            f"scene {i} on {platform.machine()} vs {reference['arch']} (tolerance {tolerance}): {agreement}")
        if tolerance == cb.EXACT:
            assert rows == ref_rows, f"scene {i}: not the recorded boxes, bit for bit"


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps({"arch": platform.machine(), "device": "cpu", "threshold": THRESHOLD,
                                     "scenes": detect_default_model()}, indent=1) + "\n")
    print(f"recorded {REFERENCE}")
