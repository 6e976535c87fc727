"""Typed configuration: one schema for every part of a run, loaded from YAML with command-line overrides.

A run's configuration is a tree of dataclasses (:class:`Config`). It is built from zero or more YAML files
(merged in order; a file may ``include:`` others, paths relative to itself) and ``key.sub=value`` overrides,
then validated and resolved (model dimensions from ``model.depth``, vocabulary size from the tokenizer).
Every error is one sentence naming the key, the value and where it came from.

The resolved configuration serialises to YAML/JSON (:meth:`Config.to_dict`) and loads back equal.
"""

from __future__ import annotations

from revjax.errors import RevjaxError
from revjax.phases import PhaseName
import dataclasses
import difflib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

Dtype = Literal["float32", "bfloat16"]
DirectionName = Literal["forward", "backward", "bidirectional"]
DEFAULT_DEPTH = 20
FINEWEB_SHARDS = 1823  # karpathy/fineweb-edu-100b-shuffle: shard_00000 … shard_01822
AUTO_ITERATIONS = -1  # training.num_iterations: derive the step count from target_flops or the data:param ratio


class ConfigError(RevjaxError, ValueError):
    """A configuration problem, described in one sentence."""

    exit_code = 2


@dataclass(unsafe_hash=True)  # hashable: the model keeps it as static structure in compiled functions
class ModelConfig:
    """The GPT (onanchat's six GPTConfig fields, the depth rule, and compute options)."""

    depth: int | None = None  # fills unset n_layer / n_embd / n_head / n_kv_head by nanochat's depth rule; 20 if no size is given
    sequence_len: int = 2048
    vocab_size: int | None = None  # None: taken from the tokenizer
    n_layer: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None
    n_embd: int | None = None
    compute_dtype: Dtype = "bfloat16"
    # auto: cuDNN flash attention on GPU in bf16, Pallas splash attention on TPU, XLA elsewhere
    attention: Literal["auto", "xla", "cudnn", "splash"] = "auto"
    # recompute in the backward pass: none, all but the matmuls ("dots"), everything ("full"); true/false (older
    # configs) mean full/none
    remat: Literal["none", "dots", "full"] | bool = "none"
    scan_layers: bool = False  # one compiled block run L times by lax.scan (compile time flat in depth)
    loss_chunk: int = 4096  # tokens of logits at a time in the fused cross-entropy; 0: the plain full-logits path

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def gpt_config(self) -> dict[str, int]:
        """The six keys of onanchat's GPTConfig, as stored in its checkpoint metadata."""
        return {
            "sequence_len": self.sequence_len,
            "vocab_size": self.vocab_size,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_kv_head": self.n_kv_head,
            "n_embd": self.n_embd,
        }


