"""Typed configuration: one schema for every part of a run, loaded from YAML with command-line overrides.

A run's configuration is a tree of dataclasses (:class:`Config`, defined in :mod:`revjax.config_schema` and
importable from here). It is built from zero or more YAML files (merged in order; a file may ``include:`` others,
paths relative to itself) and ``key.sub=value`` overrides, then validated and resolved (model dimensions from ``model.depth``, vocabulary size from the tokenizer).
Every error is one sentence naming the key, the value and where it came from.

The resolved configuration serialises to YAML/JSON (:meth:`Config.to_dict`) and loads back equal.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from revjax.yamlio import load_yaml, safe_load
from revjax.config_schema import (  # noqa: F401  (re-exported: the schema is part of this module's API)
    AUTO_ITERATIONS, DEFAULT_DEPTH, FINEWEB_SHARDS, ChainConfig, CheckpointConfig, Config, ConfigError, DataConfig,
    DirectionConfig, DirectionName, Dtype, LoggingConfig, MeshConfig, ModelConfig, OptimizerConfig, RLConfig,
    ScheduleConfig, TasksConfig, TokenizerConfig, TrainingConfig, dims_from_depth,
)
from revjax.memory import MAX_DIMS


# ---- building ----------------------------------------------------------------------------------------------


class _Builder:
    """Accumulates raw values with the source each came from, then type-checks them into a Config."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def merge(self, data: Mapping[str, Any], source: str, prefix: str = "") -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{prefix.rstrip('.') or 'the top level'} in {source} must be a mapping, got {data!r}")
        for key, value in data.items():
            path = f"{prefix}{key}"
            field_type = _field_type(path, source)
            if _dataclass_of(field_type) is not None and isinstance(value, Mapping):
                self.merge(value, source, prefix=path + ".")
            else:
                self.values[path] = value
                self.sources[path] = source

    def build(self) -> Config:
        config = Config()
        for path, raw in self.values.items():
            owner, name = _locate(config, path)
            hint = typing.get_type_hints(type(owner))[name]
            setattr(owner, name, _coerce(raw, hint, path, self.sources[path]))
        _resolve_and_validate(config, self.sources)
        return config


def _dataclass_of(hint: Any) -> type | None:
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _field_type(path: str, source: str) -> Any:
    cls: type = Config
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


def _locate(config: Config, path: str) -> tuple[Any, str]:
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


