"""Shared fixtures: real material from ../shared/data, exported test models, a real daemon."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from sodd.tools.daemon_process import ServeProcess, serve_command, start_serve
from sodd.training.export.paddlex_dir import ExportSpec, export_paddlex_dir
from tests.service_helpers import wait_until

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
VISDRONE_IMAGE = SHARED_DATA / "visdrone" / "0000315_01601_d_0000509.jpg"
PICODET_DIR = SHARED_DATA / "models" / "PicoDet-XS-416-coco"


EMULATED_MEMORY = "memory figures are emulated here (QEMU user mode: /proc/self/stat reports no memory)"


def memory_is_emulated() -> bool:
    """True where a process's memory figures mean nothing: under QEMU user-mode emulation (the
    aarch64 check), /proc/self/stat reports zero memory and another process's RSS is the emulator's,
    translated code included, which grows as new code paths run."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[-1].split()
    return int(fields[20]) == 0 and int(fields[21]) == 0  # vsize and rss, fields 23 and 24 of proc(5)


def shared_file(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the real test material lives in ../shared/data beside the repository")
    return path


@pytest.fixture(scope="session")
def visdrone_image() -> Path:
    return shared_file(VISDRONE_IMAGE)


@pytest.fixture(scope="session")
def picodet_dir() -> Path:
    return shared_file(PICODET_DIR)


@pytest.fixture(scope="session")
def real_images() -> list[Path]:
    """Three real images of different sizes and formats."""
    return [shared_file(SHARED_DATA / p) for p in
            ("visdrone/0000315_01601_d_0000509.jpg", "sahi/small-vehicles1.jpeg", "sahi/terrain2.png")]


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny test detector exported once, as written (both programs), PIR only and legacy only."""
    from tests.fixtures.tiny_detector import LABELS

    root = tmp_path_factory.mktemp("tiny")
    both = root / "both"
    spec = ExportSpec(factory="tests.fixtures.tiny_detector:build", factory_kwargs={"seed": 7}, weights=None,
                      model_name="PP-YOLOE_plus_SOD-S", input_size=(320, 320), label_list=LABELS)
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{env_path}" if env_path else str(REPO)
    try:
        export_paddlex_dir(spec, both)
    finally:
        if env_path:
            os.environ["PYTHONPATH"] = env_path
        else:
            os.environ.pop("PYTHONPATH", None)
    dirs = {"both": both}
    for name, program in (("pir", "inference.json"), ("legacy", "inference.pdmodel")):
        d = root / name
        d.mkdir()
        for f in (program, "inference.pdiparams", "inference.yml"):
            shutil.copy(both / f, d / f)
        dirs[name] = d
    return dirs


class Daemon(ServeProcess):
    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 60.0) -> None:
        """Until `text` appears `count` times in the daemon's log (its own word that something happened)."""
        wait_until(lambda: self.log().count(text) >= count, timeout, what=f"{count} x {text!r} in the daemon's log")


def start_daemon(args: list[str], log_path: Path, timeout: float = 120.0, threads: int | None = 2) -> Daemon:
    """Start `sodd serve` on a free loopback port and wait until it says it listens.

    `threads=None` leaves the CPU set-up to the daemon (see sodd.runtime.loading.Instances)."""
    # Port 0 for metrics too, so test daemons never fight over the default 9464.
    serve = start_serve(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                         *(["--threads", str(threads)] if threads else []), *args], log_path, timeout, cwd=REPO)
    return Daemon(serve.process, serve.address, serve.log_path)


@pytest.fixture(scope="session")
def tiny_daemon(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    log = tmp_path_factory.mktemp("daemon") / "tiny.log"
    daemon = start_daemon(["--model", f"tiny={tiny_model_dirs['both']}",
                           "--model", f"tiny-legacy={tiny_model_dirs['legacy']}",
                           "--max-image-megapixels", "30", "--max-message-mb", "8"], log)
    yield daemon
    assert daemon.stop() == 0, daemon.log()


def paddlex_python() -> str:
    python = os.environ.get("SODD_PADDLEX_PYTHON") or str(REPO / ".venv-paddlex" / "bin" / "python")
    if not Path(python).exists():
        message = f"PaddleX reference environment {python} is missing (make setup-paddlex creates it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def run_paddlex(jobs: list[dict], workdir: Path) -> list[list[dict]]:
    """Run PaddleX 3.7.2 on each job (see tests/paddlex_reference.py) in one process."""
    job_file, out_file = workdir / "paddlex_jobs.json", workdir / "paddlex_out.json"
    job_file.write_text(json.dumps(jobs))
    env = {**os.environ, "PADDLE_PDX_CPU_NUM_THREADS": "2", "PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True"}
    result = subprocess.run([paddlex_python(), str(REPO / "tests" / "paddlex_reference.py"), str(job_file),
                             str(out_file)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out_file.read_text())


def paddle_boxes(program: Path, params: Path, image: np.ndarray) -> np.ndarray:
    """The first output (the NMS rows) of Paddle Inference running an exported detector's `program` with
    `params` on the CPU, for an NCHW float32 `image` batch at scale 1."""
    from paddle import inference

    config = inference.Config(str(program), str(params))
    config.disable_gpu()
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    names = predictor.get_input_names()
    predictor.get_input_handle(names[0]).copy_from_cpu(image)
    predictor.get_input_handle(names[1]).copy_from_cpu(np.ones((len(image), 2), np.float32))
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def serve_exit(args: list[str], env: dict[str, str] | None = None, timeout: float = 120.0) -> tuple[int, str]:
    """Run `sodd serve` that is expected to refuse to start; return its exit status and stderr."""
    cmd = serve_command(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--threads", "2", *args])
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                            env={**os.environ, **(env or {})})
    return result.returncode, result.stderr


@pytest.fixture(scope="session")
def sod_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real PP-YOLOE+ SOD architecture (small config, 128 px, 6 classes) through our exporter.

    Fresh heads predict nothing, so the prediction layers are perturbed to give many boxes.
    """
    import paddle

    from sodd.training.ppyoloe.export import export_model
    from sodd.training.ppyoloe.model import build_model

    root = tmp_path_factory.mktemp("sod")
    paddle.seed(1)
    model = build_model("sodd-SOD-tiny", {"input_size": 128, "num_classes": 6})
    state = model.state_dict()
    rng = np.random.default_rng(0)
    for key, value in state.items():
        if key.startswith("head.pred_"):
            noise = rng.normal(0, 0.05, value.shape).astype("float32")
            value.set_value(noise + (0.5 if key.endswith("bias") else 0))
    ckpt = root / "ckpt.pdparams"
    paddle.save({"ema": state, "model_config": model.cfg.to_dict(),
                 "label_list": ["a", "b", "c", "d", "e", "f"]}, str(ckpt))
    export_model("sodd-SOD-tiny", root / "model", ckpt)
    return root / "model"