def dims_from_depth(depth: int) -> dict[str, int]:
    """nanochat's depth rule: width 64·depth, heads of (about) 128 dims, no GQA."""
    n_embd = depth * 64
    n_head = max(1, (n_embd + 127) // 128)
    return {"n_layer": depth, "n_embd": n_embd, "n_head": n_head, "n_kv_head": n_head}


@dataclass
class TokenizerConfig:
    vocab_size: int = 65536
    dir: str | None = None  # None: <base_dir>/tokenizer
    max_chars: int = 2_000_000_000
    doc_cap: int = 10_000
    token_bytes: Literal["decode", "raw"] = "decode"


@dataclass
class DataConfig:
    corpus: Literal["default", "fineweb", "parquet"] = "default"
    dir: str | None = None  # None: <base_dir>/data/<corpus>; required for corpus=parquet ({base_dir}/... allowed)
    fineweb_shards: int = 240  # the first N FineWeb-Edu shards, 2..FINEWEB_SHARDS (the last one is val)
    fineweb_url: str | None = None
    tokenizer_threads: int = 4
    tokenizer_batch_size: int = 128
    slices: int = 0  # disjoint document slices of the corpus (0: one per process); fixing it keeps the batches
    # identical whatever the process count, as long as the count divides it
    # where base rows start (revjax.data.packing): stream (cut anywhere), marked (a row inside a document repeats
    # its BOS and direction token), bos_aligned (whole documents best-fit, each row starts with BOS); val: the same
    # choices for the validation split, kept apart so that runs trained with any packing are measured alike
    packing: Literal["stream", "marked", "bos_aligned"] = "stream"
    val_packing: Literal["stream", "marked", "bos_aligned"] = "stream"
    packing_buffer: int = 1000  # documents that bos_aligned packing chooses from


@dataclass
class DirectionConfig:
    direction: DirectionName = "forward"
    layout: Literal["document", "compat"] = "document"  # compat: onanchat's micro-batch layouts
    conversation: Literal["sequence", "turn"] = "sequence"
    # conversations' loss mask: "generated" supervises what the model writes in its mode (sequence-backward: the
    # user turns, else the assistant's); "assistant" is onanchat's assistant-only mask
    loss_mask: Literal["generated", "assistant"] = "generated"
    seed: int = 0  # per-document direction choice in bidirectional mode


def _default_train_tasks() -> list:
    return [{"task": "arithmetic", "size": 4000}, {"task": "simple-spelling", "size": 1000},
            {"task": "spelling-bee", "size": 1000}, {"task": "identity", "size": 500}, {"task": "chatterbot"}]


def _default_val_tasks() -> list:
    return [{"task": "arithmetic", "split": "test", "size": 200}, {"task": "spelling-bee", "split": "test", "size": 100},
            {"task": "identity", "split": "test", "size": 50}]


@dataclass
class TasksConfig:
    """Conversation mixtures (revjax.tasks entries: a task name or {task: NAME, split, size, limit, repeat, …})."""

    train: list[str | dict] = field(default_factory=_default_train_tasks)  # mid and SFT training data
    val: list[str | dict] = field(default_factory=_default_val_tasks)  # mid and SFT validation loss
    rl: list[str | dict] = field(default_factory=lambda: [{"task": "arithmetic", "size": 4000}])  # RL prompts
    rl_val: list[str | dict] = field(default_factory=lambda: [{"task": "arithmetic", "split": "test", "size": 64}])
    seed: int = 42  # mixture order
    cache_dir: str | None = None  # None: <base_dir>/tasks


@dataclass
class RLConfig:
    """nanochat's simplified GRPO: per prompt, ``num_samples`` sampled replies; advantage = reward − the prompt's
    mean reward; a policy-gradient loss on the sampled tokens only."""

    num_samples: int = 16  # replies per prompt (the group the advantage is centred on)
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 50  # 0: no top-k cut
    eval_prompts: int = 32  # prompts of tasks.rl_val for pass@k
    eval_samples: int = 4  # k of pass@k


@dataclass
class ChainConfig:
    """``revjax chain``: the phases to run in order, and each phase's overrides (``{key.sub: value}``) on top of
    the run's config and the phase's own file ``configs/phase/<phase>.yaml``."""

    phases: list[PhaseName] = field(default_factory=lambda: ["base", "mid", "sft", "rl"])
    base: dict = field(default_factory=dict)
    mid: dict = field(default_factory=dict)
    sft: dict = field(default_factory=dict)
    rl: dict = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    matrix_lr: float = 0.02
    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    weight_decay: float = 0.0
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    adam_eps: float = 1e-10
    muon_momentum: float = 0.95
    muon_momentum_start: float = 0.85
    muon_momentum_warmup_steps: int = 300
    ns_steps: int = 5
    ns_dtype: Dtype = "bfloat16"  # Newton–Schulz precision: nanochat's bf16, or fp32 for exactness checks
    grad_clip: float = 1.0  # 0 disables


@dataclass
class ScheduleConfig:
    warmup_ratio: float = 0.0
    warmdown_ratio: float = 0.2
    final_lr_frac: float = 0.0
    init_lr_frac: float = 1.0


@dataclass
class TrainingConfig:
    phase: PhaseName = "base"
    num_iterations: int = AUTO_ITERATIONS  # -1: from target_flops, else from target_param_data_ratio
    target_flops: float = -1.0
    target_param_data_ratio: float = 20.0
    total_batch_tokens: int = 524_288
    device_batch_size: int = 32
    eval_every: int = 250
    eval_tokens: int = 20 * 524_288
    sample_every: int = 2000
    # per-direction val bpb and the in-context suite every N steps (nanochat's core_metric_every; -1: never):
    # core_suite offline (the OLMo-offline suite) or core (CORE, its bundle under the base dir), capped at
    # core_max_per_task examples per task (-1: all)
    core_every: int = -1
    core_suite: Literal["offline", "core"] = "offline"
    core_max_per_task: int = 500
    seed: int = 42
    init_from: str | None = None  # checkpoint to start from (mid/SFT/RL)


@dataclass
class MeshConfig:
    data: int = -1  # -1 fills the remaining devices
    fsdp: int = 1
    tensor: int = 1


@dataclass
class CheckpointConfig:
    dir: str | None = None  # None: <base_dir>/checkpoints/<run_name>
    save_every: int = -1  # -1: only at the end
    keep: int = 2
    force: bool = False  # continue a checkpoint even if its direction, tokenizer or model differs
    resume_step: int = -1  # -1: the newest intact step; else continue from this step (newer steps are set aside)
    start_over: bool = False  # set every existing step aside and train from step 0


@dataclass
class LoggingConfig:
    wandb: Literal["disabled", "offline", "online"] = "disabled"
    project: str = "revjax"
    log_every: int = 10
    hdf5: bool = False  # the research log <run>/research.h5 (revjax/tracking/hdf5.py): every step's scalars
    hdf5_every: int = 50  # per-token loss statistics and loss/accuracy by position every N steps (0: never)
    hdf5_layers_every: int = 50  # gradient norms per group and layer, activation RMS per layer every M steps (0: never)
    progress: bool = True


@dataclass
class Config:
    run_name: str = "revjax"
    base_dir: str | None = None  # None: $REVJAX_BASE_DIR or ~/.cache/revjax
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    direction: DirectionConfig = field(default_factory=DirectionConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)

    # ---- paths ---------------------------------------------------------------------------------------------
    def base_path(self) -> Path:
        if self.base_dir:
            return Path(self.base_dir).expanduser()
        return Path(os.environ.get("REVJAX_BASE_DIR", "~/.cache/revjax")).expanduser()

    def resolve(self, path: str) -> Path:
        """A configured folder as a path: ``{base_dir}`` stands for the base dir, ``~`` for the home folder."""
        return Path(path.replace("{base_dir}", str(self.base_path()))).expanduser()

    def tokenizer_path(self) -> Path:
        return self.resolve(self.tokenizer.dir) if self.tokenizer.dir else self.base_path() / "tokenizer"

    def tasks_path(self) -> Path:
        return self.resolve(self.tasks.cache_dir) if self.tasks.cache_dir else self.base_path() / "tasks"

    def data_path(self) -> Path:
        return self.resolve(self.data.dir) if self.data.dir else self.base_path() / "data" / self.data.corpus

    def checkpoint_path(self) -> Path:
        if self.checkpoint.dir:
            return self.resolve(self.checkpoint.dir)
        return self.base_path() / "checkpoints" / self.run_name

    # ---- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_absolute_paths(self) -> "Config":
        """A copy whose folders are absolute (what checkpoints store, so the run reads the same files from any
        working directory); ``base_dir`` is resolved from REVJAX_BASE_DIR or the home default when unset."""
        data = self.to_dict()
        data["base_dir"] = str(self.base_path().resolve())
        for section, key in (("data", "dir"), ("tokenizer", "dir"), ("checkpoint", "dir"), ("tasks", "cache_dir"),
                             ("training", "init_from")):
            if data[section][key]:
                data[section][key] = str(self.resolve(data[section][key]).resolve())
        return Config.from_dict(data, source="the resolved configuration")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "Config":
        builder = _Builder()
        builder.merge(data, source)
        return builder.build()


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (PyYAML alone keeps the last silently)."""

    source: Path

    @classmethod
    def load(cls, path: Path) -> Any:
        loader = cls(path.read_text())
        loader.source = path
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in lines:
                raise ConfigError(
                    f"config file {self.source} sets the key '{key_node.value}' twice, on lines "
                    f"{lines[key_node.value]} and {line}; keep one of them (YAML would silently use the last)"
                )
            lines[key_node.value] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[dict[str, Any], str]]:
    """Read one YAML file and the files it includes, as (mapping, source) pairs in merge order."""
    path = path.expanduser().resolve()
    if path in seen:
        raise ConfigError(f"config file {path} includes itself through {' -> '.join(map(str, seen))}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the path given to --config")
    try:
        data = _UniqueKeyLoader.load(path) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
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
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Config:
    """Build a validated, resolved Config from YAML files (merged in order) and key=value overrides."""
    builder = _Builder()
    for file in files:
        for data, source in _read_yaml(Path(file)):
            builder.merge(data, source)
    for text in overrides:
        key, value = parse_override(text)
        source = f"the command line ('{text}')"
        _field_type(key, source)
        builder.merge(_nest(key, value), source)
    return builder.build()


def _nest(key: str, value: Any) -> dict[str, Any]:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value
