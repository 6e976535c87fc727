"""The nanochat-2026 recipe's training horizon and per-step schedules, as plain arithmetic.

nanochat (92d63d4) sizes a run from its model: the *scaling parameters* ``S`` (every transformer-block matrix,
value-embedding gates included, plus the padded head) give the horizon ``D = ratio · S`` tokens, compared with the
same count ``D_ref`` of the depth-12 model of the same vocabulary. From them:

* the automatic batch ``B = 2^round(log2(B_ref · (D/D_ref)^0.383))`` with ``B_ref = 2^19`` tokens;
* every learning rate × ``√(B/B_ref)``;
* Muon's weight decay ``λ = λ₀ · √(B/B_ref) · D_ref/D``, then ramped ``λ · ½(1 + cos(π·it/N))`` to zero.

The per-step LR multiplier is a linear warmup over ``warmup`` steps, flat, then a linear warmdown over the last
``round(warmdown_ratio·N)`` steps to ``final_lr_frac``; Muon's momentum warms from 0.85 to 0.97 over 400 steps and
cools to 0.90 over the LR warmdown. :data:`TRAINING_DEFAULTS` holds the recipe's optimizer, schedule and horizon
settings, which the configuration takes for every key a run leaves unset. Plain Python, so every layer may use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from revjax import architecture

REFERENCE_BATCH_TOKENS = 2**19  # B_ref: the tuned batch of the depth-12 model
AUTO_BATCH = -1  # training.total_batch_tokens: the batch for the horizon (auto_batch_tokens)
REFERENCE_DEPTH = 12
BATCH_EXPONENT = 0.383  # B_opt ∝ D^0.383 (Power Lines)
ASPECT_RATIO = 64  # model_dim = depth × 64 …
HEAD_DIM = 128  # … rounded up to a multiple of the head dim

# The recipe's optimizer and schedule settings (nanochat's base_train defaults), keyed by config section.
TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "optimizer": {"matrix_lr": 0.02, "embedding_lr": 0.3, "unembedding_lr": 0.008, "scalar_lr": 0.5,
                  "weight_decay": 0.28, "muon_momentum": 0.97, "muon_momentum_start": 0.85,
                  "muon_momentum_warmup_steps": 400, "muon_momentum_final": 0.90, "muon_beta2": 0.9,
                  "ns_steps": 5, "grad_clip": 0.0},
    "schedule": {"warmup_steps": 40, "warmdown_ratio": 0.65, "final_lr_frac": 0.05},
    "training": {"target_param_data_ratio": 12.0, "total_batch_tokens": AUTO_BATCH},
}


# ---- sizes --------------------------------------------------------------------------------------------------


def depth_dims(depth: int) -> dict[str, int]:
    """nanochat's 2026 depth rule: width ``64·depth`` rounded up to a multiple of 128, heads of 128, no GQA."""
    n_embd = -(-depth * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
    return {"n_layer": depth, "n_embd": n_embd, "n_head": n_embd // HEAD_DIM, "n_kv_head": n_embd // HEAD_DIM}


def scaling_params(config: Any) -> int:
    """Parameters that set the horizon: the block matrices (value-embedding gates included) and the padded head;
    not the embeddings, the value embeddings, the smear gate or the scalars. ``config``: a ModelConfig or mapping."""
    counts = architecture.counts(config)
    smear = architecture.SMEAR_CHANNELS if architecture.elements(config).smear else 0
    return counts.matmul - smear


def reference_config(config: Any) -> dict[str, Any]:
    """The depth-12 model nanochat compares a run with: ``config``'s vocabulary and elements, nanochat's 2026
    depth rule."""
    keys = ("vocab_size", "sequence_len", "recipe", *architecture.ELEMENT_KEYS)
    fields = {k: config.get(k) if isinstance(config, Mapping) else getattr(config, k, None) for k in keys}
    return {**fields, **depth_dims(REFERENCE_DEPTH)}


@dataclass(frozen=True)
class Horizon:
    """A run's horizon: tokens ``D`` and ``D_ref`` (ratio × scaling parameters), its batch ``B`` (tokens per
    step), the LR factor ``√(B/B_ref)`` and Muon's scaled weight decay ``λ``."""

    tokens: int
    reference_tokens: float
    batch_tokens: int
    lr_scale: float
    weight_decay: float


def auto_batch_tokens(tokens: float, reference_tokens: float) -> int:
    """``2^round(log2(B_ref · (D/D_ref)^0.383))``: the batch nanochat picks for a horizon of ``tokens``."""
    predicted = REFERENCE_BATCH_TOKENS * (tokens / reference_tokens) ** BATCH_EXPONENT
    return 2 ** round(math.log2(predicted))


def batch_lr_scale(batch_tokens: int) -> float:
    """``√(B/B_ref)``: the factor on every learning rate."""
    return math.sqrt(batch_tokens / REFERENCE_BATCH_TOKENS)


def scaled_weight_decay(weight_decay: float, batch_tokens: int, tokens: float, reference_tokens: float) -> float:
    """``λ₀ · √(B/B_ref) · D_ref/D``: Muon's weight decay for this batch and horizon."""
    return weight_decay * batch_lr_scale(batch_tokens) * reference_tokens / tokens


def horizon(config: Any, ratio: float, batch_tokens: int | None, weight_decay: float) -> Horizon:
    """The horizon of a model of ``config`` trained on ``ratio`` tokens per scaling parameter; ``batch_tokens``
    None picks the batch automatically."""
    tokens = int(ratio * scaling_params(config))
    reference = ratio * scaling_params(reference_config(config))
    batch = auto_batch_tokens(tokens, reference) if batch_tokens is None else batch_tokens
    return Horizon(tokens, reference, batch, batch_lr_scale(batch),
                   scaled_weight_decay(weight_decay, batch, tokens, reference))


# ---- per-step schedules -------------------------------------------------------------------------------------


def lr_multiplier(step: int, num_iterations: int, warmup: int, warmdown_ratio: float, final_lr_frac: float) -> float:
    """``(it+1)/warmup`` while ``it < warmup``; 1 until ``N − W`` (``W = round(warmdown_ratio·N)``); then
    ``p + (1−p)·final_lr_frac`` with ``p = (N − it)/W``."""
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup:
        return (step + 1) / warmup
    if step <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - step) / warmdown
    return progress + (1 - progress) * final_lr_frac


def muon_momentum(step: int, num_iterations: int, warmdown_ratio: float, *, start: float = 0.85,
                  peak: float = 0.97, final: float = 0.90, warmup: int = 400) -> float:
    """Warmup ``(1−f)·start + f·peak`` (``f = it/warmup``) for ``it < warmup``; from the LR warmdown's start ``S``,
    ``peak·(1−q) + final·q`` with ``q = (it − S)/W``; else ``peak``."""
    warmdown = round(warmdown_ratio * num_iterations)
    warmdown_start = num_iterations - warmdown
    if step < warmup:
        frac = step / warmup
        return (1 - frac) * start + frac * peak
    if warmdown > 0 and step >= warmdown_start:
        progress = (step - warmdown_start) / warmdown
        return peak * (1 - progress) + final * progress
    return peak


def muon_weight_decay(step: int, num_iterations: int, weight_decay: float) -> float:
    """``λ · ½(1 + cos(π·it/N))``: Muon's weight decay ramped from λ to zero over the run."""
    return weight_decay * 0.5 * (1 + math.cos(math.pi * step / num_iterations))
