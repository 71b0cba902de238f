"""Paddle Inference on the CPU (x86_64 or aarch64), configured as PaddleX 3.7.2 configures it.

Same switches as PaddleX's CPU runner (oneDNN with cache capacity 10, new IR and executor,
optimisation level 3, memory optimisation) so that scores match PaddleX's to the last bit.
Whether oneDNN is used is decided from the paddle build: PyPI's x86_64 wheels have it, the aarch64
wheels do not (their Config lacks even `set_mkldnn_cache_capacity`), so there the predictor runs
Paddle's plain kernels from the start. Some x86 paddle releases cannot run some programs with
oneDNN; load tries the program once and, if oneDNN fails, builds the predictor without it and says
so in `notes`.

One switch differs from PaddleX, and only in when memory is freed: Paddle's executor gives each
op's dead tensors to a garbage-collector thread, one wake-up per op, while the math threads hold
every core; each wake-up preempts one of them and the whole team waits for it at the next barrier.
Freed in batches of 2 MiB, the tensors are the same and so are the scores (see
`batch_garbage_collection`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import sys
from collections.abc import Mapping
from types import ModuleType

import numpy as np

from hw_plugins.paddle_predictor import PaddlePredictor, paddlex_switches
from sodd.errors import FailedPrecondition, InvalidArgument
from sodd.model.modeldir import ModelDir
from sodd.plugins.options import Option, OptionSchema
from sodd.plugins.protocol import DeviceInfo

PRECISIONS = ("fp32", "bf16")
# Paddle's FLAGS_eager_delete_tensor_gb: at 0 (its default, and PaddleX's) the garbage-collector
# thread is woken after every op. Batches of 2 MiB cut its wake-ups from about 400 to 66 a run
# on PicoDet-XS and took 3 to 4 ms off its 28 ms inference; resident memory stayed within a few
# MiB. Larger batches were slower again (10 MiB: SOD-S +4 %), no collection at all (-1) was fastest
# but kept every intermediate tensor: +500 MiB for PicoDet-XS. docs/benchmarks.md has the runs.
GARBAGE_FLAG = "FLAGS_eager_delete_tensor_gb"
GARBAGE_BATCH_GB = 2 / 1024
OPTIONS = OptionSchema(
    "cpu",
    Option("threads", int, None, "CPU threads (default: all cores, or sodd serve --threads)"),
    Option("onednn", str, "on", "oneDNN kernels; off runs Paddle's plain kernels", ("on", "off")),
    Option("precision", str, "fp32", "bf16 runs oneDNN bf16 kernels (needs onednn=on)", PRECISIONS),
)


def import_paddle() -> ModuleType:
    """`import paddle`, keeping this process's SIGTERM disposition.

    Importing paddle installs libpaddle's SIGTERM handler, which prints "FatalError: `Termination
    signal` is detected" and kills the process. Imported after the daemon installed its own handler
    (serving a model on a non-Paddle device imports paddle only later, e.g. at the first
    ListDevices), it replaced it: SIGTERM then killed the daemon without draining. The disposition is
    saved and restored through sigaction(2), which any thread may call.
    """
    if "paddle" in sys.modules:
        return sys.modules["paddle"]
    saved = _sigterm_action()
    try:
        import paddle
    finally:
        if saved is not None:
            _libc().sigaction(signal.SIGTERM, saved, None)
    return paddle


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _sigterm_action() -> ctypes.Array | None:
    """The current `struct sigaction` of SIGTERM as opaque bytes (larger than any libc's struct)."""
    if not hasattr(signal, "SIGTERM") or sys.platform != "linux":
        return None
    action = ctypes.create_string_buffer(512)
    return action if _libc().sigaction(signal.SIGTERM, None, action) == 0 else None


def paddle_has_onednn() -> bool:
    """Whether this paddle build carries oneDNN (x86_64 wheels do, aarch64 wheels do not)."""
    try:
        import_paddle()
        from paddle.base import core
    except ImportError:
        return False
    check = getattr(core, "is_compiled_with_mkldnn", None)
    return bool(check and check())


def batch_garbage_collection(paddle: ModuleType) -> None:
    """Have Paddle free dead tensors in batches (GARBAGE_BATCH_GB) rather than after every op.

    The flag is the process's and is read when a predictor is built, so it is set before each one;
    an operator who exported FLAGS_eager_delete_tensor_gb keeps their value."""
    if GARBAGE_FLAG not in os.environ and paddle.get_flags(GARBAGE_FLAG)[GARBAGE_FLAG] != GARBAGE_BATCH_GB:
        paddle.set_flags({GARBAGE_FLAG: GARBAGE_BATCH_GB})


def cpu_config(model: ModelDir, threads: int, onednn: bool, precision: str = "fp32") -> object:
    """A `paddle.inference.Config` with PaddleX's CPU switches (and batched garbage collection)."""
    batch_garbage_collection(import_paddle())
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
    return paddlex_switches(config)


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

    def __init__(self) -> None:
        # Plugins are made at start-up, before the daemon handles signals: importing paddle now, with
        # SIGTERM kept, means no later import (by any plugin, on any thread) can replace the handler.
        with contextlib.suppress(ImportError):  # probe() reports it
            import_paddle()

    def probe(self) -> list[DeviceInfo]:
        try:
            paddle = import_paddle()
        except ImportError as exc:
            return [DeviceInfo("cpu", False, f"paddlepaddle is not importable: {exc}")]
        onednn = paddle_has_onednn()
        facts = {
            # Not platform.processor(): on Linux it forks `uname -p`, and forking a serving gRPC process logs noise.
            "processor": platform.machine(),
            "arch": platform.machine(),
            "cores": str(os.cpu_count()),
            "paddle": paddle.__version__,
            "onednn": "yes" if onednn else "no (not in this paddle build)",
            "precisions": ",".join(PRECISIONS) if onednn else "fp32",
        }
        return [DeviceInfo("cpu", True, "", facts)]

    def load(self, model: ModelDir, device: str, options: Mapping[str, str]) -> PaddlePredictor:
        parsed = OPTIONS.parse(device, options)
        threads = parsed["threads"] or os.cpu_count() or 1
        onednn = parsed["onednn"] == "on"
        precision = parsed["precision"]
        if precision == "bf16" and not onednn:
            raise InvalidArgument(f"device {device}: precision must be one of {list(PRECISIONS)} "
                                  f"(bf16 needs onednn=on), got {precision!r}")
        built_with_onednn = paddle_has_onednn()
        if precision == "bf16" and not built_with_onednn:
            raise FailedPrecondition(f"device {device}: bf16 runs on oneDNN kernels, and this paddle build "
                                     f"({platform.machine()}) has no oneDNN")
        if not onednn:
            return PaddlePredictor(cpu_config(model, threads, onednn=False))
        if not built_with_onednn:
            return PaddlePredictor(cpu_config(model, threads, onednn=False), "Paddle's plain CPU kernels: "
                                   f"this paddle build ({platform.machine()}) has no oneDNN")
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
