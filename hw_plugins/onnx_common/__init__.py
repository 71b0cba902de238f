"""What the OpenVINO and ONNX Runtime plugins share: a model directory as an ONNX graph cut before
its NMS, and our own NMS with Paddle's semantics on the graph's boxes and scores.

The graph comes from `inference.onnx` in the model directory when it carries one, else from a
paddle2onnx conversion of the Paddle program, cached by content (hw_plugins.artifact_cache).
paddle2onnx turns `multiclass_nms3` into ONNX `NonMaxSuppression` + `TopK`, which keeps other boxes
than Paddle once `keep_top_k` cuts (seen on PicoDet-XS: 100 rows either way, different ones), so
the graph is cut at the NMS inputs (boxes [B, M, 4], scores [B, C, M]) and sodd.model.nms
finishes with the attributes read from the Paddle program. Conversion runs in a child process:
paddle2onnx is native code, and a crash there must fail only this load.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType

import numpy as np

from hw_plugins.artifact_cache import content_key, default_cache_root, publish, staging_dir
from hw_plugins.tool_process import run_tool
from sodd.errors import FailedPrecondition
from sodd.model.modeldir import ModelDir
from sodd.model.nms import NmsParams, multiclass_nms
from sodd.plugins.protocol import DeviceInfo

log = logging.getLogger(__name__)

READY_ONNX = "inference.onnx"  # a graph shipped inside the model directory
OPSET = 13
CONVERT_TIMEOUT_S = 900
GRAPH_FORMAT = "cut-before-nms-v1"  # bump when what the cache holds changes
_TOOL = f"{__name__}.tool"
_NMS_ATTRS = ("score_threshold", "nms_top_k", "keep_top_k", "nms_threshold", "normalized", "nms_eta",
              "background_label")


@dataclass(frozen=True)
class OnnxProgram:
    path: Path  # the graph to run
    nms: NmsParams | None  # None: the graph's outputs are final (no NMS to finish)
    note: str  # where the graph came from, for GetModel


# pip leaves paddle2onnx out on aarch64 below Python 3.12 (see pyproject.toml); without it a model
# runs only from a graph shipped as inference.onnx or converted earlier.
NO_PADDLE2ONNX_HINT = (
    "paddle2onnx is not installed, so the Paddle program cannot be converted to ONNX here. Install it "
    "with `pip install --no-deps paddle2onnx==2.1.0` (`make setup` does; on aarch64 below Python 3.12 "
    "its onnxoptimizer requirement has no wheel, and it runs without it), or put a converted "
    f"{READY_ONNX} in the model directory"
)


def paddle2onnx_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("paddle2onnx") is not None


def paddle2onnx_fact() -> str:
    """For ListDevices: the converter's version, or that only shipped or cached graphs run."""
    if paddle2onnx_available():
        return package_version("paddle2onnx")
    return "not installed (only inference.onnx graphs run; pip install --no-deps paddle2onnx==2.1.0)"


def default_onnx_cache() -> Path:
    return default_cache_root() / "onnx"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def nms_params(model: ModelDir) -> NmsParams | None:
    """The `multiclass_nms3` attributes of the Paddle program, or None when it has no such op."""
    if model.model_file.suffix == ".json":
        return _nms_params_pir(model.model_file)
    return _nms_params_legacy(model.model_file)


def _nms_params_pir(path: Path) -> NmsParams | None:
    program = json.loads(path.read_text(encoding="utf-8"))

    def ops(node: object):
        if isinstance(node, dict):
            if node.get("#", "").endswith(".multiclass_nms3"):
                yield node
            for value in node.values():
                yield from ops(value)
        elif isinstance(node, list):
            for value in node:
                yield from ops(value)

    for op in ops(program.get("program", program)):
        attrs = {a.get("N"): a.get("AT", {}).get("D") for a in op.get("A", [])}
        return _params({k: attrs[k] for k in _NMS_ATTRS if k in attrs})
    return None


def _nms_params_legacy(path: Path) -> NmsParams | None:
    from paddle.base.proto import framework_pb2

    program = framework_pb2.ProgramDesc()
    program.ParseFromString(path.read_bytes())
    for block in program.blocks:
        for op in block.ops:
            if op.type == "multiclass_nms3":
                attrs = {}
                for a in op.attrs:
                    if a.name in ("nms_top_k", "keep_top_k", "background_label"):
                        attrs[a.name] = a.i
                    elif a.name in ("score_threshold", "nms_threshold", "nms_eta"):
                        attrs[a.name] = a.f
                    elif a.name == "normalized":
                        attrs[a.name] = a.b
                return _params(attrs)
    return None


def _params(attrs: Mapping[str, object]) -> NmsParams:
    defaults = NmsParams()
    return NmsParams(**{k: type(getattr(defaults, k))(attrs[k]) for k in _NMS_ATTRS if k in attrs})


