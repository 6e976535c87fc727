"""The configuration schema: one dataclass per section of a run (:class:`Config` holds them), their defaults, and
the paths a configuration names. Building is :mod:`revjax.config_build`, checking :mod:`revjax.config_checks`, loading
:mod:`revjax.config`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from revjax.config_checks import (  # noqa: F401  (re-exported)
    AUTO_ITERATIONS, DEFAULT_DEPTH, FINEWEB_SHARDS, ConfigError, dims_from_depth, validate,
)

Dtype = Literal["float32", "bfloat16"]
DirectionName = Literal["forward", "backward", "bidirectional"]


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
    attention: str = "auto"  # or a key of revjax.attention.CAUSAL_KERNELS (xla, cudnn, splash)
    # recompute in the backward pass: none, all but the matmuls ("dots"), everything ("full"); true/false (older
    # configs) mean full/none
    remat: Literal["none", "dots", "full"] | bool = "none"
    scan_layers: bool = False  # one compiled block run L times by lax.scan (compile time flat in depth)
    loss_chunk: int = 4096  # tokens of logits at a time in the fused cross-entropy; 0: the plain full-logits path
    # the architecture: onanchat-2025 (today's models) or nanochat-2026 (nanochat 92d63d4); each element below left
    # unset (null) takes the recipe's value (revjax/architecture.py describes them)
    recipe: Literal["onanchat-2025", "nanochat-2026"] = "onanchat-2025"
    window_pattern: str | None = None  # per-layer windows tiled over layers: L whole context, S a quarter; last L
    value_embeds: bool | None = None  # gated value embeddings on alternating layers and the last
    layer_lambdas: bool | None = None  # learnable per-layer resid_lambdas and x0_lambdas
    smear: bool | None = None  # the previous token's normalised embedding gated into the current one
    backout: bool | None = None  # the residual after layer n_layer // 2 subtracted before the final norm
    qk_scale: float | None = None  # Q and K multiplied by this after QK-norm (2026: 1.2)
    vocab_multiple: int | None = None  # embedding and head rows padded to a multiple of this (2026: 64)
    rope_base: float | None = None  # rotary base (2025: 10,000; 2026: 100,000)
    rope_bf16: bool | None = None  # rotary tables rounded to bf16 whatever the compute dtype (2025) or not (2026)
    init: Literal["onanchat-2025", "nanochat-2026"] | None = None  # which recipe's initialisation

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
    # what a backward reading reverses: token ids (onanchat), word pieces (BackGPT) or words with whole entities
    # (revjax.direction.units); forward models read text as it is, so they keep token
    unit: Literal["token", "word", "entity"] = "token"


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

    phases: list[str] = field(default_factory=lambda: ["base", "mid", "sft", "rl"])
    base: dict = field(default_factory=dict)
    mid: dict = field(default_factory=dict)
    sft: dict = field(default_factory=dict)
    rl: dict = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    # onanchat-2025: Muon + two AdamW groups (revjax/optim.py); nanochat-2026: NorMuon with Polar Express and
    # cautious weight decay + six AdamW groups, LRs and weight decay from the horizon (revjax/optim_2026.py); auto
    # follows model.recipe. Under nanochat-2026 every key below left unset takes the recipe's value
    # (revjax/horizon.py's TRAINING_DEFAULTS)
    recipe: Literal["auto", "onanchat-2025", "nanochat-2026"] = "auto"
    matrix_lr: float = 0.02
    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    scalar_lr: float = 0.5  # nanochat-2026: x0_lambdas (resid_lambdas get 1 %)
    weight_decay: float = 0.0  # onanchat-2025: AdamW's on wte/lm_head; nanochat-2026: Muon's, before scaling
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    adam_eps: float = 1e-10
    muon_momentum: float = 0.95
    muon_momentum_start: float = 0.85
    muon_momentum_warmup_steps: int = 300
    muon_momentum_final: float = 0.9  # nanochat-2026: the momentum at the end of the LR warmdown
    muon_beta2: float = 0.9  # nanochat-2026: NorMuon's second-moment decay
    ns_steps: int = 5
    ns_dtype: Dtype = "bfloat16"  # Newton–Schulz precision: nanochat's bf16, or fp32 for exactness checks
    grad_clip: float = 1.0  # 0 disables


@dataclass
class ScheduleConfig:
    warmup_steps: int = -1  # LR warmup in steps (nanochat-2026: 40); -1: warmup_ratio of the run
    warmup_ratio: float = 0.0
    warmdown_ratio: float = 0.2
    final_lr_frac: float = 0.0
    init_lr_frac: float = 1.0


@dataclass
class TrainingConfig:
    phase: str = "base"  # a key of revjax.phases.PHASES
    num_iterations: int = AUTO_ITERATIONS  # -1: from target_flops, else from target_param_data_ratio
    target_flops: float = -1.0
    target_param_data_ratio: float = 20.0
    total_batch_tokens: int = 524_288  # -1: nanochat's batch for the horizon (revjax/horizon.py; nanochat-2026's)
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
        from revjax.config_build import build  # a lower module: it converts values, then calls validate()

        return build(cls, [(data, source)])

    def validate(self, sources: Mapping[str, str]) -> None:
        """Resolve and check every section (:data:`revjax.config_checks.SECTION_CHECKS`); one sentence on error."""
        validate(self, sources)
