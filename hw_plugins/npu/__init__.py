"""Paddle CustomDevice accelerators (devices `npu:N`), e.g. Ascend through its Paddle plugin.

A vendor ships a CustomDevice as a separate package that registers a device type with paddle
(`npu` for Ascend, `mlu`, `gcu`, ...). Option `type` picks that type (default `npu`); the daemon
still calls the device `npu:N`. No CustomDevice exists on the machines this was written on, so the
run path is untested on hardware.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

from hw_plugins.paddle_predictor import PaddleDevicePlugin, PaddlePredictor, device_index
from sodd.errors import FailedPrecondition
from sodd.model.modeldir import ModelDir
from sodd.plugins.options import Option, OptionSchema
from sodd.plugins.protocol import DeviceInfo

DEFAULT_TYPE = "npu"
OPTIONS = OptionSchema(
    "npu",
    Option("type", str, DEFAULT_TYPE, "the CustomDevice type registered with paddle (npu, mlu, gcu, ...)"),
)


def custom_devices() -> tuple[list[str], dict[int, list[str]]]:
    """Installed CustomDevice types, and for each device index the types that have it."""
    import paddle

    types = sorted(paddle.device.get_all_custom_device_type() or [])
    by_index: dict[int, list[str]] = {}
    for name in paddle.device.get_available_custom_device() or []:
        kind, _, index = str(name).partition(":")
        by_index.setdefault(int(index or 0), []).append(kind)
    return types, by_index


class NpuPlugin(PaddleDevicePlugin):
    name = "npu"
    device_types = ("npu",)

    def probe_paddle(self, paddle: ModuleType) -> list[DeviceInfo]:
        facts = {"paddle": paddle.__version__}
        types, by_index = custom_devices()
        if not types:
            return [DeviceInfo("npu", False, "this paddle has no CustomDevice plugin installed "
                                             "(paddle.device.get_all_custom_device_type() is empty); install the "
                                             "vendor's paddle-custom-device package", facts)]
        if not by_index:
            return [DeviceInfo("npu", False, f"CustomDevice types {types} are installed but no device is visible",
                               facts)]
        return [DeviceInfo(f"npu:{i}", True, "", {**facts, "custom_device_types": ",".join(sorted(kinds))})
                for i, kinds in sorted(by_index.items())]

    def load(self, model: ModelDir, device: str, options: Mapping[str, str]) -> PaddlePredictor:
        kind = OPTIONS.parse(device, options)["type"]
        types, by_index = custom_devices()
        index = device_index(device)
        if kind not in types:
            raise FailedPrecondition(f"device {device}: no CustomDevice of type {kind!r} is installed "
                                     f"(installed: {types}); pick one with ?type=")
        if kind not in by_index.get(index, []):
            raise FailedPrecondition(f"device {device}: CustomDevice {kind}:{index} is not visible")
        from paddle import inference

        config = inference.Config(str(model.model_file), str(model.params_file))
        config.enable_custom_device(kind, index)
        config.enable_new_executor()
        config.enable_memory_optim()
        config.disable_glog_info()
        return PaddlePredictor(config, f"Paddle CustomDevice {kind}:{index}")
