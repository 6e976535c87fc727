"""Each configuration section checks (and resolves) itself: one function per section, in :data:`SECTION_CHECKS`.

A check receives the whole configuration (a section may depend on another: the model's vocabulary on the
tokenizer's) and ``fail(keys, message)``, which raises one :class:`ConfigError` sentence naming the file or
override the keys came from. This module sits below the schema (:mod:`revjax.config_schema`) and the builder
(:mod:`revjax.config_build`), so neither needs the other to check a value.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from revjax import architecture, horizon
from revjax.errors import RevjaxError
from revjax.memory import MAX_DIMS
from revjax.phases import PHASES

DEFAULT_DEPTH = 20
FINEWEB_SHARDS = 1823  # karpathy/fineweb-edu-100b-shuffle: shard_00000 … shard_01822
AUTO_ITERATIONS = -1  # training.num_iterations: derive the step count from target_flops or the data:param ratio

Fail = Callable[[Sequence[str], str], None]


class ConfigError(RevjaxError, ValueError):
    """A configuration problem, described in one sentence."""

    exit_code = 2


def dims_from_depth(depth: int, recipe: str = architecture.ONANCHAT_2025) -> dict[str, int]:
    """The depth rule of ``recipe``: onanchat-2025's width 64·depth with heads of (about) 128 dims; nanochat-2026's
    width 64·depth rounded up to a multiple of 128 with heads of exactly 128 (:func:`revjax.horizon.depth_dims`;
    the two differ at odd depths only). No GQA in either."""
    if recipe == architecture.NANOCHAT_2026:
        return horizon.depth_dims(depth)
    n_embd = depth * 64
    n_head = max(1, (n_embd + 127) // 128)
    return {"n_layer": depth, "n_embd": n_embd, "n_head": n_head, "n_kv_head": n_head}


def _resolve_depth(m: Any, fail: Fail) -> None:
    if m.depth is None and all(getattr(m, k) is None for k in ("n_layer", "n_head", "n_kv_head", "n_embd")):
        m.depth = DEFAULT_DEPTH
    if m.depth is None:
        return
    if m.depth < 1:
        fail(["model.depth"], f"model.depth={m.depth} must be at least 1")
    if m.depth > MAX_DIMS["n_layer"]:
        fail(["model.depth"], f"model.depth={m.depth:,} is above the largest depth revjax builds "
                              f"({MAX_DIMS['n_layer']:,}); lower it")
    for key, value in dims_from_depth(m.depth, m.recipe).items():
        current = getattr(m, key)
        if current is None:
            setattr(m, key, value)
        elif key != "n_kv_head" and current != value:
            fail([f"model.{key}", "model.depth"],
                 f"model.{key}={current} disagrees with model.depth={m.depth}, which gives {key}={value}; "
                 "set either the depth or the explicit dimensions")


def check_model(config: Any, fail: Fail) -> None:
    m = config.model
    _resolve_depth(m, fail)
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
    _check_elements(m, fail)


def _check_elements(m: Any, fail: Fail) -> None:
    """Fill each architectural element left unset from ``model.recipe`` and check the values."""
    recipe = architecture.RECIPES[m.recipe]
    for key in architecture.ELEMENT_KEYS:
        if getattr(m, key) is None:
            setattr(m, key, getattr(recipe, key))
    problem = architecture.check_window_pattern(m.window_pattern)
    if problem:
        fail(["model.window_pattern"], problem)
    m.window_pattern = m.window_pattern.upper()
    if not (m.qk_scale > 0 and math.isfinite(m.qk_scale)):
        fail(["model.qk_scale"], f"model.qk_scale={m.qk_scale} must be a positive number")
    if not (m.rope_base > 1 and math.isfinite(m.rope_base)):
        fail(["model.rope_base"], f"model.rope_base={m.rope_base} must be a number above 1")
    if m.vocab_multiple < 1:
        fail(["model.vocab_multiple"], f"model.vocab_multiple={m.vocab_multiple} must be a positive number of rows")
    need = max(architecture.SMEAR_CHANNELS if m.smear else 0, architecture.VE_GATE_CHANNELS if m.value_embeds else 0)
    if m.n_embd < need:
        fail(["model.n_embd", "model.smear", "model.value_embeds"],
             f"model.n_embd={m.n_embd} is below the {need} channels the smear and value-embedding gates read; "
             "widen the model or turn those elements off")
    if m.scan_layers and architecture.scan_refusal(m):
        fail(["model.scan_layers", "model.recipe"], architecture.scan_refusal(m))


def check_tokenizer(config: Any, fail: Fail) -> None:
    if config.tokenizer.vocab_size < 256 + 11:
        fail(["tokenizer.vocab_size"],
             f"tokenizer.vocab_size={config.tokenizer.vocab_size} must be at least 267 (256 bytes + 11 specials)")


def check_run_name(config: Any, fail: Fail) -> None:
    name = config.run_name
    if not name.strip() or name in (".", "..") or any(sep in name for sep in ("/", "\\")):
        fail(["run_name"], f"run_name={name!r} must be a plain folder name (not empty, no path separators): "
                           "it names the run's folder under <base_dir>/checkpoints")


def _check_phase(name: str, key: str, config: Any, fail: Fail) -> None:
    if name not in PHASES:
        fail([key], f"{key} must be one of {', '.join(repr(p) for p in PHASES)}, got {name!r}")


def check_training(config: Any, fail: Fail) -> None:
    t, m = config.training, config.model
    _check_phase(t.phase, "training.phase", config, fail)
    refusal = PHASES[t.phase].refuses(config.direction.direction, config.direction.conversation)
    if refusal:
        fail(["training.phase", "direction.direction", "direction.conversation"], refusal)
    if t.num_iterations < 1 and t.num_iterations != AUTO_ITERATIONS:
        fail(["training.num_iterations"],
             f"training.num_iterations={t.num_iterations} must be a positive number of steps, or {AUTO_ITERATIONS} "
             "to derive it from training.target_flops or training.target_param_data_ratio")
    if t.device_batch_size < 1:
        fail(["training.device_batch_size"], f"training.device_batch_size={t.device_batch_size} must be positive")
    _recipe_defaults(config, "training", fail)
    if t.total_batch_tokens == horizon.AUTO_BATCH:
        t.total_batch_tokens = horizon.horizon(m, t.target_param_data_ratio, None, 0.0).batch_tokens
        if t.total_batch_tokens % m.sequence_len:
            fail(["training.total_batch_tokens", "model.sequence_len"],
                 f"training.total_batch_tokens={horizon.AUTO_BATCH} gives {t.total_batch_tokens:,} tokens for this "
                 f"model, not a multiple of model.sequence_len={m.sequence_len}; give the batch explicitly")
    if t.total_batch_tokens < 1 or t.total_batch_tokens % m.sequence_len:
        fail(["training.total_batch_tokens", "model.sequence_len"],
             f"training.total_batch_tokens={t.total_batch_tokens} must be a positive multiple of "
             f"model.sequence_len={m.sequence_len}")


def check_chain(config: Any, fail: Fail) -> None:
    for name in config.chain.phases:
        _check_phase(name, "chain.phases", config, fail)


def _training_recipe(config: Any) -> str:
    """The optimizer's recipe: ``optimizer.recipe``, or with ``auto`` the model's."""
    recipe = config.optimizer.recipe
    return getattr(config.model, "recipe", architecture.ONANCHAT_2025) if recipe == "auto" else recipe


def _recipe_defaults(config: Any, section: str, fail: Any) -> None:
    """Under the nanochat-2026 optimizer, every key of ``section`` that no file or override set takes the recipe's
    value (:data:`revjax.horizon.TRAINING_DEFAULTS`; Polar Express runs in the model's compute dtype, as nanochat)."""
    if _training_recipe(config) != architecture.NANOCHAT_2026:
        return
    values = dict(horizon.TRAINING_DEFAULTS[section])
    if section == "optimizer":
        values["ns_dtype"] = config.model.compute_dtype
    for key, value in values.items():
        if not fail.explicit(f"{section}.{key}"):
            setattr(getattr(config, section), key, value)


def check_schedule(config: Any, fail: Fail) -> None:
    _recipe_defaults(config, "schedule", fail)
    s = config.schedule
    if s.warmup_steps < -1:
        fail(["schedule.warmup_steps"], f"schedule.warmup_steps={s.warmup_steps} must be a number of steps, or -1 "
                                        "for schedule.warmup_ratio of the run")
    for key in ("warmup_ratio", "warmdown_ratio", "final_lr_frac"):
        value = getattr(s, key)
        if not 0.0 <= value <= 1.0:
            fail([f"schedule.{key}"], f"schedule.{key}={value} must be between 0 and 1")
    if s.warmup_ratio + s.warmdown_ratio > 1.0:
        fail(["schedule.warmup_ratio", "schedule.warmdown_ratio"],
             f"schedule.warmup_ratio + schedule.warmdown_ratio = {s.warmup_ratio + s.warmdown_ratio} exceeds 1")


def check_optimizer(config: Any, fail: Fail) -> None:
    _recipe_defaults(config, "optimizer", fail)
    o = config.optimizer
    for key in ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "adam_eps"):
        if not getattr(o, key) > 0 or not math.isfinite(getattr(o, key)):
            fail([f"optimizer.{key}"], f"optimizer.{key}={getattr(o, key)} must be a positive number")
    for key in ("adam_beta1", "adam_beta2", "muon_momentum", "muon_momentum_start", "muon_momentum_final",
                "muon_beta2"):
        if not 0.0 <= getattr(o, key) < 1.0:
            fail([f"optimizer.{key}"], f"optimizer.{key}={getattr(o, key)} must be in [0, 1)")
    if not 0.0 <= o.weight_decay < math.inf:
        fail(["optimizer.weight_decay"], f"optimizer.weight_decay={o.weight_decay} must be a number, 0 or more")
    elements = [key for key in ("value_embeds", "layer_lambdas", "smear", "backout") if getattr(config.model, key, None)]
    if elements and _training_recipe(config) != architecture.NANOCHAT_2026:
        fail(["optimizer.recipe", "model.recipe", *(f"model.{key}" for key in elements)],
             f"optimizer.recipe={o.recipe} trains only wte, lm_head and block matrices, but the model has "
             f"{', '.join(elements)}; use optimizer.recipe=nanochat-2026 (or auto with model.recipe=nanochat-2026)")


