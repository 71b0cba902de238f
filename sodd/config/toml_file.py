"""The daemon's TOML configuration file, read into the frozen objects of `sodd.config.schema`.

Layout (systemd/sodd.toml.example documents every key): top-level keys are `ServeConfig` fields,
each `[models.NAME]` table is one `ModelConfig` (the first table is the default model), and a field
holding a dataclass is a table of its own. The keys are the field names, so the file and the
objects cannot drift apart; a key the objects do not have is an error, never ignored, and every
error names the key (`models.visdrone.threshold: 1.5 is outside [0, 1]`). Relative paths are taken
from the file's directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sodd.config.schema import ModelConfig, ServeConfig
from sodd.errors import SoddError
from sodd.plugins.devices import DeviceSpec, parse_devices

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/sodd/sodd.toml")


class ConfigError(ValueError):
    """A configuration problem; the message starts with the key it concerns."""


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"{v} is below the minimum {low}"


def _above(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v > low else f"{v} must be above {low}"


def _within(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v <= high else f"{v} is outside [{low}, {high}]"


def _file_mode(v: int) -> str | None:
    return None if 0 <= v <= 0o777 else f"{v} is not a file mode; write it in octal, e.g. 0o660"


def _host_port(v: str) -> str | None:
    host, sep, port = v.rpartition(":")
    if v == "" or (sep and host and port.isdigit() and int(port) < 65536):
        return None
    return f"{v!r} is not HOST:PORT"


# Checks beyond the type, keyed by field name; the objects check again, these name the key.
CHECKS: dict[str, Callable[[Any], str | None]] = {
    "threshold": _within(0, 1),
    "max_batch_size": _at_least(1),
    "instances": _at_least(1),
    "max_queue_delay_seconds": _within(0, 10),
    "max_image_megapixels": _above(0),
    "max_request_megapixels": _above(0),
    "max_model_input_megapixels": _above(0),
    "max_message_bytes": _at_least(1024),
    "max_pending": _at_least(1),
    "preprocess_workers": _at_least(1),
    "max_stream_frames": _at_least(1),
    "max_streams": _at_least(1),
    "max_request_images": _at_least(1),
    "max_concurrent_rpcs": _at_least(1),
    "max_inference_calls": _at_least(1),
    "max_management_calls": _at_least(1),
    "max_health_watches": _at_least(1),
    "max_calls_per_peer": _at_least(1),
    "request_body_timeout_seconds": _above(0),
    "cpu_threads": _at_least(1),
    "drain_timeout_seconds": _at_least(0),
    "drain_grace_seconds": _at_least(0),
    "max_connection_age_seconds": _at_least(0),
    "max_connection_age_grace_seconds": _at_least(0),
    "unix_socket_mode": _file_mode,
    "listen": _host_port,
}
# Keys that the file spells differently from the objects: `[models.NAME]` supplies the name.
_IMPLIED = {ModelConfig: {"name"}}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def convert(value: Any, tp: Any, key: str, base_dir: Path) -> Any:
    """Check one TOML value against a field's type hint and turn it into the field's type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        choices = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(choices) != 1:
            raise ConfigError(f"{key}: the file cannot set a field of type {tp}")
        return convert(value, choices[0], key, base_dir)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, typing.get_args(tp)))}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty path string, got {value!r}")
        path = Path(value)
        return path if path.is_absolute() else base_dir / path
    if origin is tuple and typing.get_args(tp)[:1] == (DeviceSpec,):
        text = ",".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else value
        if not isinstance(text, str):
            raise ConfigError(f"{key}: expected a device list such as \"npu:0,cpu\", got {value!r}")
        try:
            return parse_devices(text)
        except SoddError as exc:
            raise ConfigError(f"{key}: {exc.message}") from exc
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type, *_) = typing.get_args(tp)
        return tuple(convert(v, item_type, f"{key}[{i}]", base_dir) for i, v in enumerate(value))
    parse = getattr(tp, "parse", None)
    if callable(parse) and isinstance(value, str):  # value types with a text form: VersionPolicy.parse("latest:2")
        try:
            return parse(value)
        except (ValueError, SoddError) as exc:
            raise ConfigError(f"{key}: {getattr(exc, 'message', exc)}") from exc
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {'a string or ' if callable(parse) else ''}a table, got {value!r}")
        return build(tp, value, key, base_dir)
    raise ConfigError(f"{key}: the file cannot set a field of type {_type_name(tp)}")


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _update(default: Any, table: Any, key: str, base_dir: Path) -> Any:
    """A dataclass-valued field set by a table: the keys given replace the default object's fields."""
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: expected a table, got {table!r}")
    try:
        return dataclasses.replace(default, **convert_fields(type(default), table, f"{key}.", base_dir))
    except (ValueError, SoddError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{key}: {getattr(exc, 'message', exc)}") from exc


def convert_fields(cls: type, table: Mapping[str, Any], prefix: str, base_dir: Path) -> dict[str, Any]:
    """Convert and check every key of `table` as a field of `cls`; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in _IMPLIED.get(cls, set())}
    known = list(fields)
    out: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{key}: unknown key{hint}")
        default = _default_of(fields[name])
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            converted = _update(default, value, key, base_dir)
        else:
            converted = convert(value, hints[name], key, base_dir)
        check = CHECKS.get(name)
        problem = check(converted) if check and isinstance(converted, (int, float, str)) else None
        if problem:
            raise ConfigError(f"{key}: {problem}")
        out[name] = converted
    return out


def build(cls: type, table: Mapping[str, Any], key: str, base_dir: Path, **implied: Any) -> Any:
    """A dataclass from a table; fields the table leaves out keep their defaults."""
    values = convert_fields(cls, table, f"{key}.", base_dir)
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in values and f.name not in implied
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{key}.{missing[0]}: required key is missing")
    try:
        return cls(**implied, **values)
    except (ValueError, SoddError) as exc:
        raise ConfigError(f"{key}: {getattr(exc, 'message', exc)}") from exc


def _models(value: Any, base_dir: Path) -> tuple[ModelConfig, ...]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError("models: expected [models.NAME] tables, e.g. [models.visdrone] with path = \"...\"")
    return tuple(build(ModelConfig, table, f"models.{name}", base_dir, name=name) for name, table in value.items())


def parse_config(text: str, base_dir: Path, source: str = "config") -> dict[str, Any]:
    """The ServeConfig fields a file sets, converted and checked; not yet a ServeConfig, so flags can override."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    values = convert_fields(ServeConfig, {k: v for k, v in data.items() if k != "models"}, "", base_dir)
    if "models" in data:
        values["models"] = _models(data["models"], base_dir)
    return values


def read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    return parse_config(text, path.parent, str(path))


def make_config(values: Mapping[str, Any]) -> ServeConfig:
    """The final object; its own checks name the key in their messages."""
    try:
        return ServeConfig(**{"models": (), **values})
    except (ValueError, SoddError) as exc:
        raise ConfigError(str(getattr(exc, "message", exc))) from exc
