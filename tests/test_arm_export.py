"""Programs that go to devices carry no build paths, and the same model gives the same bytes:
`sodd export` (legacy programs without Paddle's op_callstack), the shipped default model, and
`sodd lite` (Paddle Lite `.nb` programs for ARM boards)."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from sodd.model.program import TRACE_ATTRS, source_paths, strip_program
from sodd.training.ppyoloe.export import export_model
from sodd.training.ppyoloe.model import build_model
from tests.conftest import paddle_boxes

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "sodd" / "default_model"
LITE_HERE = importlib.util.find_spec("paddlelite") is not None and platform.machine() in ("x86_64", "AMD64")
needs_lite = pytest.mark.skipif(not LITE_HERE and not os.environ.get("CI"),
                                reason="Paddle Lite's x86 wheel is not installed here")


def _trace_attrs(pdmodel: bytes) -> int:
    from paddle.base.proto import framework_pb2

    program = framework_pb2.ProgramDesc.FromString(pdmodel)
    return sum(a.name in TRACE_ATTRS for block in program.blocks for op in block.ops for a in op.attrs)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    paddle.seed(3)
    model = build_model("sodd-SOD-tiny", {"input_size": 128, "num_classes": 6})
    path = root / "ckpt.pdparams"
    paddle.save({"ema": model.state_dict(), "model_config": model.cfg.to_dict(), "label_list": list("abcdef")},
                str(path))
    return path


def test_exporting_the_same_weights_twice_gives_identical_files(checkpoint: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "elsewhere" / "second"
    export_model("sodd-SOD-tiny", first, checkpoint)
    export_model("sodd-SOD-tiny", second, checkpoint)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"inference.json", "inference.pdmodel", "inference.pdiparams", "inference.yml"} <= set(names)
    for name in names:
        data = (first / name).read_bytes()
        assert data == (second / name).read_bytes(), f"{name} differs between two exports of the same weights"
        assert not source_paths(data), f"{name} carries build paths: {source_paths(data)[:3]}"
    assert _trace_attrs((first / "inference.pdmodel").read_bytes()) == 0


def test_the_shipped_default_model_carries_no_build_paths() -> None:
    for path in DEFAULT_MODEL.iterdir():
        if path.is_file():
            assert not source_paths(path.read_bytes()), f"{path.name}: {source_paths(path.read_bytes())[:3]}"
    pdmodel = (DEFAULT_MODEL / "inference.pdmodel").read_bytes()
    assert _trace_attrs(pdmodel) == 0
    assert strip_program(pdmodel) == (pdmodel, 0), "not in the exporter's canonical serialisation"


def test_stripping_call_stacks_changes_nothing_the_program_computes(tmp_path: Path) -> None:
    """The default model's program given call stacks like paddle.jit.save writes, then stripped."""
    from paddle.base.proto import framework_pb2

    clean = (DEFAULT_MODEL / "inference.pdmodel").read_bytes()
    program = framework_pb2.ProgramDesc.FromString(clean)
    for i, op in enumerate(program.blocks[0].ops):
        attr = op.attrs.add()
        attr.name, attr.type = "op_callstack", framework_pb2.STRINGS
        attr.strings.extend([f'  File "/home/builder/venv/lib/python3.10/site-packages/paddle/x{i}.py", line 1'])
    traced = program.SerializeToString()
    assert source_paths(traced)
    stripped, removed = strip_program(traced)
    assert removed == len(program.blocks[0].ops)
    assert stripped == clean

    image = np.random.default_rng(0).uniform(0, 255, (1, 3, 320, 320)).astype(np.float32)
    outputs = []
    for name, data in (("traced", traced), ("stripped", stripped)):
        (tmp_path / f"{name}.pdmodel").write_bytes(data)
        outputs.append(paddle_boxes(tmp_path / f"{name}.pdmodel", DEFAULT_MODEL / "inference.pdiparams", image))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def _sodd_lite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sodd.cli", "lite", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


@needs_lite
def test_sodd_lite_converts_a_model_to_the_same_arm_program_every_time(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model)
    first = _sodd_lite(str(model))
    assert first.returncode == 0, first.stderr[-2000:]
    arm_nb = model / "inference.arm.nb"
    assert arm_nb.is_file() and str(arm_nb) in first.stdout
    again = _sodd_lite(str(model), "--output", str(tmp_path / "again.nb"))
    assert again.returncode == 0, again.stderr[-2000:]
    data = arm_nb.read_bytes()
    assert data == (tmp_path / "again.nb").read_bytes(), "two conversions of one model differ"
    assert not source_paths(data)
    # The header's 16-byte version field: the version, then zeros (Opt left stack bytes there).
    version = data[2:18]
    assert version.startswith(b"v") and set(version[version.index(0):]) == {0}
    assert not list(model.glob(".sodd-lite-*")), "staging left behind"


@needs_lite
def test_sodd_lite_for_this_machine_is_tried_and_loaded_by_the_arm_plugin(tmp_path: Path) -> None:
    from hw_plugins.arm_lite import ArmLitePlugin, machine_target
    from sodd.model.modeldir import read_model_dir

    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model)
    target = machine_target()
    result = _sodd_lite(str(model), "--target", target)
    assert result.returncode == 0, result.stderr[-2000:]
    predictor = ArmLitePlugin().load(read_model_dir(model), "arm", {"cache_dir": str(tmp_path / "cache")})
    assert f"inference.{target}.nb from the model directory" in predictor.notes


def test_sodd_lite_says_why_a_pir_only_directory_cannot_convert(tmp_path: Path) -> None:
    model = tmp_path / "pir"
    model.mkdir()
    for name in ("inference.json", "inference.pdiparams", "inference.yml"):
        shutil.copy(DEFAULT_MODEL / name, model / name)
    result = _sodd_lite(str(model))
    assert result.returncode == 1
    assert ("legacy programs" in result.stderr) or ("not importable" in result.stderr), result.stderr
