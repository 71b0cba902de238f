"""The daemon's TOML configuration file, read into the objects of `sodd.config.schema`.

Layout (docs/configuration.md lists every key; systemd/sodd.toml.example shows them): top-level keys
are `ServeConfig` settings, each `[models.NAME]` table is one `ModelConfig` (the first table is the
default model), and `[repository_defaults]` holds `ModelConfig` keys for the repository's models.
The keys are the settings' names and pydantic checks the values against their declarations, so the
file and the objects cannot drift apart; a key the schema does not have is an error, never ignored,
and every error names the key (`models.visdrone.threshold: input should be less than or equal to 1,
got 1.5`). Relative paths are taken from the file's directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from sodd.config.schema import REPOSITORY_MODELS, ModelConfig, ServeConfig, repository_model_defaults, settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/sodd/sodd.toml")


class ConfigError(ValueError):
    """A configuration problem; the message starts with the key it concerns."""


def _message(error: Mapping[str, Any]) -> str:
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    if error["type"] in ("missing", "missing_argument"):
        return "required key is missing"
    text = error["msg"][:1].lower() + error["msg"][1:]
    return f"{text}, got {error['input']!r}"


def describe(exc: ValidationError, prefix: str = "", known: list[str] | None = None) -> str:
    """pydantic's errors as lines that start with the key: `prefix` plus the error's location."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"])
        key = ".".join(part for part in (prefix, loc) if part)
        if error["type"] == "unexpected_keyword_argument":
            near = difflib.get_close_matches(str(error["loc"][-1]), known or [], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(sorted(known or []))}"
            lines.append(f"{key}: unknown key{hint}")
        else:
            lines.append(f"{key}: {_message(error)}" if key else _message(error))
    return "\n".join(lines)


def _keys(cls: type) -> list[str]:
    """The keys a table of `cls` may hold: its settings but the name the table supplies."""
    return [s.name for s in settings(cls) if not (cls is ModelConfig and s.name == "name")]


def _check_keys(cls: type, table: Mapping[str, Any], prefix: str) -> None:
    known = _keys(cls)
    for name in table:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{prefix}{name}: unknown key{hint}")


def _resolve_paths(cls: type, table: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """Relative path strings taken from the file's directory; anything else is left to the checks."""
    paths = {s.name for s in settings(cls) if s.base is Path}
    return {k: str(base_dir / v) if k in paths and isinstance(v, str) and v and not Path(v).is_absolute() else v
            for k, v in table.items()}


def _model(table: Any, key: str, base_dir: Path, base: ModelConfig | None = None, **implied: Any) -> ModelConfig:
    """A ModelConfig from a table: the table's keys over `base`'s values, or over the defaults."""
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: expected a table, got {table!r}")
    _check_keys(ModelConfig, table, f"{key}.")
    values = _resolve_paths(ModelConfig, table, base_dir)
    try:
        return dataclasses.replace(base, **values) if base is not None else ModelConfig(**implied, **values)
    except ValidationError as exc:
        raise ConfigError(describe(exc, key, _keys(ModelConfig))) from exc


@functools.cache
def _checker(name: str) -> TypeAdapter:
    """One ServeConfig setting's own checks, for a file that is only part of the configuration."""
    field = ServeConfig.__pydantic_fields__[name]  # type: ignore[attr-defined]
    return TypeAdapter(Annotated[field.annotation, field], config=ConfigDict(strict=True, allow_inf_nan=False,
                                                                             arbitrary_types_allowed=True))


def parse_config(text: str, base_dir: Path, source: str = "config") -> dict[str, Any]:
    """The ServeConfig settings a file sets, each converted and checked on its own: not yet a
    ServeConfig, so that flags can override them before the checks across settings run."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    _check_keys(ServeConfig, data, "")
    values: dict[str, Any] = {}
    for name, value in _resolve_paths(ServeConfig, data, base_dir).items():
        if name == "models":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError("models: expected [models.NAME] tables, e.g. [models.visdrone] with path = \"...\"")
            values[name] = tuple(_model(table, f"models.{model}", base_dir, name=model)
                                 for model, table in value.items())
        elif name == "repository_defaults":
            values[name] = _model(value, name, base_dir, base=repository_model_defaults())
        else:
            try:
                values[name] = _checker(name).validate_python(value)
            except ValidationError as exc:
                raise ConfigError(describe(exc, name)) from exc
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
    """The final object, after the checks across settings; errors name the keys."""
    try:
        return ServeConfig(**values)
    except ValidationError as exc:
        raise ConfigError(describe(exc, "", _keys(ServeConfig))) from exc


def _model_key(name: str) -> str:
    return "repository_defaults" if name == REPOSITORY_MODELS else f"models.{name}"


def model_config(name: str, values: Mapping[str, Any]) -> ModelConfig:
    """A ModelConfig from settings given by flags; errors name the model's keys."""
    try:
        return ModelConfig(name=name, **values)
    except ValidationError as exc:
        raise ConfigError(describe(exc, _model_key(name), _keys(ModelConfig))) from exc


def update_model(model: ModelConfig, changes: Mapping[str, Any]) -> ModelConfig:
    """`model` with `changes` (flags over the file), checked again; errors name the model's keys."""
    try:
        return dataclasses.replace(model, **changes)
    except ValidationError as exc:
        raise ConfigError(describe(exc, _model_key(model.name), _keys(ModelConfig))) from exc
