"""PaddleX's own example, run three ways on the same model directories and images, writes the same files:

    model = create_model(model_name=..., model_dir=...)      # paddlex, or `from sodd import create_model`
    model = Client(address)                                 # or over gRPC: Client.predict
    for res in model.predict(inputs, batch_size=..., threshold=...):
        res.print(); res.save_to_img(save_path=DIR); res.save_to_json(save_path=DIR / "res.json")

The JSON files (per image, and the example's single res.json) must be byte-identical to PaddleX
3.7.2's; the drawings must have identical pixels (and, where PaddleX's Pillow is ours, identical
bytes). Both sides draw with the same TrueType file, matplotlib's DejaVu Sans: PaddleX would
otherwise download its font.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sodd_client import Client

from sodd import create_model
from tests.conftest import Daemon, run_paddlex, start_daemon

FONT = Path(__import__("matplotlib").get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
CASES = {
    # name: (model key, PaddleX model name, threshold, batch size)
    "tiny-b1": ("tiny", "PP-YOLOE_plus_SOD-S", 0.3, 1),
    "tiny-dict-b2": ("tiny", "PP-YOLOE_plus_SOD-S", {0: 0.45, 2: 0.2, 3: 0.25}, 2),
    "picodet-b1": ("picodet", "PicoDet-XS", 0.3, 1),
}


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dirs: dict[str, Path], picodet_dir: Path) -> dict[str, Path]:
    return {"tiny": tiny_model_dirs["pir"], "picodet": picodet_dir}


@pytest.fixture(scope="module")
def paddlex_out(model_dirs: dict[str, Path], real_images: list[Path], tmp_path_factory) -> Path:
    """PaddleX's files for every case, under <root>/<case>/{json,img,res.json}."""
    root = tmp_path_factory.mktemp("paddlex-example")
    jobs = []
    for case, (key, model_name, threshold, batch_size) in CASES.items():
        jobs.append({"model_dir": str(model_dirs[key]), "model_name": model_name,
                     "inputs": [str(p) for p in real_images], "threshold": threshold, "batch_size": batch_size,
                     "save_json_dir": str(root / case / "json"), "save_img_dir": str(root / case / "img"),
                     "save_json_file": str(root / case / "res.json")})
    saved = os.environ.get("PADDLE_PDX_LOCAL_FONT_FILE_PATH")
    os.environ["PADDLE_PDX_LOCAL_FONT_FILE_PATH"] = str(FONT)
    try:
        results = run_paddlex(jobs, root)
    finally:
        if saved is None:
            os.environ.pop("PADDLE_PDX_LOCAL_FONT_FILE_PATH")
        else:
            os.environ["PADDLE_PDX_LOCAL_FONT_FILE_PATH"] = saved
    for case, result in zip(CASES, results, strict=True):
        assert sum(len(r["boxes"]) for r in result) >= 3, f"{case}: parity over (almost) no boxes proves nothing"
    return root


@pytest.fixture(scope="module")
def example_daemon(model_dirs: dict[str, Path], tmp_path_factory) -> Iterator[Daemon]:
    log = tmp_path_factory.mktemp("example-daemon") / "daemon.log"
    daemon = start_daemon([arg for key, d in model_dirs.items() for arg in ("--model", f"{key}={d}")], log)
    yield daemon
    assert daemon.stop() == 0, daemon.log()


def run_example(predictor, case: str, real_images: list[Path], out: Path, capsys, **kwargs) -> None:  # noqa: ANN001
    _, _, threshold, batch_size = CASES[case]
    count = 0
    for res in predictor.predict([str(p) for p in real_images], batch_size=batch_size, threshold=threshold, **kwargs):
        res.print()
        res.save_to_img(save_path=str(out / "img"))
        res.save_to_json(save_path=str(out / "res.json"))
        res.save_to_json(save_path=str(out / "json"))
        count += 1
    assert count == len(real_images)
    printed = capsys.readouterr().out
    assert printed.count("'res': {'input_path': ") == count


def assert_same_files(ours: Path, theirs: Path, case: str) -> None:
    names = sorted(p.name for p in (theirs / "json").iterdir())
    assert names == sorted(p.name for p in (ours / "json").iterdir()), case
    for name in names:
        assert (ours / "json" / name).read_bytes() == (theirs / "json" / name).read_bytes(), f"{case}: {name}"
    assert (ours / "res.json").read_bytes() == (theirs / "res.json").read_bytes(), case
    drawings = sorted(p.name for p in (theirs / "img").iterdir())
    assert drawings == sorted(p.name for p in (ours / "img").iterdir()), case
    for name in drawings:
        a, b = Image.open(ours / "img" / name), Image.open(theirs / "img" / name)
        assert (a.size, a.mode, a.format) == (b.size, b.mode, b.format), f"{case}: {name}"
        assert np.array_equal(np.asarray(a), np.asarray(b)), f"{case}: {name}: the drawings differ"
        assert (ours / "img" / name).read_bytes() == (theirs / "img" / name).read_bytes(), f"{case}: {name}"


@pytest.mark.parametrize("case", list(CASES))
def test_create_model_writes_paddlex_files(case: str, model_dirs, real_images, paddlex_out: Path, tmp_path: Path,
                                           capsys) -> None:
    key, model_name, _, _ = CASES[case]
    with create_model(model_name=model_name, model_dir=model_dirs[key], device="cpu", font_path=str(FONT)) as model:
        run_example(model, case, real_images, tmp_path, capsys)
    assert_same_files(tmp_path, paddlex_out / case, case)


@pytest.mark.parametrize("case", list(CASES))
def test_client_predict_writes_paddlex_files(case: str, example_daemon: Daemon, real_images, paddlex_out: Path,
                                             tmp_path: Path, capsys) -> None:
    key = CASES[case][0]
    with Client(example_daemon.address, timeout=120) as client:
        run_example(client, case, real_images, tmp_path, capsys, model=key, font_path=str(FONT))
    assert_same_files(tmp_path, paddlex_out / case, case)


def test_res_json_and_img_properties(example_daemon: Daemon, real_images: list[Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with Client(example_daemon.address, timeout=120) as client:
        res = next(client.predict(str(real_images[0]), model="tiny", threshold=0.3))
    assert set(res.json) == {"res"} and res.json["res"] == dict(res)
    capsys.readouterr()
    res.print(json_format=True)
    assert json.loads(capsys.readouterr().out)["res"]["boxes"] == res["boxes"]
    image = res.img["res"]
    assert image.size == Image.open(real_images[0]).size and image.mode == "RGB"
