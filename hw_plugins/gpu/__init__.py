"""Paddle Inference on NVIDIA GPUs (devices `gpu`, `gpu:N`), plain or through TensorRT.

Run modes (option `mode`): `paddle` (Paddle's own CUDA kernels), `trt_fp32`, `trt_fp16`.
TensorRT needs each input's [min, opt, max] shape: taken from inference.yml's
`Hpi.backend_configs.paddle_infer.trt_dynamic_shapes` when present (as PaddleX does), else made
from the Resize target with batch 1 .. `max_batch`.
A legacy program goes through Paddle's TensorRT subgraph engine; a PIR-only program is converted
by `paddle.tensorrt` first and the result cached like the Lite programs (hw_plugins.artifact_cache).

This code path has not run on a GPU yet: the machines it was written on have none, and Paddle 3
GPU builds are not on PyPI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from hw_plugins.artifact_cache import content_key, default_cache_root, staging_dir
from hw_plugins.paddle_predictor import PaddleDevicePlugin, PaddlePredictor, device_index, paddlex_switches
from sodd.errors import FailedPrecondition
from sodd.model.modeldir import ModelDir
from sodd.plugins.options import Option, OptionSchema
from sodd.plugins.protocol import DeviceInfo

log = logging.getLogger(__name__)

MODES = ("paddle", "trt_fp32", "trt_fp16")
OPTIONS = OptionSchema(
    "gpu",
    Option("mode", str, "paddle", "Paddle's CUDA kernels, or TensorRT in fp32 or fp16", MODES),
    Option("memory_pool_mb", int, 256, "initial GPU memory pool"),
    Option("max_batch", int, 8, "largest TensorRT batch when the shapes come from the Resize target"),
    Option("workspace_mb", int, 1024, "TensorRT workspace"),
    Option("min_subgraph_size", int, 3, "smallest subgraph handed to TensorRT"),
    Option("cache_dir", Path, None, "where TensorRT programs converted from PIR are kept"),
)
Shapes = dict[str, list[list[int]]]  # input name -> [min, opt, max]


def trt_dynamic_shapes(model: ModelDir, max_batch: int) -> Shapes:
    hpi = model.hpi.get("backend_configs", {}) if isinstance(model.hpi, dict) else {}
    shapes = (hpi.get("paddle_infer") or {}).get("trt_dynamic_shapes") if isinstance(hpi, dict) else None
    if isinstance(shapes, dict) and shapes:
        return {str(name): [list(map(int, s)) for s in triple] for name, triple in shapes.items()}
    if model.input_size is None:
        raise FailedPrecondition(f"{model.path}: TensorRT needs input shapes, and inference.yml has neither an "
                                 "Hpi trt_dynamic_shapes section nor a fixed Resize target_size")
    h, w = model.input_size
    return {
        "image": [[1, 3, h, w], [1, 3, h, w], [max_batch, 3, h, w]],
        "scale_factor": [[1, 2], [1, 2], [max_batch, 2]],
        "im_shape": [[1, 2], [1, 2], [max_batch, 2]],
    }


def program_inputs(model_file: Path, params_file: Path) -> list[str]:
    """The program's input names in feed order, read through a CPU predictor (no GPU needed)."""
    from paddle import inference

    config = inference.Config(str(model_file), str(params_file))
    config.disable_gpu()
    config.disable_mkldnn()
    config.disable_glog_info()
    return list(inference.create_predictor(config).get_input_names())


def shapes_for(shapes: Shapes, names: list[str], model: ModelDir) -> Shapes:
    """TensorRT wants exactly the program's inputs: no more, no fewer."""
    missing = [n for n in names if n not in shapes]
    if missing:
        raise FailedPrecondition(f"{model.path}: no TensorRT shapes for input(s) {missing}; add them to "
                                 "inference.yml under Hpi.backend_configs.paddle_infer.trt_dynamic_shapes")
    return {n: shapes[n] for n in names}


