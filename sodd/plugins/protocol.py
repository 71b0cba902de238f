"""The interface between the daemon and a hardware backend.

A plugin loads a model directory for one device and runs named float32 arrays to output arrays.
It knows nothing of gRPC, thresholds or labels, so every backend shares the rest of the daemon.
Plugins are found through the entry-point group `sodd.hw_plugins`; the built-in ones register the
same way, so a third party ships a backend as its own package.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

import numpy as np

from sodd.model.modeldir import ModelDir

ENTRY_POINT_GROUP = "sodd.hw_plugins"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceInfo:
    device: str  # e.g. "cpu", "gpu:0"
    available: bool
    reason: str = ""  # why it is unavailable
    facts: Mapping[str, str] = field(default_factory=dict)  # name, memory, library versions


@runtime_checkable
class Predictor(Protocol):
    """A loaded model on one device. Not thread-safe: the engine calls it from one thread."""

    @property
    def input_names(self) -> tuple[str, ...]: ...

    @property
    def notes(self) -> str:
        """Anything an operator should know about how it runs (e.g. a fallback taken at load)."""
        ...

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


@runtime_checkable
class HardwarePlugin(Protocol):
    name: str
    device_types: tuple[str, ...]  # the device string prefixes it claims, e.g. ("gpu",)

    def probe(self) -> list[DeviceInfo]: ...

    def load(self, model: ModelDir, device: str, options: Mapping[str, str]) -> Predictor: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PluginProblem:
    name: str
    reason: str


def discover_plugins() -> tuple[dict[str, HardwarePlugin], list[PluginProblem]]:
    """Instantiate every registered plugin; a broken one is reported, not fatal."""
    plugins: dict[str, HardwarePlugin] = {}
    problems: list[PluginProblem] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugin = ep.load()()
        except Exception as exc:  # noqa: BLE001 - a third-party plugin must not stop the daemon
            log.warning("hardware plugin %s failed to load: %s", ep.name, exc)
            problems.append(PluginProblem(ep.name, f"{type(exc).__name__}: {exc}"))
            continue
        if not isinstance(plugin, HardwarePlugin):
            problems.append(PluginProblem(ep.name, "does not implement sodd.plugins.protocol.HardwarePlugin"))
            continue
        plugins[plugin.name] = plugin
    return plugins, problems
