"""The request path in-process, for fuzzing and property tests.

The real servicer, validation, decoding, preprocessing, engine and postprocessing run on each
input; only the network is replaced by a fast stand-in predictor, so that hundreds of thousands of
hostile inputs can be tried. Each input must end in a response or a gRPC status from the allowed
set — an unexpected exception, a crash or a hang is a bug.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import yaml

from sodd.config.schema import ModelConfig, ServeConfig
from sodd.model.modeldir import ModelDir
from sodd.plugins.devices import parse_devices
from sodd.plugins.protocol import DeviceInfo
from sodd.runtime.manager import ModelManager
from sodd.runtime.registry import ModelRegistry
from sodd.serving.service import DetectorService
from sodd.v1 import detector_pb2 as pb

# What hostile input may legitimately get; anything else (INTERNAL, UNKNOWN) is a bug.
ALLOWED_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.RESOURCE_EXHAUSTED}
LABELS = ["pedestrian", "people", "bicycle", "car", "van"]


class StandInPredictor:
    """Answers like a detector (two boxes per image, NMS-style rows) in microseconds."""

    input_names = ("image", "scale_factor")
    notes = ""

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        n = len(inputs["image"])
        rows = np.tile(np.array([[3, 0.9, -5, 2, 40, 30], [1, 0.4, 10, 10, 9000, 20]], np.float32), (n, 1))
        return [rows, np.full(n, 2, np.int32)]

    def close(self) -> None:
        pass


class StandInPlugin:
    name = "standin"
    device_types = ("standin",)

    def probe(self) -> list[DeviceInfo]:
        return [DeviceInfo("standin", True)]

    def load(self, model: ModelDir, device: str, options: Mapping[str, str]) -> StandInPredictor:
        return StandInPredictor()

    def close(self) -> None:
        pass


def write_model_dir(root: Path) -> Path:
    """A PaddleX-layout directory for the stand-in (the program files are never read)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("inference.json", "inference.pdiparams"):
        (root / name).write_bytes(b"stand-in")
    (root / "inference.yml").write_text(yaml.safe_dump({
        "Global": {"model_name": "PP-YOLOE_plus_SOD-S"}, "draw_threshold": 0.5, "label_list": LABELS,
        "Preprocess": [{"type": "Resize", "target_size": [64, 64], "interp": 1, "keep_ratio": False},
                       {"type": "Permute"}]}))
    return root


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def time_remaining(self) -> float | None:
        return None

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str = ""


class RequestPath:
    """A servicer over the stand-in model "m", driven from one private event loop."""

    def __init__(self, max_image_megapixels: float = 4.0, max_request_images: int = 16) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="sodd-fuzz-")
        model_dir = write_model_dir(Path(self._tmp.name) / "m")
        self.config = ServeConfig(
            models=(ModelConfig("m", model_dir, devices=parse_devices("standin")),),
            max_image_megapixels=max_image_megapixels, max_request_images=max_request_images, metrics_listen="")
        self.loop = asyncio.new_event_loop()
        self.registry = ModelRegistry({"standin": StandInPlugin()}, max_pending=256)
        self.manager = ModelManager(self.registry, self.config)
        self.loop.run_until_complete(self.manager.start())
        self.service = DetectorService(self.config, self.registry, self.manager)

    def detect(self, request: pb.DetectRequest) -> Outcome:
        context = FakeContext()
        return self._call(self.service.Detect(request, context), context)

    def detect_batch(self, request: pb.DetectBatchRequest) -> Outcome:
        context = FakeContext()
        return self._call(self.service.DetectBatch(request, context), context)

    def _call(self, coroutine, context: FakeContext) -> Outcome:  # noqa: ANN001 - a servicer coroutine
        try:
            self.loop.run_until_complete(asyncio.wait_for(coroutine, timeout=30))
        except Aborted as exc:
            return Outcome(exc.code, exc.details)
        # A status set without aborting, as the servicer answers request errors.
        return Outcome(context.code or grpc.StatusCode.OK, context.details)

    def close(self) -> None:
        self.service.close()
        self.registry.close()
        self.loop.close()
        self._tmp.cleanup()
