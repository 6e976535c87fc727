"""Typed configuration: one schema for every part of a run, loaded from YAML with command-line overrides.

A run's configuration is a tree of dataclasses (:class:`Config`, defined in :mod:`revjax.config_schema` and
importable from here). It is built from zero or more YAML files (merged in order; a file may ``include:`` others,
paths relative to itself) and ``key.sub=value`` overrides, then validated and resolved (model dimensions from ``model.depth``, vocabulary size from the tokenizer).
Every error is one sentence naming the key, the value and where it came from.

The resolved configuration serialises to YAML/JSON (:meth:`Config.to_dict`) and loads back equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from revjax.yamlio import load_yaml, safe_load
from revjax.config_schema import (  # noqa: F401  (re-exported: the schema is part of this module's API)
    AUTO_ITERATIONS, DEFAULT_DEPTH, FINEWEB_SHARDS, ChainConfig, CheckpointConfig, Config, ConfigError, DataConfig,
    DirectionConfig, DirectionName, Dtype, LoggingConfig, MeshConfig, ModelConfig, OptimizerConfig, RLConfig,
    ScheduleConfig, TasksConfig, TokenizerConfig, TrainingConfig, dims_from_depth,
)
from revjax.config_build import build, field_type


# ---- loading -----------------------------------------------------------------------------------------------


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[dict[str, Any], str]]:
    """Read one YAML file and the files it includes, as (mapping, source) pairs in merge order."""
    path = path.expanduser().resolve()
    if path in seen:
        raise ConfigError(f"config file {path} includes itself through {' -> '.join(map(str, seen))}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the path given to --config")
    try:
        data = load_yaml(path, f"config file {path}", ConfigError) or {}
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read ({err.strerror}); check its permissions") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    includes = data.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    layers: list[tuple[dict[str, Any], str]] = []
    for inc in includes:
        layers += _read_yaml(path.parent / inc, seen + (path,))
    layers.append((data, str(path)))
    return layers


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.sub=value`` and parse the value as YAML (so numbers, booleans and null work)."""
    key, sep, raw = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    try:
        value = safe_load(raw, f"override '{text}'", ConfigError) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def build_config(layers: Sequence[tuple[Mapping[str, Any], str]]) -> Config:
    """A validated, resolved Config from ``(mapping, source)`` layers merged in order."""
    return build(Config, layers)


def load_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Config:
    """Build a validated, resolved Config from YAML files (merged in order) and key=value overrides."""
    layers = [layer for file in files for layer in _read_yaml(Path(file))]
    for text in overrides:
        key, value = parse_override(text)
        source = f"the command line ('{text}')"
        field_type(Config, key, source)
        layers.append((_nest(key, value), source))
    return build_config(layers)


def _nest(key: str, value: Any) -> dict[str, Any]:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value
