"""Device strings: which hardware plugin runs a model, with what options.

Grammar (documented in the README):

    DEVICES := DEVICE ("," DEVICE)*          tried in order at load: "npu:0,cpu"
    DEVICE  := TYPE [":" INDEX] ["?" KEY "=" VALUE ("&" KEY "=" VALUE)*]

TYPE is a device type a plugin claims (cpu, gpu, npu, arm, ...), INDEX a non-negative integer,
and options are plugin-specific: `cpu?threads=2&onednn=off`, `gpu:0?mode=trt_fp16`.
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