def onnx_program(model: ModelDir, cache_dir: Path) -> OnnxProgram:
    """The directory's own `inference.onnx`, a cached conversion, or a fresh one; always cut before NMS."""
    nms = nms_params(model)
    ready = model.path / READY_ONNX
    source = [ready] if ready.is_file() else [model.model_file, model.params_file]
    key = content_key(source, {"paddle2onnx": package_version("paddle2onnx"), "onnx": package_version("onnx"),
                               "opset": str(OPSET), "format": GRAPH_FORMAT, "nms": str(nms is not None)})
    cached = cache_dir / f"{key[:32]}.onnx"
    origin = f"{READY_ONNX} from the model directory" if ready.is_file() else "paddle2onnx conversion"
    if cached.is_file():
        log.info("model %s: ONNX graph from the cache: %s", model.path, cached)
        return OnnxProgram(cached, nms, f"{origin}, cut before NMS, from the cache ({cached})")
    if not ready.is_file() and not paddle2onnx_available():
        raise FailedPrecondition(f"model {model.path}: {NO_PADDLE2ONNX_HINT}")
    with staging_dir(cache_dir) as staging:
        staged = staging / "model.onnx"
        args = ["cut" if ready.is_file() else "convert", str(staged), str(OPSET), "1" if nms else "0"]
        args += [str(ready)] if ready.is_file() else [str(model.model_file), str(model.params_file)]
        seconds = run_tool(_TOOL, args, f"ONNX {origin} of {model.path}", CONVERT_TIMEOUT_S)
        publish(staged, cached)
    log.info("model %s: %s in %.1f s, cached as %s", model.path, origin, seconds, cached)
    return OnnxProgram(cached, nms, f"{origin} in {seconds:.1f} s, cut before NMS, cached ({cached})")


def finish_outputs(outputs: list[np.ndarray], nms: NmsParams | None) -> list[np.ndarray]:
    """The plugin contract's outputs ([N, 6] rows, int32 counts) from a cut graph's boxes and scores."""
    if nms is None:
        return outputs
    boxes, scores = outputs[0], outputs[1]
    rows, counts = multiclass_nms(boxes, scores, nms)
    return [rows, counts]


def batch_of_one(input_shape: list) -> bool:
    """Whether the graph's first input has a fixed batch of 1 (paddle2onnx fixes it when folding)."""
    return bool(input_shape) and input_shape[0] == 1


def run_per_image(run, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run a batch one image at a time and join boxes and scores along the batch axis."""
    batch = next(iter(inputs.values())).shape[0]
    parts = [run({n: a[i:i + 1] for n, a in inputs.items()}) for i in range(batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


class CutGraphPredictor:
    """What the ONNX Runtime and OpenVINO predictors share: feed the graph cut before its NMS
    (one image at a time when the graph's batch is fixed at 1), then apply Paddle's NMS.
    Subclasses set `_input_names`, `_per_image` and `_nms`, and implement `_run_graph`."""

    _input_names: tuple[str, ...]
    _per_image: bool
    _nms: NmsParams | None

    def _run_graph(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {n: inputs[n] for n in self._input_names}
        if self._per_image and feeds[self._input_names[0]].shape[0] > 1:
            outputs = run_per_image(self._run_graph, feeds)
        else:
            outputs = self._run_graph(feeds)
        return self._finish(outputs)

    def _finish(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        """The contract's outputs from the graph's; a backend may apply the same NMS its own way."""
        return finish_outputs(outputs, self._nms)


class CutGraphPlugin:
    """What the ONNX Runtime and OpenVINO plugins share: a device that exists where its runtime
    imports, listed with the runtime's and the converter's versions, and nothing plugin-wide to
    close. Subclasses set `name` (also the runtime's package name) and `device_types`, and
    implement `_import_runtime`, `_probe_runtime` and `load`."""

    name: str

    def _import_runtime(self) -> ModuleType:
        raise NotImplementedError

    def _probe_runtime(self, runtime: ModuleType, facts: dict[str, str]) -> list[DeviceInfo]:
        """The device, once the runtime imports; `facts` already holds what every such device lists."""
        raise NotImplementedError

    def probe(self) -> list[DeviceInfo]:
        facts = {"machine": platform.machine(), "arch": platform.machine()}
        try:
            runtime = self._import_runtime()
        except Exception as exc:  # noqa: BLE001 - any import failure makes the device unavailable
            return [DeviceInfo(self.name, False, f"{self.name} is not importable: {exc}", facts)]
        facts.update({self.name: package_version(self.name)}, paddle2onnx=paddle2onnx_fact(),
                     cores=str(os.cpu_count()))
        return self._probe_runtime(runtime, facts)

    def close(self) -> None:
        pass
