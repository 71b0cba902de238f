"""Paddle Inference on x86 CPUs, configured as PaddleX 3.7.2 configures it.

Same switches as PaddleX's CPU runner (oneDNN with cache capacity 10, new IR and executor,
optimisation level 3, memory optimisation) so that scores match PaddleX's to the last bit.
Some paddle releases cannot run some programs with oneDNN; load tries the program once and, if
oneDNN fails, builds the predictor without it and says so in `notes`.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping

import numpy as np

from hw_plugins.paddle_predictor import PaddlePredictor
from sodd.errors import InvalidArgument
from sodd.modeldir import ModelDir
from sodd.plugin import DeviceInfo

PRECISIONS = ("fp32", "bf16")


def cpu_config(model: ModelDir, threads: int, onednn: bool, precision: str = "fp32") -> object:
    """A `paddle.inference.Config` with PaddleX's CPU switches."""
    from paddle import inference

    config = inference.Config(str(model.model_file), str(model.params_file))
    config.disable_gpu()
    if onednn:
        config.enable_mkldnn()
        config.set_mkldnn_cache_capacity(10)
        if precision == "bf16":
            config.enable_mkldnn_bfloat16()  # oneDNN bf16 kernels; AMX where the CPU has it
    else:
        config.disable_mkldnn()
    config.set_cpu_math_library_num_threads(threads)
    config.enable_new_ir(True)
    config.enable_new_executor()
    config.set_optimization_level(3)
    config.enable_memory_optim()
    config.disable_glog_info()
    return config


def smoke_inputs(model: ModelDir, input_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One neutral image at the model's input size, for a trial run at load."""
    h, w = model.input_size or (640, 640)
    arrays = {
        "image": np.full((1, 3, h, w), 114.0, dtype=np.float32),
        "scale_factor": np.ones((1, 2), dtype=np.float32),
        "im_shape": np.array([[h, w]], dtype=np.float32),
    }
    return {name: arrays[name] for name in input_names if name in arrays}


class CpuPlugin:
    name = "cpu"
    device_types = ("cpu",)

    def probe(self) -> list[DeviceInfo]:
        try:
            import paddle
        except ImportError as exc:
            return [DeviceInfo("cpu", False, f"paddlepaddle is not importable: {exc}")]
        facts = {
            "processor": platform.processor() or platform.machine(),
            "cores": str(os.cpu_count()),
            "paddle": paddle.__version__,
        }
        if platform.machine() not in ("x86_64", "AMD64"):
            reason = f"the Paddle Inference CPU plugin needs x86_64, this is {platform.machine()}"
            return [DeviceInfo("cpu", False, reason, facts)]
        return [DeviceInfo("cpu", True, "", facts)]

    def load(self, model: ModelDir, device: str, options: Mapping[str, str]) -> PaddlePredictor:
        threads = int(options.get("threads") or os.cpu_count() or 1)
        onednn = options.get("onednn", "on") != "off"
        precision = options.get("precision", "fp32")
        if precision not in PRECISIONS or (precision == "bf16" and not onednn):
            raise InvalidArgument(f"device {device}: precision must be one of {list(PRECISIONS)} "
                                  f"(bf16 needs onednn=on), got {precision!r}")
        if not onednn:
            return PaddlePredictor(cpu_config(model, threads, onednn=False))
        try:
            notes = "Paddle Inference with oneDNN bf16 kernels" if precision == "bf16" else ""
            predictor = PaddlePredictor(cpu_config(model, threads, True, precision), notes)
            predictor.run(smoke_inputs(model, predictor.input_names))
            return predictor
        except Exception as exc:  # noqa: BLE001 - any oneDNN failure falls back to plain kernels
            return PaddlePredictor(cpu_config(model, threads, onednn=False),
                                   f"oneDNN disabled: this paddle build failed to run the program with it ({exc})")

    def close(self) -> None:
        pass