def check_mesh(config: Any, fail: Fail) -> None:
    for key in ("data", "fsdp", "tensor"):
        value = getattr(config.mesh, key)
        if value == 0 or value < -1:
            fail([f"mesh.{key}"], f"mesh.{key}={value} must be a positive size or -1 (fill the remaining devices)")


def check_data(config: Any, fail: Fail) -> None:
    d = config.data
    if d.packing_buffer < 1:
        fail(["data.packing_buffer"], f"data.packing_buffer={d.packing_buffer} must be a positive number")
    for key in ("packing", "val_packing"):
        if config.direction.layout == "compat" and getattr(d, key) != "stream":
            fail([f"data.{key}"], f"data.{key}={getattr(d, key)} needs direction.layout=document (compat "
                 "packs onanchat's stream)")
    if not 2 <= d.fineweb_shards <= FINEWEB_SHARDS:
        fail(["data.fineweb_shards"],
             f"data.fineweb_shards={d.fineweb_shards} must be between 2 (one train and one val shard) and "
             f"{FINEWEB_SHARDS}, the number of FineWeb-Edu shards")
    if d.corpus == "parquet" and not d.dir:
        fail(["data.corpus"], "data.corpus=parquet needs data.dir, the folder holding shard_*.parquet files")


def check_logging(config: Any, fail: Fail) -> None:
    if config.logging.log_every < 1:
        fail(["logging.log_every"], f"logging.log_every={config.logging.log_every} must be a positive number of steps")
    for key in ("hdf5_every", "hdf5_layers_every"):
        if getattr(config.logging, key) < 0:
            fail([f"logging.{key}"], f"logging.{key}={getattr(config.logging, key)} must be a number of steps, or 0")