class GpuPlugin(PaddleDevicePlugin):
    name = "gpu"
    device_types = ("gpu",)

    def probe_paddle(self, paddle: ModuleType) -> list[DeviceInfo]:
        if not paddle.device.is_compiled_with_cuda():
            return [DeviceInfo("gpu", False, f"this paddle build ({paddle.__version__}) has no CUDA; "
                                             "install a paddlepaddle-gpu build", {"paddle": paddle.__version__})]
        count = paddle.device.cuda.device_count()
        if count == 0:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            reason = "no NVIDIA GPU is visible"
            if visible is not None:
                reason += f" (CUDA_VISIBLE_DEVICES={visible!r})"
            return [DeviceInfo("gpu", False, reason, {"paddle": paddle.__version__})]
        from paddle import inference

        common = {"paddle": paddle.__version__, "cuda": str(paddle.version.cuda()),
                  "cudnn": str(paddle.version.cudnn()),
                  "tensorrt": ".".join(map(str, inference.get_trt_runtime_version()))}
        devices = []
        for i in range(count):
            props = paddle.device.cuda.get_device_properties(i)
            devices.append(DeviceInfo(f"gpu:{i}", True, "", {
                **common, "name": props.name, "memory_bytes": str(props.total_memory),
                "compute_capability": f"{props.major}.{props.minor}"}))
        return devices

    def load(self, model: ModelDir, device: str, options: Mapping[str, str]) -> PaddlePredictor:
        parsed = OPTIONS.parse(device, options)
        mode = parsed["mode"]
        gpu_id = device_index(device)
        pool_mb = parsed["memory_pool_mb"]
        if mode == "paddle":
            return PaddlePredictor(self._plain_config(model.model_file, model.params_file, pool_mb, gpu_id),
                                   "Paddle Inference on CUDA")
        shapes = trt_dynamic_shapes(model, parsed["max_batch"])
        cache_dir = parsed["cache_dir"] or default_cache_root() / "trt"
        program = model.legacy_model_file or model.model_file
        shapes = shapes_for(shapes, program_inputs(program, model.params_file), model)
        if model.legacy_model_file is not None:
            config = self._legacy_trt_config(model, mode, shapes, pool_mb, gpu_id, parsed, cache_dir)
            return PaddlePredictor(config, f"TensorRT {mode[4:]} through Paddle's subgraph engine (legacy program)")
        model_file, params_file = self._pir_trt_program(model, mode, shapes, gpu_id, cache_dir)
        notes = f"TensorRT {mode[4:]} through paddle.tensorrt (PIR program, cached in {model_file.parent})"
        return PaddlePredictor(self._plain_config(model_file, params_file, pool_mb, gpu_id), notes)

    @staticmethod
    def _plain_config(model_file: Path, params_file: Path, pool_mb: int, gpu_id: int) -> object:
        from paddle import inference

        config = inference.Config(str(model_file), str(params_file))
        config.enable_use_gpu(pool_mb, gpu_id)
        return paddlex_switches(config)

    @staticmethod
    def _legacy_trt_config(model: ModelDir, mode: str, shapes: Shapes, pool_mb: int, gpu_id: int,
                           options: Mapping[str, object], cache_dir: Path) -> object:
        from paddle import inference

        assert model.legacy_model_file is not None
        config = inference.Config(str(model.legacy_model_file), str(model.params_file))
        config.enable_use_gpu(pool_mb, gpu_id)
        # The TensorRT subgraph pass belongs to the legacy IR.
        config.enable_new_ir(False)
        cache_dir.mkdir(parents=True, exist_ok=True)
        config.set_optim_cache_dir(str(cache_dir))
        precision = inference.PrecisionType.Half if mode == "trt_fp16" else inference.PrecisionType.Float32
        max_batch = max(s[2][0] for s in shapes.values())
        config.enable_tensorrt_engine(
            workspace_size=options["workspace_mb"] << 20,
            max_batch_size=max_batch,
            min_subgraph_size=options["min_subgraph_size"],
            precision_mode=precision, use_static=False, use_calib_mode=False)
        config.set_trt_dynamic_shape_info({n: s[0] for n, s in shapes.items()},
                                          {n: s[2] for n, s in shapes.items()},
                                          {n: s[1] for n, s in shapes.items()})
        config.enable_memory_optim()
        config.disable_glog_info()
        return config

    @staticmethod
    def _pir_trt_program(model: ModelDir, mode: str, shapes: Shapes, gpu_id: int,
                         cache_dir: Path) -> tuple[Path, Path]:
        """Convert a PIR program with paddle.tensorrt once per model, mode, shapes and GPU model."""
        try:
            import paddle
            from paddle.tensorrt.export import Input, PrecisionMode, TensorRTConfig, convert
        except ImportError as exc:
            raise FailedPrecondition(f"{model.path} holds only a PIR program and this paddle build has no "
                                     f"paddle.tensorrt ({exc}); add a legacy inference.pdmodel or use "
                                     "mode=paddle") from exc
        gpu_name = paddle.device.cuda.get_device_name(gpu_id)
        key = content_key([model.model_file, model.params_file],
                          {"mode": mode, "shapes": repr(list(shapes.items())), "paddle": paddle.__version__,
                           "gpu": gpu_name})
        final = cache_dir / f"{mode}-{key[:32]}"
        if not (final / "model.json").is_file():
            with staging_dir(cache_dir) as staging:
                # In the program's input order, which `shapes` keeps.
                inputs = [Input(min_input_shape=s[0], optim_input_shape=s[1], max_input_shape=s[2])
                          for s in shapes.values()]
                trt_config = TensorRTConfig(inputs=inputs)
                trt_config.precision_mode = PrecisionMode.FP16 if mode == "trt_fp16" else PrecisionMode.FP32
                out = staging / "program"
                out.mkdir()
                trt_config.save_model_dir = str(out / "model")
                convert(str(model.model_file.with_suffix("")), trt_config)
                try:
                    os.replace(out, final)  # publish the directory whole
                except OSError:
                    if not (final / "model.json").is_file():
                        raise
                    # another load published the same key first: its files are as good as ours
            log.info("model %s: TensorRT %s program cached in %s", model.path, mode, final)
        return final / "model.json", final / "model.pdiparams"
