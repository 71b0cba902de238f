"""The interface between the daemon and a hardware backend.

A plugin loads a model directory for one device and runs named float32 arrays to output arrays.
It knows nothing of gRPC, thresholds or labels, so every backend shares the rest of the daemon.
Plugins are found through the entry-point group `sodd.hw_plugins` (`sodd.plugins.discovery`); the
built-in ones register the same way, so a third party ships a backend as its own package. Which
device strings reach a plugin, and how its options are checked, is in `sodd.plugins.devices` and
`sodd.plugins.options`.

Lifecycle: the daemon calls `HardwarePlugin.load` once per predictor it needs and closes each
predictor (`Predictor.close`) when the model version it serves is retired and its last request has
finished, or at shutdown; `HardwarePlugin.close` is called once, at shutdown, after the
predictors of the versions it served are closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from sodd.model.modeldir import ModelDir

# Discovery lives in sodd.plugins.discovery; plugins and callers written against this module keep these names.
from sodd.plugins.discovery import ENTRY_POINT_GROUP, PluginProblem, discover_plugins

__all__ = ["ENTRY_POINT_GROUP", "DeviceInfo", "HardwarePlugin", "PluginProblem", "Predictor", "discover_plugins"]


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

    def clone(self) -> Predictor:
        """Another instance for another engine thread (a model with `instances` > 1). Raise
        NotImplementedError when the backend cannot make one; the model then runs one instance."""
        ...

    def close(self) -> None:
        """Free the model. Called once, after its last run."""
        ...


@runtime_checkable
class HardwarePlugin(Protocol):
    name: str
    device_types: tuple[str, ...]  # the device string prefixes it claims, e.g. ("gpu",)

    def probe(self) -> list[DeviceInfo]: ...

    def load(self, model: ModelDir, device: str, options: Mapping[str, str]) -> Predictor:
        """`device` is the name without options (`gpu:1`); check `options` with an
        `sodd.plugins.options.OptionSchema`."""
        ...

    def close(self) -> None:
        """Release plugin-wide resources; called once at shutdown."""
        ...
