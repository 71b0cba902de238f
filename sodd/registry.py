"""The models the daemon serves: loading each on the first device that can take it.

A model's device list is tried in order ("npu:0,cpu"); the device actually used is recorded and
shown in responses, GetModel and logs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sodd.config import ModelConfig
from sodd.devices import DeviceSpec
from sodd.engine import ModelRunner
from sodd.errors import FailedPrecondition, NotFound
from sodd.modeldir import ModelDir, read_model_dir
from sodd.plugin import HardwarePlugin, PluginProblem

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    config: ModelConfig
    version: int
    model_dir: ModelDir
    device: str
    runner: ModelRunner
    notes: str = ""

    @property
    def name(self) -> str:
        return self.config.name


class ModelRegistry:
    def __init__(self, plugins: dict[str, HardwarePlugin], *, max_pending: int,
                 cpu_threads: int | None = None, plugin_problems: list[PluginProblem] | None = None) -> None:
        self._plugins = plugins
        self.plugin_problems = list(plugin_problems or [])
        self._max_pending = max_pending
        self._cpu_threads = cpu_threads
        self._models: dict[str, ServedModel] = {}
        self.default_name: str | None = None

    @property
    def plugins(self) -> dict[str, HardwarePlugin]:
        return dict(self._plugins)

    def plugin_for(self, device: DeviceSpec) -> HardwarePlugin:
        for plugin in self._plugins.values():
            if device.type in plugin.device_types:
                return plugin
        known = sorted({t for p in self._plugins.values() for t in p.device_types})
        raise FailedPrecondition(f"no hardware plugin handles device type {device.type!r} (installed: {known})")

    def _load_on(self, model_dir: ModelDir, device: DeviceSpec):
        plugin = self.plugin_for(device)
        infos = {info.device: info for info in plugin.probe()}
        info = infos.get(device.name) or (infos.get(device.type) if device.index is None else None)
        if info is None and device.index is None:
            info = infos.get(f"{device.type}:0")  # a bare type means its first device: "gpu" is "gpu:0"
        if info is None and device.type in infos and not infos[device.type].available:
            info = infos[device.type]  # the plugin says the whole type is unavailable, and why
        if info is None:
            raise FailedPrecondition(f"device {device.name} does not exist (plugin {plugin.name} has {sorted(infos)})")
        if not info.available:
            raise FailedPrecondition(f"device {device.name} is unavailable: {info.reason}")
        options = dict(device.options)
        if device.type == "cpu" and self._cpu_threads and "threads" not in options:
            options["threads"] = str(self._cpu_threads)
        return plugin.load(model_dir, device.name, options)

    def load(self, config: ModelConfig) -> ServedModel:
        model_dir = read_model_dir(config.path)
        failures = []
        for device in config.devices:
            try:
                predictor = self._load_on(model_dir, device)
            except Exception as exc:  # noqa: BLE001 - try the next device in the list
                failures.append(f"{device.name}: {exc}")
                log.warning("model %s: cannot load on %s: %s", config.name, device.name, exc)
                continue
            served = ServedModel(
                config=config, version=1, model_dir=model_dir, device=device.name,
                runner=ModelRunner(predictor, self._max_pending, config.name),
                notes="; ".join(failures + ([predictor.notes] if predictor.notes else [])),
            )
            self._models[config.name] = served
            if self.default_name is None:
                self.default_name = config.name
            log.info("model %s loaded from %s on %s%s", config.name, model_dir.path, device.name,
                     f" ({served.notes})" if served.notes else "")
            return served
        raise FailedPrecondition(f"model {config.name} could not be loaded on any device: " + "; ".join(failures))

    def get(self, name: str, version: int = 0) -> ServedModel:
        key = name or self.default_name or ""
        served = self._models.get(key)
        if served is None:
            raise NotFound(f"model {key!r} is not served (served: {sorted(self._models)})")
        if version and version != served.version:
            raise NotFound(f"model {key!r} has no version {version} (available: [{served.version}])")
        return served

    def models(self) -> list[ServedModel]:
        return list(self._models.values())

    def close(self) -> None:
        for served in self._models.values():
            served.runner.close()
        self._models.clear()
