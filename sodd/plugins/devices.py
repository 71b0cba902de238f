"""Device strings: which hardware plugin runs a model, with what options.

Grammar (docs/plugins.md has the user's view):

    DEVICES := DEVICE ("," DEVICE)*          tried in order at load: "npu:0,cpu"
    DEVICE  := TYPE [":" INDEX] ["?" KEY "=" VALUE ("&" KEY "=" VALUE)*]

Rules:

- TYPE is lower case (`[a-z][a-z0-9_]*`) and names the plugin that claims it (cpu, gpu, npu, arm,
  openvino, onnxruntime, or a third party's); INDEX is a non-negative integer.
- A bare TYPE means its first device: `gpu` is `gpu:0` (`sodd.plugins.discovery.available_device`).
- Options belong to the plugin: each declares the ones it takes (`sodd.plugins.options`), and a key
  it does not declare, or a value it cannot take, is INVALID_ARGUMENT naming the device. A key
  without a value (`?threads=`) is dropped; a key without `=` is malformed.
- For the plugins that run on the host CPU (cpu, openvino, onnxruntime), `sodd serve --threads`
  is the `threads` option of every device that does not set it.
- A list is tried left to right at load; a device that is unavailable or fails to load the model
  is skipped with a warning. A malformed string is INVALID_ARGUMENT listing ACCEPTED_FORMS.
- Responses, logs and metrics name a device without its options (`DeviceSpec.name`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from sodd.errors import InvalidArgument

ACCEPTED_FORMS = "cpu, gpu, gpu:N, npu:N, arm, optionally with ?key=value&key=value, several joined by ','"
_DEVICE_RE = re.compile(r"^(?P<type>[a-z][a-z0-9_]*)(?::(?P<index>\d+))?(?:\?(?P<options>.*))?$")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), which may be fewer than the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class DeviceSpec:
    type: str
    index: int | None = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The device as responses and logs show it, without options."""
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __hash__(self) -> int:
        return hash((self.type, self.index, tuple(sorted(self.options.items()))))


def parse_device(text: str) -> DeviceSpec:
    match = _DEVICE_RE.match(text.strip())
    if not match:
        raise InvalidArgument(f"device {text!r} is malformed; accepted forms: {ACCEPTED_FORMS}")
    options: dict[str, str] = {}
    if match["options"]:
        try:
            pairs = parse_qsl(match["options"], keep_blank_values=False, strict_parsing=True)
        except ValueError as exc:
            raise InvalidArgument(
                f"device {text!r} has malformed options: {exc}; accepted forms: {ACCEPTED_FORMS}") from exc
        options = dict(pairs)
    index = int(match["index"]) if match["index"] is not None else None
    return DeviceSpec(match["type"], index, options)


def parse_devices(text: str) -> tuple[DeviceSpec, ...]:
    parts = [p for p in text.split(",")]
    if not text.strip() or any(not p.strip() for p in parts):
        raise InvalidArgument(f"device list {text!r} is malformed; accepted forms: {ACCEPTED_FORMS}")
    return tuple(parse_device(p) for p in parts)
