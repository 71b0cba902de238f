"""sodd over gRPC gives PaddleX 3.7.2's boxes, and `sodd-client --save-json` its exact files.

For the tiny exported detector (PIR program, legacy program) and the real pretrained PicoDet
(which has a NormalizeImage step), on real images, with a float threshold, a per-class threshold,
and batch sizes 1 and 3.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sodd_client.cli import main as client_main

from tests.conftest import Daemon, run_paddlex, start_daemon

THRESHOLDS = {"float": 0.3, "dict": {0: 0.45, 2: 0.2, 3: 0.25}}
BATCH_SIZES = (1, 3)


@pytest.fixture(scope="module")
def parity_daemon(tiny_model_dirs: dict[str, Path], picodet_dir: Path, tmp_path_factory) -> Daemon:
    log = tmp_path_factory.mktemp("parity") / "daemon.log"
    daemon = start_daemon(["--model", f"tiny-pir={tiny_model_dirs['pir']}",
                           "--model", f"tiny-legacy={tiny_model_dirs['legacy']}",
                           "--model", f"picodet={picodet_dir}"], log)
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture(scope="module")
def cases(tiny_model_dirs: dict[str, Path], picodet_dir: Path, real_images: list[Path], tmp_path_factory):
    """Every (model, threshold, batch size) case, with PaddleX's results and files computed once."""
    root = tmp_path_factory.mktemp("paddlex")
    models = {"tiny-pir": (tiny_model_dirs["pir"], "PP-YOLOE_plus_SOD-S"),
              "tiny-legacy": (tiny_model_dirs["legacy"], "PP-YOLOE_plus_SOD-S"),
              "picodet": (picodet_dir, "PicoDet-XS")}
    out = []
    for served_name, (model_dir, model_name) in models.items():
        for threshold_name, threshold in THRESHOLDS.items():
            for batch_size in BATCH_SIZES:
                case_id = f"{served_name}-{threshold_name}-b{batch_size}"
                out.append({"id": case_id, "model": served_name, "threshold": threshold, "batch_size": batch_size,
                            "job": {"model_dir": str(model_dir), "model_name": model_name,
                                    "inputs": [str(p) for p in real_images], "threshold": threshold,
                                    "batch_size": batch_size, "save_json_dir": str(root / case_id)}})
    results = run_paddlex([c["job"] for c in out], root)
    for case, result in zip(out, results, strict=True):
        case["paddlex"] = result
    return out


def threshold_arg(threshold: float | dict) -> str:
    if isinstance(threshold, dict):
        return ",".join(f"{k}:{v}" for k, v in threshold.items())
    return str(threshold)


def test_paddlex_finds_boxes_to_compare(cases) -> None:
    # A parity test over empty results would prove nothing.
    for case in cases:
        assert sum(len(r["boxes"]) for r in case["paddlex"]) >= 3, case["id"]


@pytest.mark.parametrize("index", range(len(THRESHOLDS) * len(BATCH_SIZES) * 3))
def test_boxes_and_json_files_equal_paddlex(index: int, cases, parity_daemon: Daemon, tmp_path: Path) -> None:
    import json

    case = cases[index]
    job = case["job"]
    json_dir = tmp_path / "json"
    code = client_main(["--server", parity_daemon.address, "detect", *job["inputs"], "--model", case["model"],
                        "--threshold", threshold_arg(case["threshold"]), "--batch-size", str(case["batch_size"]),
                        "--save-json", str(json_dir)])
    assert code == 0
    for expected in case["paddlex"]:
        name = f"{Path(expected['input_path']).stem}_res.json"
        ours = json.loads((json_dir / name).read_text())
        assert len(ours["boxes"]) == len(expected["boxes"]), case["id"]
        for a, b in zip(ours["boxes"], expected["boxes"], strict=True):
            assert (a["cls_id"], a["label"]) == (b["cls_id"], b["label"])
            assert abs(a["score"] - b["score"]) <= 1e-6
            assert max(abs(x - y) for x, y in zip(a["coordinate"], b["coordinate"], strict=True)) <= 1e-3
        # Byte-identical files: same keys, order, number types and float digits.
        assert (json_dir / name).read_bytes() == (Path(job["save_json_dir"]) / name).read_bytes(), case["id"]
