"""OpenVINO on the CPU (device `openvino`): the model directory as an ONNX graph.

Same graph as the onnxruntime plugin (the directory's `inference.onnx` or a cached paddle2onnx
conversion, cut before NMS, finished by Paddle's NMS in numpy). The precision is always set: on
CPUs with AMX, OpenVINO runs bf16 unless told otherwise, and its outputs then drift from Paddle's.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hw_plugins.onnx_common import (
    CutGraphPredictor,
    OnnxProgram,
    batch_of_one,
    default_onnx_cache,
    onnx_program,
    package_version,
)
from sodd.errors import InvalidArgument
from sodd.modeldir import ModelDir
from sodd.plugin import DeviceInfo

OPTIONS = ("threads", "cache_dir", "precision")
PRECISIONS = ("f32", "bf16")


class OpenVinoPredictor(CutGraphPredictor):
    def __init__(self, program: OnnxProgram, threads: int, precision: str) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(program.path))
        self._compiled = core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": str(threads),
            "PERFORMANCE_HINT": "LATENCY",
        })
        self._request = self._compiled.create_infer_request()
        inputs = self._compiled.inputs
        # The ONNX input names; a tensor may carry several names, the parameter node keeps the graph's.
        self._input_names = tuple(i.get_node().get_friendly_name() for i in inputs)
        shape = inputs[0].get_partial_shape()
        self._per_image = batch_of_one([d.get_length() if d.is_static else None for d in shape])
        self._nms = program.nms
        self.precision = precision
        self.notes = f"OpenVINO {package_version('openvino')} {precision} on {program.note}"

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._input_names

    def clone(self) -> OpenVinoPredictor:
        """Another infer request on the same compiled model, for a second worker thread."""
        twin = object.__new__(OpenVinoPredictor)
        twin.__dict__.update(self.__dict__)
        twin._request = self._compiled.create_infer_request()
        return twin

    def _run_graph(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = self._request.infer({i: np.ascontiguousarray(inputs[n]) for i, n in enumerate(self._input_names)})
        return [np.array(result[out], copy=True) for out in self._compiled.outputs]

    def close(self) -> None:
        self._request = None
        self._compiled = None


class OpenVinoPlugin:
    name = "openvino"
    device_types = ("openvino",)

    def probe(self) -> list[DeviceInfo]:
        facts = {"machine": platform.machine()}
        try:
            import openvino as ov
            import paddle2onnx  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - any import failure makes the device unavailable
            return [DeviceInfo("openvino", False, f"openvino or paddle2onnx is not importable: {exc}", facts)]
        facts.update(openvino=package_version("openvino"), paddle2onnx=package_version("paddle2onnx"),
                     cores=str(os.cpu_count()))
        try:
            facts["cpu"] = str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME"))
        except Exception as exc:  # noqa: BLE001 - OpenVINO without a usable CPU plugin
            return [DeviceInfo("openvino", False, f"OpenVINO has no usable CPU device: {exc}", facts)]
        return [DeviceInfo("openvino", True, "", facts)]

    def load(self, model: ModelDir, device: str, options: Mapping[str, str]) -> OpenVinoPredictor:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise InvalidArgument(f"device {device}: unknown option(s) {unknown}; "
                                  f"the openvino plugin takes {list(OPTIONS)}")
        threads = options.get("threads") or str(os.cpu_count() or 1)
        if not threads.isdigit() or int(threads) < 1:
            raise InvalidArgument(f"device {device}: threads must be a positive integer, got {threads!r}")
        precision = options.get("precision", "f32")
        if precision not in PRECISIONS:
            raise InvalidArgument(f"device {device}: precision must be one of {list(PRECISIONS)}, got {precision!r}")
        cache_dir = Path(options["cache_dir"]) if options.get("cache_dir") else default_onnx_cache()
        return OpenVinoPredictor(onnx_program(model, cache_dir), int(threads), precision)

    def close(self) -> None:
        pass
