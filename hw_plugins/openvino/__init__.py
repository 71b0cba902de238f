"""OpenVINO on the CPU (device `openvino`): the model directory as an ONNX graph.

Same graph as the onnxruntime plugin (the directory's `inference.onnx` or a cached paddle2onnx
conversion, cut before NMS, finished by Paddle's NMS in numpy). The precision is always set: on
CPUs with AMX, OpenVINO runs bf16 unless told otherwise, and its outputs then drift from Paddle's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import numpy as np

from hw_plugins.onnx_common import (
    CutGraphPlugin,
    CutGraphPredictor,
    OnnxProgram,
    batch_of_one,
    default_onnx_cache,
    nms_params,
    onnx_program,
    package_version,
)
from hw_plugins.openvino.nms import OpenVinoNms
from hw_plugins.openvino.nms import supports as nms_supports
from sodd.errors import FailedPrecondition
from sodd.model.int8 import INT8_XML
from sodd.model.modeldir import ModelDir
from sodd.plugins.options import Option, OptionSchema
from sodd.plugins.protocol import DeviceInfo

PRECISIONS = ("f32", "bf16", "int8", "int8-bf16")
# The INT8 model `sodd quantize` wrote, with what OpenVINO runs its unquantized layers in. bf16 there
# needs the CPU's own bf16 instructions (AVX512-BF16, AMX): PicoDet-XS's INT8 graph then takes 0.8x
# the time, its depthwise convolutions 0.56x (high-performance.md).
INT8_REST = {"int8": "f32", "int8-bf16": "bf16"}
OPTIONS = OptionSchema(
    "openvino",
    Option("threads", int, None, "CPU threads (default: all cores, or sodd serve --threads)"),
    Option("cache_dir", Path, None, "where converted graphs are kept (default .../sodd/onnx)"),
    Option("precision", str, "f32", "inference precision; int8 runs the model sodd quantize wrote, int8-bf16 "
           "runs its unquantized layers in bf16 (CPUs with bf16 instructions)", PRECISIONS),
)


def import_openvino() -> ModuleType:
    """`import openvino` without its usage telemetry.

    Unless a consent file says otherwise, importing openvino makes its model-converter telemetry
    send an event to Google Analytics from a forked child process: a daemon must not phone home,
    forking a serving gRPC process logs warnings, and that child inherits Paddle's SIGTERM handler
    (it printed "FatalError: Termination signal" at shutdown). OpenVINO falls back to a no-op stub
    when the openvino_telemetry package cannot be imported, which is what this arranges.
    """
    if "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment] - makes its import fail
    import openvino

    return openvino


def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has bf16 kernels here (else a bf16 hint silently runs f32)."""
    return "BF16" in import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def int8_program(model: ModelDir, graph: Path) -> OnnxProgram:
    """The quantized graph `sodd quantize` wrote: cut before NMS like the fp32 one, same NMS to finish."""
    return OnnxProgram(graph, nms_params(model), f"INT8 model {graph.name} (sodd quantize)")


class OpenVinoPredictor(CutGraphPredictor):
    def __init__(self, program: OnnxProgram, threads: int, precision: str, graph: Path | None = None,
                 compiled_cache: Path | None = None) -> None:
        ov = import_openvino()

        core = ov.Core()
        if compiled_cache is not None:
            # OpenVINO's compiled-model cache: a restart imports the compiled blob instead of
            # compiling the graph again (cold start, benchmarks.md).
            core.set_property({"CACHE_DIR": str(compiled_cache)})
        # The INT8 model (`graph`) has its quantized ops fixed; the hint says what the rest runs in.
        # Compiled from the path, so that with a warm cache OpenVINO does not even read the graph.
        self._compiled = core.compile_model(str(graph or program.path), "CPU", {
            "INFERENCE_PRECISION_HINT": INT8_REST.get(precision, precision),
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
        # Paddle's NMS on OpenVINO's own op where that gives the same rows (hw_plugins.openvino.nms).
        self._fast_nms = OpenVinoNms(ov, program.nms, threads) if program.nms and nms_supports(program.nms) else None
        self.precision = precision
        nms_note = ", NMS on OpenVINO where it matches Paddle's" if self._fast_nms else ""
        self.notes = f"OpenVINO {package_version('openvino')} {precision} on {program.note}{nms_note}"

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._input_names

    def clone(self) -> OpenVinoPredictor:
        """Another infer request on the same compiled model, for a second worker thread."""
        twin = object.__new__(OpenVinoPredictor)
        twin.__dict__.update(self.__dict__)
        twin._request = self._compiled.create_infer_request()
        twin._fast_nms = self._fast_nms.clone() if self._fast_nms else None
        return twin

    def _run_graph(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        # Shared both ways: the call is synchronous, so OpenVINO may read our arrays in place, and
        # its output buffers are copied once here before the next run reuses them (about 5 % of
        # PicoDet-XS's INT8 graph time went to OpenVINO's own copies, high-performance.md).
        result = self._request.infer({i: np.ascontiguousarray(inputs[n]) for i, n in enumerate(self._input_names)},
                                     share_inputs=True, share_outputs=True)
        return [np.array(result[out], copy=True) for out in self._compiled.outputs]

    def _finish(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        if self._fast_nms is not None:
            finished = self._fast_nms.run(outputs[0], outputs[1])
            if finished is not None:
                return list(finished)
        return super()._finish(outputs)

    def close(self) -> None:
        self._request = None
        self._compiled = None
        self._fast_nms = None


class OpenVinoPlugin(CutGraphPlugin):
    name = "openvino"
    device_types = ("openvino",)

    def _import_runtime(self) -> ModuleType:
        return import_openvino()

    def _probe_runtime(self, ov: ModuleType, facts: dict[str, str]) -> list[DeviceInfo]:
        try:
            core = ov.Core()
            facts["cpu"] = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
            # What its CPU plugin can run here: x86 lists BF16 where the CPU has it, ARM FP16.
            facts["capabilities"] = ",".join(str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        except Exception as exc:  # noqa: BLE001 - OpenVINO without a usable CPU plugin
            return [DeviceInfo("openvino", False, f"OpenVINO has no usable CPU device: {exc}", facts)]
        return [DeviceInfo("openvino", True, "", facts)]

    def load(self, model: ModelDir, device: str, options: Mapping[str, str]) -> OpenVinoPredictor:
        parsed = OPTIONS.parse(device, options)
        threads = parsed["threads"] or os.cpu_count() or 1
        precision = parsed["precision"]
        cache_dir = parsed["cache_dir"] or default_onnx_cache()
        graph = None
        if INT8_REST.get(precision, precision) == "bf16" and not native_bf16():
            # OpenVINO would quietly run f32 under a bf16 label, and the measured cost would be another's.
            instead = "int8" if precision in INT8_REST else "f32"
            raise FailedPrecondition(f"device {device}: this CPU has no bf16 instructions (AVX512-BF16 or AMX); "
                                     f"use openvino?precision={instead}")
        if precision in INT8_REST:
            graph = model.path / INT8_XML
            if not graph.is_file():
                raise FailedPrecondition(f"device {device}: {model.path} has no {INT8_XML}; make one with "
                                         f"`sodd quantize --model-dir {model.path} --images CALIBRATION_IMAGES`")
        program = onnx_program(model, cache_dir) if graph is None else int8_program(model, graph)
        return OpenVinoPredictor(program, threads, precision, graph, cache_dir / "compiled")
