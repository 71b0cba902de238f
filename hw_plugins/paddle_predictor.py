"""A Paddle Inference predictor behind the plugin interface, for the plugins that build a
`paddle.inference.Config` of their own (cpu, gpu, npu): they differ in the config, not in running it."""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

import numpy as np

from sodd.plugins.protocol import DeviceInfo


class PaddlePredictor:
    def __init__(self, config: object, notes: str = "", *, predictor: object = None) -> None:
        if predictor is None:
            from paddle import inference

            predictor = inference.create_predictor(config)
        self._predictor = predictor
        self._input_names = tuple(predictor.get_input_names())
        self._output_names = tuple(predictor.get_output_names())
        self._notes = notes

    def clone(self) -> PaddlePredictor:
        """Another instance for another engine thread, sharing the weights."""
        return PaddlePredictor(None, self._notes, predictor=self._predictor.clone())

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._input_names

    @property
    def notes(self) -> str:
        return self._notes

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        for name in self._input_names:
            handle = self._predictor.get_input_handle(name)
            array = np.ascontiguousarray(inputs[name])
            handle.reshape(array.shape)
            handle.copy_from_cpu(array)
        self._predictor.run()
        return [self._predictor.get_output_handle(n).copy_to_cpu() for n in self._output_names]

    def close(self) -> None:
        self._predictor = None


def device_index(device: str) -> int:
    """`gpu` -> 0, `gpu:3` -> 3: a bare type means its first device."""
    _, _, index = device.partition(":")
    return int(index) if index else 0


def paddlex_switches(config: object) -> object:
    """Set the switches PaddleX 3.7.2 sets on every device (new IR and executor, optimisation
    level 3, memory optimisation, no glog output) after the device's own; returns `config`."""
    config.enable_new_ir(True)
    config.enable_new_executor()
    config.set_optimization_level(3)
    config.enable_memory_optim()
    config.disable_glog_info()
    return config


class PaddleDevicePlugin:
    """What the gpu and npu plugins share: their devices exist only where paddle imports, and they
    hold nothing plugin-wide. Subclasses set `name` (the device reported when paddle is missing)
    and `device_types`, and implement `probe_paddle` and `load`."""

    name: str

    def probe(self) -> list[DeviceInfo]:
        try:
            import paddle
        except Exception as exc:  # noqa: BLE001 - any import failure makes the device unavailable
            return [DeviceInfo(self.name, False, f"paddlepaddle is not importable: {type(exc).__name__}: {exc}")]
        return self.probe_paddle(paddle)

    def probe_paddle(self, paddle: ModuleType) -> list[DeviceInfo]:
        """The devices, once paddle imports."""
        raise NotImplementedError

    def close(self) -> None:
        pass
