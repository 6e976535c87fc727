"""Model sizes checked before anything is allocated: dimension bounds, a memory estimate per command, and the
refusal when the machine cannot hold it.

Every loader of a model (``revjax import``'s metadata, a checkpoint's metadata behind ``export``, ``chat``,
``serve`` and ``eval``) calls :func:`check_dimensions` on the raw numbers and :func:`check_fits` on the model
config before it reads or builds a single array, so that a metadata file with ``n_layer`` 10⁹ or ``sequence_len``
10¹² is refused in one sentence instead of allocating for minutes or dying in a raw allocation traceback.

The estimate (:func:`estimate`) counts the parameters exactly (:func:`param_count`: embedding, per-layer attention
with GQA and the 4× MLP, the untied head; the norms have no parameters) and adds what each command holds besides:

* ``import``: the state dict read from ``model.pt`` and the parameters of the train state (fp32 each), and the
  fresh optimizer state the importer saves beside them (Muon: one fp32 momentum per block matrix; AdamW: two fp32
  moments each for the embedding and the head).
* ``chat`` / ``serve``: the fp32 parameters, the engine's KV cache for ``batch`` rows at the model's full
  ``sequence_len`` (:func:`kv_cache_bytes`, the layout of :class:`revjax.model.KVCache`) and the engine's int32
  token buffer of the same rows.
* ``eval``: the fp32 parameters and, roughly, the bits-per-byte pass's working set: :data:`EVAL_ROWS` rows of
  ``sequence_len`` tokens of activations (:data:`ACTIVATION_WIDTHS` × ``n_embd`` fp32 values per token) and one
  chunk of fp32 logits.
* ``export``: the fp32 parameters read from the checkpoint and the torch copy written out.

The figure is compared with what the machine has (:func:`available_memory`): ``REVJAX_MEMORY_LIMIT`` when set
(bytes, or a number with a binary suffix: ``512M``, ``8G``, ``8GiB``, ``1.5T``); else, for the commands that
compute on an accelerator, its ``bytes_limit``; else the host's available memory (``MemAvailable``, bounded by the
cgroup's limit where one is set).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from revjax import architecture
from revjax.errors import RevjaxError

ENV_LIMIT = "REVJAX_MEMORY_LIMIT"

# Largest dimensions a model may declare: far above any model this framework trains, far below sizes whose
# bookkeeping alone (a Python list of 10⁹ layers) exhausts a machine.
MAX_DIMS = {
    "n_layer": 1024,
    "sequence_len": 1 << 20,
    "vocab_size": 1 << 24,
    "n_embd": 1 << 16,
    "n_head": 1 << 15,
    "n_kv_head": 1 << 15,
}
COMMANDS = ("import", "chat", "serve", "eval", "export")
ON_ACCELERATOR = ("import", "chat", "serve", "eval")  # export reads and writes on the host only

FP32 = 4
INT32 = 4
CACHE_BUCKET = 64  # revjax.engine rounds cache lengths up to a multiple of this
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
EVAL_ROWS = 8  # rows of the bpb pass (revjax.eval.bpb.evaluate_bpb's default)
ACTIVATION_WIDTHS = 16  # fp32 values of width n_embd held per token in a forward pass: residual, q/k/v, 4× MLP, …
_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


class SizeError(RevjaxError, ValueError):
    """A model too large (or malformed) to load here, described in one sentence."""

    exit_code = 2


# ---- dimensions -------------------------------------------------------------------------------------------------


def check_dimensions(dims: Mapping[str, Any], where: str) -> None:
    """Refuse non-integer, non-positive or absurd model dimensions in ``dims`` (any of onanchat's six GPTConfig keys
    plus ``depth``; others are ignored) and heads that do not divide the width, in one sentence naming ``where``."""
    limits = {**MAX_DIMS, "depth": MAX_DIMS["n_layer"]}
    for key, limit in limits.items():
        value = dims.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise SizeError(f"{where} gives {key}={value!r}, which is not an integer; fix {key}")
        if value < 1:
            raise SizeError(f"{where} gives {key}={value}, but model dimensions must be positive; fix {key}")
        if value > limit:
            raise SizeError(f"{where} gives {key}={value:,}, above the largest {key} revjax loads ({limit:,}); "
                            f"this is not a usable model, so fix {key} or use another file")
    n_embd, n_head, n_kv_head = dims.get("n_embd"), dims.get("n_head"), dims.get("n_kv_head")
    if n_embd is not None and n_head is not None:
        if n_embd % n_head:
            raise SizeError(f"{where} gives n_embd={n_embd}, which n_head={n_head} does not divide; fix n_head")
        if (n_embd // n_head) % 2:
            raise SizeError(f"{where} gives a head size n_embd/n_head={n_embd // n_head}, but rotary embeddings "
                            "need an even one; fix n_embd or n_head")
    if n_head is not None and n_kv_head is not None and n_head % n_kv_head:
        raise SizeError(f"{where} gives n_head={n_head}, which n_kv_head={n_kv_head} does not divide; fix n_kv_head")


# ---- counts -----------------------------------------------------------------------------------------------------


def _dims(config: Any) -> tuple[int, int, int, int, int, int]:
    """``(n_layer, n_embd, n_head, n_kv_head, vocab_size, sequence_len)`` of a ModelConfig or a GPTConfig mapping."""
    get = config.get if isinstance(config, Mapping) else lambda k: getattr(config, k)
    n_head = get("n_head")
    n_kv_head = get("n_kv_head") or n_head
    return get("n_layer"), get("n_embd"), n_head, n_kv_head, get("vocab_size"), get("sequence_len")


def _dtype(config: Any) -> str:
    value = config.get("compute_dtype") if isinstance(config, Mapping) else getattr(config, "compute_dtype", None)
    return value or "bfloat16"


def param_count(config: Any) -> int:
    """The exact number of parameters of :class:`revjax.model.GPT` for ``config``: the embedding ``V·d``, per layer
    ``c_q`` ``d·H·hd``, ``c_k`` and ``c_v`` ``d·Hkv·hd`` each, ``c_proj`` ``d·d``, the MLP ``d·4d + 4d·d``, and the
    head ``d·V`` (untied; the RMSNorms have no weights); with the nanochat-2026 elements, ``V`` padded and their
    parameters added (:func:`revjax.architecture.counts`)."""
    return architecture.counts(config).total


def optimizer_count(config: Any) -> int:
    """fp32 values of the optimizer state :func:`revjax.optim.build_optimizer` initialises: one Muon momentum per
    block parameter, two AdamW moments per embedding and head parameter (scalar counters not counted); with the
    nanochat-2026 elements, two AdamW moments per value-embedding, lambda and smear/backout parameter."""
    _, d, _, _, vocab, _ = _dims(config)
    e = architecture.elements(config)
    counts = architecture.counts(config)
    head = d * architecture.padded_vocab(vocab, e.vocab_multiple)
    blocks = counts.matmul - head - (architecture.SMEAR_CHANNELS if e.smear else 0)
    return blocks + 2 * (counts.total - blocks)


def cache_len(length: int) -> int:
    """The cache length the engine allocates for ``length`` positions (rounded up to :data:`CACHE_BUCKET`)."""
    return -(-length // CACHE_BUCKET) * CACHE_BUCKET


def kv_cache_bytes(config: Any, batch: int, length: int) -> int:
    """Bytes of the engine's KV cache: keys and values, each ``(n_layer, batch, n_kv_head, cache_len(length),
    head_dim)`` in the compute dtype (:class:`revjax.model.KVCache`, allocated by ``revjax.engine``)."""
    n_layer, d, n_head, n_kv_head, _, _ = _dims(config)
    return 2 * n_layer * batch * n_kv_head * cache_len(length) * (d // n_head) * DTYPE_BYTES[_dtype(config)]


# ---- estimates --------------------------------------------------------------------------------------------------


@dataclass
class Estimate:
    """What a command holds at once: named parts in bytes (``total`` is their sum)."""

    command: str
    parts: dict[str, int] = field(default_factory=dict)
    note: str = ""  # what a part covers, for the refusal sentence

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        text = ", ".join(f"{name} {format_bytes(size)}" for name, size in self.parts.items())
        return f"{text}{self.note}"


def estimate(config: Any, command: str, *, batch: int = 1) -> Estimate:
    """The memory ``command`` needs for a model of ``config`` (a ModelConfig or onanchat's GPTConfig mapping);
    ``batch`` is the rows ``chat`` / ``serve`` decode at once. See the module docstring for what each part is."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {', '.join(COMMANDS)}, not {command!r}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    n_layer, d, _, _, vocab, seq = _dims(config)
    params = FP32 * param_count(config)
    if command == "import":
        return Estimate(command, {"parameters": 2 * params, "optimizer state": FP32 * optimizer_count(config)},
                        " (the state dict read and the train state, fp32)")
    if command in ("chat", "serve"):
        return Estimate(command, {"parameters": params, "KV cache": kv_cache_bytes(config, batch, seq),
                                  "token buffer": INT32 * batch * cache_len(seq)},
                        f" for {batch} × {seq:,} tokens")
    if command == "eval":
        loss_chunk = config.get("loss_chunk") if isinstance(config, Mapping) else getattr(config, "loss_chunk", 0)
        tokens = EVAL_ROWS * seq
        logits = min(loss_chunk or tokens, tokens) * vocab * FP32
        return Estimate(command, {"parameters": params,
                                  "working set": tokens * ACTIVATION_WIDTHS * d * FP32 + logits},
                        f" for {EVAL_ROWS} × {seq:,} tokens")
    return Estimate(command, {"parameters": params, "torch copy": params})


# ---- what the machine has ---------------------------------------------------------------------------------------


def parse_bytes(text: str) -> int:
    """``"8G"`` → 8·2³⁰: a byte count, or a number with a binary suffix K/M/G/T/P (optionally followed by ``iB``
    or ``B``, any case)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not match:
        raise SizeError(f"{ENV_LIMIT}={text!r} is not a size; give bytes or a number with a suffix, e.g. 8G or 512M")
    value = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if value < 1:
        raise SizeError(f"{ENV_LIMIT}={text!r} is not a positive size; give bytes or a size such as 8G")
    return int(value)


def host_memory() -> int | None:
    """Bytes the host can still give: ``MemAvailable`` (else physical memory), bounded by a cgroup v2 limit."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


def accelerator_memory() -> tuple[int, str] | None:
    """``(bytes_limit, device name)`` of the first accelerator, or None on a CPU-only machine (or when unknown)."""
    import jax

    try:
        device = jax.devices()[0]
        if device.platform == "cpu":
            return None
        stats = device.memory_stats() or {}
    except Exception:  # a backend without memory statistics: only the host figure is known
        return None
    limit = stats.get("bytes_limit")
    return (int(limit), str(device.device_kind)) if limit else None


def available_memory(command: str = "chat") -> tuple[int | None, str]:
    """``(bytes, what they are)`` that ``command`` may use: ``REVJAX_MEMORY_LIMIT`` when set, else the accelerator's
    ``bytes_limit`` for the commands that compute on it, else the host's available memory (None: unknown)."""
    override = os.environ.get(ENV_LIMIT)
    if override:
        return parse_bytes(override), f"{ENV_LIMIT} allows"
    if command in ON_ACCELERATOR:
        device = accelerator_memory()
        if device is not None:
            return device[0], f"the {device[1]} has"
    return host_memory(), "this machine has"


def check_fits(config: Any, command: str, *, batch: int = 1, where: str = "this model") -> Estimate:
    """Refuse, in one sentence, a model whose :func:`estimate` for ``command`` exceeds :func:`available_memory`;
    returns the estimate. ``where`` names the model in the sentence."""
    need = estimate(config, command, batch=batch)
    have, whose = available_memory(command)
    if have is not None and need.total > have:
        fix = "lower sequence_len or the batch" if command in ("chat", "serve", "eval") else "use a smaller model"
        raise SizeError(
            f"{where} needs about {format_bytes(need.total)} to {command} ({need.describe()}) but {whose} "
            f"{format_bytes(have)}; {fix}, or use a larger machine ({ENV_LIMIT} overrides the figure)")
    return need


def format_bytes(size: int | float) -> str:
    """``3.6 TiB``, ``23 GiB``, ``512 B``: two significant digits below 10, whole units above."""
    size = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024 or unit == "EiB":
            break
        size /= 1024
    if unit == "B":
        return f"{int(size)} B"
    return f"{size:.1f} {unit}" if size < 10 else f"{math.floor(size + 0.5):,} {unit}"
