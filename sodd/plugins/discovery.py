"""Finding the hardware plugins, and the plugin and device a device string names.

Plugins are found through the entry-point group `sodd.hw_plugins` (the built-in ones register the
same way); a plugin that fails to import or does not implement `HardwarePlugin` is reported as a
`PluginProblem`, never fatal. For a parsed device string (`sodd.plugins.devices`):

- the plugin is the one whose `device_types` claims the string's type;
- the device is the entry of that plugin's `probe()` named like the string (`gpu:1`); a bare type
  (`gpu`) is the entry named by the type, else its first device (`gpu:0`);
- an entry named by the type and marked unavailable speaks for the whole type, so `gpu:1` on a
  machine without CUDA is refused with that entry's reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from sodd.errors import FailedPrecondition

if TYPE_CHECKING:  # the Protocol module re-exports this one's names, so it is imported lazily here
    from sodd.plugins.devices import DeviceSpec
    from sodd.plugins.protocol import DeviceInfo, HardwarePlugin

ENTRY_POINT_GROUP = "sodd.hw_plugins"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginProblem:
    name: str
    reason: str


def discover_plugins() -> tuple[dict[str, HardwarePlugin], list[PluginProblem]]:
    """Instantiate every registered plugin; a broken one is reported, not fatal."""
    from sodd.plugins.protocol import HardwarePlugin

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


def plugin_for(plugins: Mapping[str, HardwarePlugin], device: DeviceSpec) -> HardwarePlugin:
    """The plugin that claims the device's type; FAILED_PRECONDITION naming the installed types if none."""
    for plugin in plugins.values():
        if device.type in plugin.device_types:
            return plugin
    known = sorted({t for p in plugins.values() for t in p.device_types})
    raise FailedPrecondition(f"no hardware plugin handles device type {device.type!r} (installed: {known})")


def available_device(plugin: HardwarePlugin, device: DeviceSpec) -> DeviceInfo:
    """The plugin's entry for the device, by the rules above; FAILED_PRECONDITION when there is none
    or it is unavailable (with the plugin's reason)."""
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
    return info
