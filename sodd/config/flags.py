"""The `sodd serve` flags that set settings, generated from sodd.config.schema.

Each setting declared with a flag gets one here, with the setting's help and default. Flags default
to None (or an empty list) so that only the flags actually given override the configuration file.
Three shapes: a ServeConfig setting (`--max-pending 8`); a ModelConfig setting for every served
model (`--max-batch-size 4`); and a ModelConfig setting per model (`--threshold visdrone=0.4`,
repeatable, NAME * for the repository's models).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from sodd.config.schema import REPOSITORY_MODELS, ModelConfig, ServeConfig, Setting, settings
from sodd.config.toml_file import ConfigError

# A flag's unit -> (flag value to setting value, setting value to flag value).
UNITS: dict[str, tuple[Callable[[float], Any], Callable[[Any], float]]] = {
    "ms": (lambda ms: ms / 1000, lambda seconds: seconds * 1000),
    "MiB": (lambda mib: int(mib * 1024 * 1024), lambda size: size / (1024 * 1024)),
}


def flagged() -> list[Setting]:
    return [s for cls in (ServeConfig, ModelConfig) for s in settings(cls) if s.flag is not None]


def dest(setting: Setting) -> str:
    assert setting.flag is not None
    return setting.flag.removeprefix("--").replace("-", "_")


def _flag_default(setting: Setting) -> str:
    if setting.default is None or setting.default is dataclasses.MISSING:
        return ""
    if setting.flag_unit is not None:
        return f"{UNITS[setting.flag_unit][1](setting.default):g}"
    if isinstance(setting.default, float):
        return f"{setting.default:g}"
    return setting.shown_default().strip('"')


def flag_help(setting: Setting) -> str:
    notes = [f"in {setting.flag_unit}"] if setting.flag_unit is not None else []
    if setting.owner is ModelConfig:
        notes.append(f"NAME is a served model, {REPOSITORY_MODELS} the repository's; repeatable"
                     if setting.per_model else "every model")
    shown = _flag_default(setting)
    if shown and setting.base is not bool:  # a switch is off unless given
        notes.append(f"default {shown}")
    text = f"{setting.help} ({'; '.join(notes)})" if notes else setting.help
    return text.replace("%", "%%")  # argparse formats help with %


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for s in flagged():
        kwargs: dict[str, Any] = {"dest": dest(s), "help": flag_help(s)}
        if s.per_model:
            value = "" if s.base is bool else f"={s.metavar or 'VALUE'}"
            kwargs |= {"action": "append", "default": [], "metavar": f"NAME{value}"}
        elif s.base is bool:
            # A setting off by default is a switch; one whose default is "it depends" can be forced either way.
            kwargs |= {"action": "store_true" if s.default is False else argparse.BooleanOptionalAction,
                       "default": None}
        elif typing.get_origin(s.base) is typing.Literal:
            kwargs |= {"choices": typing.get_args(s.base), "default": None}
        else:
            kind = float if s.flag_unit is not None else s.base if s.base in (int, float) else str
            kwargs |= {"type": kind, "default": None, "metavar": s.metavar}
        parser.add_argument(s.flag, **kwargs)


@dataclasses.dataclass(frozen=True)
class FlagValues:
    """What the given flags set: ServeConfig settings, settings of every model, and per model name."""

    serve: dict[str, Any]
    every_model: dict[str, Any]
    per_model: dict[str, dict[str, Any]]


def _per_model_value(setting: Setting, text: str) -> Any:
    if setting.base in (int, float):
        try:
            return setting.base(text)
        except ValueError:
            raise ConfigError(f"{setting.flag}: {text!r} is not a number") from None
    return text


def flag_values(args: argparse.Namespace) -> FlagValues:
    serve: dict[str, Any] = {}
    every_model: dict[str, Any] = {}
    per_model: dict[str, dict[str, Any]] = {}
    for s in flagged():
        given = getattr(args, dest(s))
        if s.per_model:
            for item in given:
                if s.base is bool:
                    name, value = item, True
                else:
                    name, sep, text = item.partition("=")
                    if not sep or not name or not text:
                        raise SystemExit(f"sodd serve: {s.flag} expects NAME={s.metavar or 'VALUE'}, got {item!r}")
                    value = _per_model_value(s, text)
                per_model.setdefault(name, {})[s.name] = value
        elif given is not None:
            value = UNITS[s.flag_unit][0](given) if s.flag_unit is not None else given
            (serve if s.owner is ServeConfig else every_model)[s.name] = value
    return FlagValues(serve, every_model, per_model)