def check_direction(config: Any, fail: Fail) -> None:
    d = config.direction
    if d.unit != "token" and d.direction == "forward":
        fail(["direction.unit", "direction.direction"],
             f"direction.unit={d.unit} reverses text for backward reading, but direction.direction=forward reads it "
             "as it is; use direction.unit=token for a forward model")
    if d.unit != "token" and d.layout == "compat":
        fail(["direction.unit", "direction.layout"],
             f"direction.unit={d.unit} needs direction.layout=document (the compat layouts reproduce onanchat, which "
             "reverses token ids); use direction.unit=token with the compat layout")


def check_checkpoint(config: Any, fail: Fail) -> None:
    if config.checkpoint.keep < 1:
        fail(["checkpoint.keep"], f"checkpoint.keep={config.checkpoint.keep} must be at least 1")


# in the order the checks ran before they were split (the first failing key is the one reported)
SECTION_CHECKS: dict[str, Callable[[Any, Fail], None]] = {
    "model": check_model, "tokenizer": check_tokenizer, "run_name": check_run_name, "training": check_training,
    "schedule": check_schedule, "optimizer": check_optimizer, "mesh": check_mesh, "data": check_data,
    "logging": check_logging, "checkpoint": check_checkpoint, "chain": check_chain, "direction": check_direction,
}


class _Fail:
    """``fail(keys, message)``: one :class:`ConfigError` naming where the first of ``keys`` came from;
    ``fail.explicit(key)``: whether a file or an override set ``key`` (a recipe fills only the others)."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        self.sources = sources

    def __call__(self, keys: Sequence[str], message: str) -> None:
        found = [self.sources[k] for k in keys if k in self.sources]
        raise ConfigError(f"{message} (from {found[0] if found else 'the defaults'})")

    def explicit(self, key: str) -> bool:
        return key in self.sources


def validate(config: Any, sources: Mapping[str, str]) -> None:
    """Resolve and check every section of ``config``; the first problem raises one :class:`ConfigError`."""
    fail = _Fail(sources)
    for check in SECTION_CHECKS.values():
        check(config, fail)