def _resolve_and_validate(config: Config, sources: Mapping[str, str]) -> None:
    def where(*keys: str) -> str:
        found = [sources[k] for k in keys if k in sources]
        return found[0] if found else "the defaults"

    def fail(keys: Sequence[str], message: str) -> None:
        raise ConfigError(f"{message} (from {where(*keys)})")

    m = config.model
    if m.depth is None and all(getattr(m, k) is None for k in ("n_layer", "n_head", "n_kv_head", "n_embd")):
        m.depth = DEFAULT_DEPTH
    if m.depth is not None:
        if m.depth < 1:
            fail(["model.depth"], f"model.depth={m.depth} must be at least 1")
        if m.depth > MAX_DIMS["n_layer"]:
            fail(["model.depth"], f"model.depth={m.depth:,} is above the largest depth revjax builds "
                                  f"({MAX_DIMS['n_layer']:,}); lower it")
        for key, value in dims_from_depth(m.depth).items():
            current = getattr(m, key)
            if current is None:
                setattr(m, key, value)
            elif key != "n_kv_head" and current != value:
                fail(
                    [f"model.{key}", "model.depth"],
                    f"model.{key}={current} disagrees with model.depth={m.depth}, which gives {key}={value}; "
                    "set either the depth or the explicit dimensions",
                )
    if m.vocab_size is None:
        m.vocab_size = config.tokenizer.vocab_size
    missing = [k for k in ("n_layer", "n_head", "n_embd") if getattr(m, k) is None]
    if missing:
        fail([], f"model.{missing[0]} is not set; give model.depth or all of model.n_layer/n_head/n_embd")
    if m.n_kv_head is None:
        m.n_kv_head = m.n_head
    for key in ("n_layer", "n_head", "n_kv_head", "n_embd", "vocab_size", "sequence_len"):
        if getattr(m, key) < 1:
            fail([f"model.{key}"], f"model.{key}={getattr(m, key)} must be positive")
        if getattr(m, key) > MAX_DIMS[key]:
            fail([f"model.{key}"], f"model.{key}={getattr(m, key):,} is above the largest {key} revjax builds "
                                   f"({MAX_DIMS[key]:,}); lower it")
    if m.n_embd % m.n_head:
        fail(["model.n_embd", "model.n_head", "model.depth"],
             f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}")
    if m.n_head % m.n_kv_head:
        fail(["model.n_kv_head", "model.n_head"],
             f"model.n_head={m.n_head} is not divisible by model.n_kv_head={m.n_kv_head}")
    if m.head_dim % 2:
        fail(["model.n_embd", "model.n_head"], f"the head size n_embd/n_head={m.head_dim} must be even for rotary")
    if m.loss_chunk < 0:
        fail(["model.loss_chunk"], f"model.loss_chunk={m.loss_chunk} must be a number of tokens, or 0 (plain path)")
    if m.vocab_size != config.tokenizer.vocab_size:
        fail(["model.vocab_size", "tokenizer.vocab_size"],
             f"model.vocab_size={m.vocab_size} differs from tokenizer.vocab_size={config.tokenizer.vocab_size}")
    if config.tokenizer.vocab_size < 256 + 11:
        fail(["tokenizer.vocab_size"],
             f"tokenizer.vocab_size={config.tokenizer.vocab_size} must be at least 267 (256 bytes + 11 specials)")

    name = config.run_name
    if not name.strip() or name in (".", "..") or any(sep in name for sep in ("/", "\\")):
        fail(["run_name"], f"run_name={name!r} must be a plain folder name (not empty, no path separators): "
                           "it names the run's folder under <base_dir>/checkpoints")

    t = config.training
    if t.num_iterations < 1 and t.num_iterations != AUTO_ITERATIONS:
        fail(["training.num_iterations"],
             f"training.num_iterations={t.num_iterations} must be a positive number of steps, or {AUTO_ITERATIONS} "
             "to derive it from training.target_flops or training.target_param_data_ratio")
    if t.device_batch_size < 1:
        fail(["training.device_batch_size"], f"training.device_batch_size={t.device_batch_size} must be positive")
    if t.total_batch_tokens < 1 or t.total_batch_tokens % m.sequence_len:
        fail(["training.total_batch_tokens", "model.sequence_len"],
             f"training.total_batch_tokens={t.total_batch_tokens} must be a positive multiple of "
             f"model.sequence_len={m.sequence_len}")

    s = config.schedule
    for key in ("warmup_ratio", "warmdown_ratio", "final_lr_frac"):
        value = getattr(s, key)
        if not 0.0 <= value <= 1.0:
            fail([f"schedule.{key}"], f"schedule.{key}={value} must be between 0 and 1")
    if s.warmup_ratio + s.warmdown_ratio > 1.0:
        fail(["schedule.warmup_ratio", "schedule.warmdown_ratio"],
             f"schedule.warmup_ratio + schedule.warmdown_ratio = {s.warmup_ratio + s.warmdown_ratio} exceeds 1")

    o = config.optimizer
    for key in ("matrix_lr", "embedding_lr", "unembedding_lr", "adam_eps"):
        if not getattr(o, key) > 0 or not math.isfinite(getattr(o, key)):
            fail([f"optimizer.{key}"], f"optimizer.{key}={getattr(o, key)} must be a positive number")
    for key in ("adam_beta1", "adam_beta2", "muon_momentum", "muon_momentum_start"):
        if not 0.0 <= getattr(o, key) < 1.0:
            fail([f"optimizer.{key}"], f"optimizer.{key}={getattr(o, key)} must be in [0, 1)")

    for key in ("data", "fsdp", "tensor"):
        value = getattr(config.mesh, key)
        if value == 0 or value < -1:
            fail([f"mesh.{key}"], f"mesh.{key}={value} must be a positive size or -1 (fill the remaining devices)")
    if config.data.packing_buffer < 1:
        fail(["data.packing_buffer"], f"data.packing_buffer={config.data.packing_buffer} must be a positive number")
    for key in ("packing", "val_packing"):
        if config.direction.layout == "compat" and getattr(config.data, key) != "stream":
            fail([f"data.{key}"], f"data.{key}={getattr(config.data, key)} needs direction.layout=document (compat "
                 "packs onanchat's stream)")
    if config.logging.log_every < 1:
        fail(["logging.log_every"], f"logging.log_every={config.logging.log_every} must be a positive number of steps")
    for key in ("hdf5_every", "hdf5_layers_every"):
        if getattr(config.logging, key) < 0:
            fail([f"logging.{key}"], f"logging.{key}={getattr(config.logging, key)} must be a number of steps, or 0")
    if config.checkpoint.keep < 1:
        fail(["checkpoint.keep"], f"checkpoint.keep={config.checkpoint.keep} must be at least 1")
    if not 2 <= config.data.fineweb_shards <= FINEWEB_SHARDS:
        fail(["data.fineweb_shards"],
             f"data.fineweb_shards={config.data.fineweb_shards} must be between 2 (one train and one val shard) and "
             f"{FINEWEB_SHARDS}, the number of FineWeb-Edu shards")
    if config.data.corpus == "parquet" and not config.data.dir:
        fail(["data.corpus"], "data.corpus=parquet needs data.dir, the folder holding shard_*.parquet files")


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
    builder = _Builder()
    for data, source in layers:
        builder.merge(data, source)
    return builder.build()


def load_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Config:
    """Build a validated, resolved Config from YAML files (merged in order) and key=value overrides."""
    layers = [layer for file in files for layer in _read_yaml(Path(file))]
    for text in overrides:
        key, value = parse_override(text)
        source = f"the command line ('{text}')"
        _field_type(key, source)
        layers.append((_nest(key, value), source))
    return build_config(layers)


def _nest(key: str, value: Any) -> dict[str, Any]:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value
