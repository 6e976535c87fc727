"""Building a configuration: layers of raw values (YAML files, overrides) merged, each value converted to its
field's type (or one :class:`ConfigError` sentence naming the key, the expected type and the source), then the
result checks itself. Generic over the dataclass tree, so the schema (:mod:`revjax.config_schema`) can build from
a mapping without importing :mod:`revjax.config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Mapping, Sequence

from revjax.config_checks import ConfigError


class Builder:
    """Accumulates raw values with the source each came from, then type-checks them into an instance of ``root``
    (a dataclass tree) and lets it check itself (``root.validate(sources)``)."""

    def __init__(self, root: type) -> None:
        self.root = root
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def merge(self, data: Mapping[str, Any], source: str, prefix: str = "") -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{prefix.rstrip('.') or 'the top level'} in {source} must be a mapping, got {data!r}")
        for key, value in data.items():
            path = f"{prefix}{key}"
            hint = field_type(self.root, path, source)
            if _dataclass_of(hint) is not None and isinstance(value, Mapping):
                self.merge(value, source, prefix=path + ".")
            else:
                self.values[path] = value
                self.sources[path] = source

    def build(self) -> Any:
        config = self.root()
        for path, raw in self.values.items():
            owner, name = _locate(config, path)
            hint = typing.get_type_hints(type(owner))[name]
            setattr(owner, name, _coerce(raw, hint, path, self.sources[path]))
        config.validate(self.sources)
        return config


def _dataclass_of(hint: Any) -> type | None:
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def field_type(root: type, path: str, source: str) -> Any:
    """The type hint of the key ``path`` (dotted) under ``root``; an unknown key raises, suggesting a close one."""
    cls: type = root
    parts = path.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            where = ".".join(parts[:i]) or "the top level"
            close = difflib.get_close_matches(part, list(hints), n=1)
            hint = f" (did you mean '{'.'.join(parts[:i] + close)}'?)" if close else ""
            raise ConfigError(f"unknown key '{path}' in {source}: {where} has no '{part}'{hint}")
        if i < len(parts) - 1:
            nested = _dataclass_of(hints[part])
            if nested is None:
                raise ConfigError(f"unknown key '{path}' in {source}: '{'.'.join(parts[: i + 1])}' is not a section")
            cls = nested
    return typing.get_type_hints(cls)[parts[-1]]


def _locate(config: Any, path: str) -> tuple[Any, str]:
    *sections, name = path.split(".")
    owner: Any = config
    for section in sections:
        owner = getattr(owner, section)
    return owner, name


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if _dataclass_of(hint) is not None or hint is dict:
        return "a mapping of keys"
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any, path: str, source: str) -> Any:
    """Convert a raw YAML/override value to the field's type, or raise a ConfigError naming it."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path, source)
            except ConfigError:
                pass
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(hint)
            return [_coerce(v, item, f"{path}[{i}]", source) for i, v in enumerate(value)]
    elif hint is dict:
        if isinstance(value, Mapping):
            return dict(value)
    elif origin is Literal:
        if value in typing.get_args(hint):
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{path} must be {_type_name(hint)}, got {value!r} in {source}")


def build(root: type, layers: Sequence[tuple[Mapping[str, Any], str]]) -> Any:
    """A checked, resolved ``root`` instance from ``(mapping, source)`` layers merged in order."""
    builder = Builder(root)
    for data, source in layers:
        builder.merge(data, source)
    return builder.build()
