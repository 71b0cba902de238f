"""ONNX Runtime on the CPU (device `onnxruntime`): the model directory as an ONNX graph.

The graph is the directory's `inference.onnx` or a cached paddle2onnx conversion, cut before its
NMS; Paddle's `multiclass_nms3` is then applied in numpy (see hw_plugins.onnx_common), so the boxes
are those Paddle's NMS would keep.
"""

from __future__ import annotations

import copy
import os
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
    onnx_program,
    package_version,
)
from sodd.model.modeldir import ModelDir
from sodd.plugins.options import Option, OptionSchema
from sodd.plugins.protocol import DeviceInfo

OPTIONS = OptionSchema(
    "onnxruntime",
    Option("threads", int, None, "CPU threads (default: all cores, or sodd serve --threads)"),
    Option("cache_dir", Path, None, "where converted graphs are kept (default .../sodd/onnx)"),
)


class OrtPredictor(CutGraphPredictor):
    def __init__(self, program: OnnxProgram, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(program.path), options, providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        self._input_names = tuple(i.name for i in inputs)
        self._per_image = batch_of_one(inputs[0].shape)
        self._nms = program.nms
        self.notes = f"ONNX Runtime {package_version('onnxruntime')} on {program.note}"

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._input_names

    def clone(self) -> OrtPredictor:
        """ONNX Runtime sessions may run from several threads: clones share the session."""
        return copy.copy(self)

    def _run_graph(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, {n: np.ascontiguousarray(inputs[n]) for n in self._input_names})

    def close(self) -> None:
        self._session = None


class OnnxRuntimePlugin(CutGraphPlugin):
    name = "onnxruntime"
    device_types = ("onnxruntime",)

    def _import_runtime(self) -> ModuleType:
        import onnxruntime

        return onnxruntime

    def _probe_runtime(self, runtime: ModuleType, facts: dict[str, str]) -> list[DeviceInfo]:
        facts["providers"] = ",".join(runtime.get_available_providers())
        return [DeviceInfo("onnxruntime", True, "", facts)]

    def load(self, model: ModelDir, device: str, options: Mapping[str, str]) -> OrtPredictor:
        parsed = OPTIONS.parse(device, options)
        cache_dir = parsed["cache_dir"] or default_onnx_cache()
        return OrtPredictor(onnx_program(model, cache_dir), parsed["threads"] or os.cpu_count() or 1)
