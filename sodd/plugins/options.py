"""Device options (`cpu?threads=2`, `openvino?precision=int8`): each plugin declares the ones it
takes, and every plugin reads them through the same parser, so the rules are the same everywhere.

A plugin lists its options as `Option`s (name, type, default, help, and the accepted values for a
choice) in an `OptionSchema`, and calls `schema.parse(device, options)` first thing in `load`. The
parser refuses, with INVALID_ARGUMENT naming the device:

- a key the plugin does not declare (naming the key and the options the plugin takes);
- an `int` option that is not a positive integer;
- a value outside a choice's accepted values.

It returns every declared option, the default where the device string gave none. `Path` options
with no value are None (the plugin then uses its default directory). Checks that involve several
options (`cpu?precision=bf16&onednn=off`) stay in the plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sodd.errors import InvalidArgument


@dataclass(frozen=True)
class Option:
    name: str
    type: type = str  # int (positive), str or Path
    default: int | str | Path | None = None
    help: str = ""
    choices: tuple[str, ...] = ()  # the accepted values of a `str` option; empty: any value


class OptionSchema:
    """The options one plugin takes."""

    def __init__(self, plugin: str, *options: Option) -> None:
        self.plugin = plugin
        self.options = {option.name: option for option in options}

    @property
    def names(self) -> list[str]:
        return list(self.options)

    def parse(self, device: str, given: Mapping[str, str]) -> dict[str, int | str | Path | None]:
        """Every declared option by name: the checked value from the device string, else the default."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            raise InvalidArgument(f"device {device}: unknown option(s) {unknown}; "
                                  f"the {self.plugin} plugin takes {self.names}")
        return {name: self._value(device, option, given.get(name)) for name, option in self.options.items()}

    @staticmethod
    def _value(device: str, option: Option, text: str | None) -> int | str | Path | None:
        if not text:  # device strings drop empty values; a mapping built by hand may still hold one
            return option.default
        if option.type is int:
            if not text.isdigit() or int(text) < 1:
                raise InvalidArgument(f"device {device}: {option.name} must be a positive integer, got {text!r}")
            return int(text)
        if option.type is Path:
            return Path(text)
        if option.choices and text not in option.choices:
            raise InvalidArgument(f"device {device}: {option.name} must be one of {list(option.choices)}, "
                                  f"got {text!r}")
        return text

    def describe(self) -> list[str]:
        """One line per option, for documentation and help texts."""
        lines = []
        for option in self.options.values():
            values = "|".join(option.choices) if option.choices else option.type.__name__
            default = "" if option.default is None else f" (default {option.default})"
            lines.append(f"{option.name}={values}{default}: {option.help}")
        return lines
