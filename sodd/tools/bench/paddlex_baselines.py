"""The PaddleX baselines: its predict loop and its own HTTP serving, on the same model directory.

PaddleX lives in its own environment (it needs opencv-contrib-python), so both run under that
environment's interpreter: SODD_PADDLEX_PYTHON, else `.venv-paddlex/bin/python` of the checkout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from sodd.model.modeldir import ModelDir
from sodd.tools.bench.daemon import ChildServer
from sodd.tools.bench.images import ImageSet
from sodd.tools.bench.rounds import RoundsChild
from sodd.tools.bench.stats import Measurement

WORKER = Path(__file__).with_name("paddlex_worker.py")
CHECKOUT = Path(__file__).resolve().parents[3]


def find_python(explicit: str | None = None) -> Path | None:
    """The first interpreter named: --paddlex-python, then $SODD_PADDLEX_PYTHON, then the checkout's
    .venv-paddlex. One that is named but missing is reported missing, never silently replaced."""
    for candidate in (explicit, os.environ.get("SODD_PADDLEX_PYTHON"), CHECKOUT / ".venv-paddlex" / "bin" / "python"):
        if candidate:
            return Path(candidate) if Path(candidate).exists() else None
    return None


def paddlex_env(threads: int) -> dict[str, str]:
    # PaddleX defaults to 10 math threads whatever the machine; give it the cores the others get.
    return {**os.environ, "PADDLE_PDX_CPU_NUM_THREADS": str(threads), "PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True"}


@dataclass(frozen=True)
class PredictRun:
    measurements: list[Measurement]  # one per image set
    versions: dict[str, str]  # paddlex and paddle versions in PaddleX's environment


def measure_predict(python: Path, model: ModelDir, image_sets: Sequence[ImageSet], requests: int, warmup: int,
                    threads: int, timeout: float = 3600.0) -> PredictRun:
    with tempfile.TemporaryDirectory(prefix="sodd-bench-pdx-") as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job.write_text(json.dumps({"model_name": model.model_name, "model_dir": str(model.path),
                                   "sets": [[str(p) for p in s.paths] for s in image_sets], "requests": requests,
                                   "warmup": warmup}))
        result = subprocess.run([str(python), str(WORKER), str(job), str(out)], capture_output=True, text=True,
                                env=paddlex_env(threads), timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"PaddleX predict loop failed ({result.returncode}): {result.stderr[-2000:]}")
        data = json.loads(out.read_text())
    measurements = [Measurement("paddlex-predict", f"1x{threads}", s.label, 1, requests, len(r["latencies"]),
                                r["seconds"], r["latencies"], r["errors"])
                    for s, r in zip(image_sets, data["results"], strict=True)]
    return PredictRun(measurements, {"paddlex": data["paddlex"], "paddle": data["paddle"]})


class PredictRounds(RoundsChild):
    """PaddleX's predict loop kept loaded in its own process, measuring one round when told, so its
    rounds can alternate with sodd's and a drift of the machine's load hits both."""

    def __init__(self, python: Path, model: ModelDir, image_sets: Sequence[ImageSet], threads: int,
                 workdir: Path) -> None:
        job = workdir / "paddlex-rounds.json"
        job.write_text(json.dumps({"model_name": model.model_name, "model_dir": str(model.path),
                                   "sets": [[str(p) for p in s.paths] for s in image_sets]}))
        super().__init__("PaddleX predict rounds", [str(python), str(WORKER), "--rounds", str(job)],
                         workdir / "paddlex-rounds.log", paddlex_env(threads))
        self.threads = threads
        self.versions: dict[str, str] = self.hello

    def measure(self, set_index: int, requests: int, warmup: int) -> dict:
        return self.ask({"set": set_index, "requests": requests, "warmup": warmup})


@dataclass(frozen=True)
class PipelineKind:
    pipeline: str
    submodule: str
    endpoint: str


def pipeline_kind(model: ModelDir) -> PipelineKind:
    """PaddleX serves SOD models through its small-object pipeline, other detectors as object detection."""
    if "SOD" in model.model_name:
        return PipelineKind("small_object_detection", "SmallObjectDetection", "/small-object-detection")
    return PipelineKind("object_detection", "ObjectDetection", "/object-detection")


def pipeline_config(model: ModelDir) -> dict:
    kind = pipeline_kind(model)
    # The threshold sodd applies when a request gives none, so both answer with the same boxes.
    threshold = model.draw_threshold if model.draw_threshold is not None else 0.5
    return {"pipeline_name": kind.pipeline,
            "SubModules": {kind.submodule: {"module_name": kind.pipeline, "model_name": model.model_name,
                                            "model_dir": str(model.path), "batch_size": 1, "threshold": threshold}}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PaddlexServer(ChildServer):
    """`paddlex --serve` on a loopback port with a pipeline file naming the model directory."""

    def __init__(self, python: Path, model: ModelDir, threads: int, workdir: Path, timeout: float = 600.0) -> None:
        self.kind = pipeline_kind(model)
        config = workdir / "paddlex-pipeline.yaml"
        config.write_text(yaml.safe_dump(pipeline_config(model), sort_keys=False))
        self.port = _free_port()
        self.log_path = workdir / "paddlex-serve.log"
        cmd = [str(python), "-m", "paddlex", "--serve", "--pipeline", str(config), "--device", "cpu",
               "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "w") as log:
            self._process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=paddlex_env(threads))
        self._wait_healthy(timeout)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.kind.endpoint}"

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"paddlex --serve exited with {self._process.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"paddlex --serve was not healthy within {timeout:g} s; its log is {self.log_path}")
