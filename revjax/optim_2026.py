"""nanochat's 2026 optimizer (MuonAdamW at 92d63d4) as one optax transformation, with its groups and schedules.

Groups (:func:`group_of`, by the parameter's name): six AdamW groups, each with its own learning rate, betas and
weight decay (eps 1e-10), and Muon for every transformer-block matrix (the value-embedding gates included):

============== ================================ ============== ============
group          parameters                       lr             β1, β2 / wd
============== ================================ ============== ============
lm_head        the head                         unembedding·s  0.8, 0.96 / 0.01
embedding      ``wte``                          embedding·s    0.8, 0.995 / 0.001
value_embeds   the value embeddings             embedding·s/2  0.8, 0.995 / 0.01
resid_lambdas  ``resid_lambdas``                scalar·0.01    0.8, 0.95 / 0.05
x0_lambdas     ``x0_lambdas``                   scalar         0.96, 0.95 / 0
smear          smear gate, smear and backout λ  0.2            0.8, 0.95 / 0
muon           ``blocks/…`` (``transformer.h``) matrix         momentum, β2 0.9, cautious wd
============== ================================ ============== ============

``s = (n_embd/768)^-0.5``. Every learning rate but the smear group's is also multiplied by the batch factor
``√(B/2^19)`` (:mod:`revjax.horizon`), and all by ``init_lr_frac``. Names are revjax's (``blocks/3/attn/c_q/kernel``,
``value_embeds/1``) or nanochat's state_dict names (``transformer.h.3.attn.c_q.weight``, ``value_embeds.1.weight``).

Muon, per matrix: Nesterov momentum (``buf ← lerp(buf, g, 1−m)``, ``u = lerp(g, buf, m)``); MuonEq (rows rescaled
to the mean row norm); normalisation ``X/(‖X‖·1.01 + 1e-6)``; five Polar Express steps with their own coefficients,
in ``ns_dtype`` (nanochat: bf16 when it computes in bf16, else fp32); Muon+ (Frobenius norm snapped to
``√min(out, in)``); NorMuon (a second moment per output neuron, or per input channel of a wide matrix, with β2,
rescaling the update while keeping its norm); then cautious weight decay: ``p ← p − lr'·u − lr'·wd·p·[u·p ≥ 0]``
with ``lr' = lr·√max(1, out/in)``. Matrices are revjax kernels ``(…, in, out)``; the arithmetic runs on their
``(out, in)`` transposes as nanochat's does.

The LR multiplier, the Muon momentum and the Muon weight decay are injected hyperparameters in the state, so the
host changes them every step without recompiling (:func:`revjax.optim.set_schedule`).
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from revjax import horizon
from revjax.config import Config, ModelConfig, OptimizerConfig
from revjax.errors import RevjaxError

LR_MULTIPLIER = "lr_multiplier"
MUON_MOMENTUM = "muon_momentum"
MUON_WEIGHT_DECAY = "muon_weight_decay"

LM_HEAD, EMBEDDING, VALUE_EMBEDS = "lm_head", "embedding", "value_embeds"
RESID_LAMBDAS, X0_LAMBDAS, SMEAR, MUON = "resid_lambdas", "x0_lambdas", "smear", "muon"
ADAMW_GROUPS = (LM_HEAD, EMBEDDING, VALUE_EMBEDS, RESID_LAMBDAS, X0_LAMBDAS, SMEAR)
GROUPS = (*ADAMW_GROUPS, MUON)

ADAM_EPS = 1e-10
SMEAR_LR = 0.2  # fixed: neither the d_model nor the batch factor applies
# group → (optimizer option of its base lr (None: SMEAR_LR), factor, × d_model scale?, betas, weight decay)
ADAMW_SETTINGS: dict[str, tuple[str | None, float, bool, tuple[float, float], float]] = {
    LM_HEAD: ("unembedding_lr", 1.0, True, (0.8, 0.96), 0.01),
    EMBEDDING: ("embedding_lr", 1.0, True, (0.8, 0.995), 0.001),
    VALUE_EMBEDS: ("embedding_lr", 0.5, True, (0.8, 0.995), 0.01),
    RESID_LAMBDAS: ("scalar_lr", 0.01, False, (0.8, 0.95), 0.05),
    X0_LAMBDAS: ("scalar_lr", 1.0, False, (0.96, 0.95), 0.0),
    SMEAR: (None, 1.0, False, (0.8, 0.95), 0.0),
}

# Polar Express (Amsel et al. 2025; 5 iterations, safety factor 2e-2, cushion 2): (a, b, c) per step
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
NS_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}

# the first component of a name (after nanochat's ``transformer.``) → group
_GROUP_OF_ROOT = {"lm_head": LM_HEAD, "wte": EMBEDDING, "value_embeds": VALUE_EMBEDS, "resid_lambdas": RESID_LAMBDAS,
                  "x0_lambdas": X0_LAMBDAS, "smear_gate": SMEAR, "smear_lambda": SMEAR, "backout_lambda": SMEAR,
                  "blocks": MUON, "h": MUON}


class GroupError(RevjaxError, ValueError):
    """A parameter without a valid group of the 2026 optimizer, described in one sentence."""


# ---- parameter groups -------------------------------------------------------------------------------------


def _path_name(path: tuple) -> str:
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return jax.tree_util.keystr(path, simple=True, separator="/")


def group_of(name: str, ndim: int = 2) -> str:
    """The group of the parameter ``name`` (revjax ``a/b/c`` or nanochat ``a.b.c``) with ``ndim`` dimensions."""
    parts = re.split(r"[./]", name)
    root = parts[1] if parts[0] == "transformer" and len(parts) > 1 else parts[0]
    group = _GROUP_OF_ROOT.get(root)
    if group is None:
        raise GroupError(f"parameter '{name}' belongs to no group of the nanochat-2026 optimizer (expected one "
                         f"of {', '.join(sorted(_GROUP_OF_ROOT))} at the top)")
    if group == MUON and ndim < 2:
        raise GroupError(f"parameter '{name}' has {ndim} dimension(s), but Muon only trains matrices")
    return group


def param_labels(params: Any) -> Any:
    """A pytree like ``params`` naming each leaf's group (one of :data:`GROUPS`)."""
    return jax.tree_util.tree_map_with_path(lambda path, leaf: group_of(_path_name(path), jnp.ndim(leaf)), params)


def dmodel_lr_scale(model_cfg: ModelConfig) -> float:
    """(n_embd/768)^-0.5, applied to the head, embedding and value-embedding groups."""
    return (model_cfg.n_embd / 768) ** -0.5


def group_settings(opt_cfg: OptimizerConfig, model_cfg: ModelConfig, *, lr_scale: float = 1.0,
                   init_lr_frac: float = 1.0) -> dict[str, dict[str, Any]]:
    """Each group's settings as nanochat lists them (``kind``, ``lr``, and ``betas``/``eps``/``weight_decay`` or
    ``momentum``/``ns_steps``/``beta2``/``weight_decay``), at LR multiplier 1 and the configured Muon values."""
    settings: dict[str, dict[str, Any]] = {}
    for group, (lr_key, factor, scaled, betas, decay) in ADAMW_SETTINGS.items():
        lr = SMEAR_LR if lr_key is None else getattr(opt_cfg, lr_key) * factor * lr_scale
        lr *= (dmodel_lr_scale(model_cfg) if scaled else 1.0) * init_lr_frac
        settings[group] = {"kind": "adamw", "lr": lr, "betas": betas, "eps": ADAM_EPS, "weight_decay": decay}
    settings[MUON] = {"kind": "muon", "lr": opt_cfg.matrix_lr * lr_scale * init_lr_frac,
                      "momentum": opt_cfg.muon_momentum, "ns_steps": opt_cfg.ns_steps, "beta2": opt_cfg.muon_beta2,
                      "weight_decay": opt_cfg.weight_decay}
    return settings


# ---- Muon: Polar Express, Muon+, NorMuon, cautious weight decay ---------------------------------------------


def _lerp(start: jax.Array, end: jax.Array, weight: jax.Array) -> jax.Array:
    """torch.lerp's arithmetic: from the nearer end, so that its rounding is torch's too."""
    return jnp.where(weight < 0.5, start + weight * (end - start), end - (end - start) * (1 - weight))


def _mm(x: jax.Array, y: jax.Array, dtype: Any) -> jax.Array:
    """Product with fp32 accumulation, rounded to ``dtype``. fp32 operands are multiplied at full precision (GPUs
    and TPUs would otherwise use TF32 or bf16 passes); on CPU bf16 operands are widened first (exact, faster)."""
    if jax.default_backend() == "cpu":
        x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    precision = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
    return jnp.matmul(x, y, preferred_element_type=jnp.float32, precision=precision).astype(dtype)


def _frobenius(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(-2, -1), keepdims=True))


def polar_express(g: jax.Array, steps: int = 5, dtype: Any = jnp.bfloat16) -> jax.Array:
    """MuonEq, normalisation and ``steps`` Polar Express iterations of ``g`` (…, out, in) in torch's layout, in
    ``dtype`` (each product accumulated in fp32 and rounded, each fused expression rounded once); fp32 result."""
    rows, cols = g.shape[-2:]
    x = g.astype(dtype)
    target = _frobenius(x) / math.sqrt(rows)
    row_norm = jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)), 1e-6)
    x = (x.astype(jnp.float32) * (target / row_norm).astype(dtype).astype(jnp.float32)).astype(dtype)
    x = (x.astype(jnp.float32) / (_frobenius(x) * 1.01 + 1e-6)).astype(dtype)
    tall = rows > cols
    for a, b, c in POLAR_EXPRESS[:steps]:
        xt = jnp.swapaxes(x, -1, -2)
        gram = _mm(xt, x, dtype) if tall else _mm(x, xt, dtype)
        poly = (b * gram.astype(jnp.float32) + c * _mm(gram, gram, dtype).astype(jnp.float32)).astype(dtype)
        x = (a * x.astype(jnp.float32) + _mm(x, poly, jnp.float32) if tall else
             a * x.astype(jnp.float32) + _mm(poly, x, jnp.float32)).astype(dtype)
    return x.astype(jnp.float32)


def _reduced_axis(shape: tuple[int, ...]) -> int:
    """NorMuon's averaged axis of an (…, out, in) matrix: over inputs (a moment per output neuron) unless wide."""
    return -1 if shape[-2] >= shape[-1] else -2


def _muon_plus(g: jax.Array) -> jax.Array:
    """``g`` rescaled to the Frobenius norm √min(out, in) of a semi-orthogonal matrix."""
    target = math.sqrt(min(g.shape[-2:]))
    return g * (target / jnp.maximum(_frobenius(g), 1e-6))


def _normuon(g: jax.Array, moment: jax.Array, beta2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """NorMuon's variance reduction of ``g`` (…, out, in): (rescaled update, new second moment)."""
    axis = _reduced_axis(g.shape)
    size = g.shape[axis]
    v_mean = jnp.mean(jnp.square(g), axis=axis, keepdims=True)
    v_norm = jnp.sqrt(jnp.sum(v_mean, axis=(-2, -1), keepdims=True) * size)
    moment = _lerp(jnp.expand_dims(moment, axis), v_mean, 1 - beta2)
    step = jax.lax.rsqrt(jnp.maximum(moment, 1e-10))
    v_norm_new = jnp.sqrt(jnp.sum(v_mean * size * jnp.square(step), axis=(-2, -1), keepdims=True))
    return g * (step * (v_norm / jnp.maximum(v_norm_new, 1e-10))), jnp.squeeze(moment, axis)


class NorMuonState(NamedTuple):
    momentum_buffer: optax.Updates  # fp32, the parameter's shape
    second_moment: optax.Updates  # fp32, the parameter's shape less the averaged axis


def normuon(learning_rate: float | jax.Array, momentum: float | jax.Array, weight_decay: float | jax.Array, *,
            beta2: float = 0.9, ns_steps: int = 5, ns_dtype: Any = jnp.bfloat16) -> optax.GradientTransformation:
    """nanochat's 2026 Muon update of ``(…, in, out)`` kernels, learning rate and cautious weight decay included
    (the returned updates are added to the parameters)."""

    def init(params: optax.Params) -> NorMuonState:
        def moment(p: jax.Array) -> jax.Array:
            *lead, n_in, n_out = p.shape
            return jnp.zeros((*lead, n_out if n_out >= n_in else n_in), jnp.float32)

        return NorMuonState(jax.tree.map(lambda p: jnp.zeros_like(p, dtype=jnp.float32), params),
                            jax.tree.map(moment, params))

    def update(updates: optax.Updates, state: NorMuonState, params: optax.Params | None = None):
        if params is None:
            raise ValueError("normuon's cautious weight decay needs the parameters: call update(grads, state, params)")
        m, lr, wd = (jnp.asarray(v, jnp.float32) for v in (momentum, learning_rate, weight_decay))
        grads, treedef = jax.tree.flatten(updates)
        leaves = [grads] + [jax.tree.leaves(t) for t in (state.momentum_buffer, state.second_moment, params)]
        out: list[list] = [[None] * len(grads) for _ in range(3)]  # steps, momentum buffers, second moments
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, g in enumerate(grads):
            by_shape.setdefault(g.shape, []).append(i)
        for indices in by_shape.values():  # one program per shape, on the stack of its matrices
            g, buf, moment, p = (jnp.swapaxes(jnp.stack([x[i] for i in indices]).astype(jnp.float32), -1, -2)
                                 if k != 2 else jnp.stack([x[i] for i in indices]) for k, x in enumerate(leaves))
            buf = _lerp(buf, g, 1 - m)
            u = polar_express(_lerp(g, buf, m), ns_steps, ns_dtype)
            u, moment = _normuon(_muon_plus(u), moment, jnp.float32(beta2))
            scaled_lr = lr * math.sqrt(max(1.0, u.shape[-2] / u.shape[-1]))
            step = jnp.swapaxes(-(scaled_lr * u + scaled_lr * wd * p * (u * p >= 0)), -1, -2)
            for j, i in enumerate(indices):
                out[0][i] = step[j].astype(grads[i].dtype)
                out[1][i], out[2][i] = jnp.swapaxes(buf[j], -1, -2), moment[j]
        steps, bufs, moments = (jax.tree.unflatten(treedef, x) for x in out)
        return steps, NorMuonState(bufs, moments)

    return optax.GradientTransformation(init, update)


# ---- the whole optimizer ------------------------------------------------------------------------------------


def build_optimizer(opt_cfg: OptimizerConfig, model_cfg: ModelConfig, *, init_lr_frac: float = 1.0,
                    lr_scale: float = 1.0) -> optax.GradientTransformationExtraArgs:
    """The 2026 optimizer: optional global-norm clip (0 in the recipe), then the six AdamW groups and Muon.

    ``lr_scale`` multiplies every learning rate but the smear group's (the batch factor √(B/B_ref)). The state
    starts at LR multiplier 1, Muon momentum ``opt_cfg.muon_momentum`` and weight decay ``opt_cfg.weight_decay``.
    """
    settings = group_settings(opt_cfg, model_cfg, lr_scale=lr_scale, init_lr_frac=init_lr_frac)
    muon = settings[MUON]

    def make(lr_multiplier: jax.Array, muon_momentum: jax.Array, muon_weight_decay: jax.Array):
        transforms = {
            group: optax.adamw(s["lr"] * lr_multiplier, b1=s["betas"][0], b2=s["betas"][1], eps=s["eps"],
                               weight_decay=s["weight_decay"])
            for group, s in settings.items() if s["kind"] == "adamw"
        }
        transforms[MUON] = normuon(muon["lr"] * lr_multiplier, muon_momentum, muon_weight_decay, beta2=muon["beta2"],
                                   ns_steps=muon["ns_steps"], ns_dtype=NS_DTYPES[opt_cfg.ns_dtype])
        groups = optax.partition(transforms, param_labels)
        if opt_cfg.grad_clip > 0:
            return optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip), groups)
        return groups

    return optax.inject_hyperparams(make, hyperparam_dtype=jnp.float32)(
        **{LR_MULTIPLIER: 1.0, MUON_MOMENTUM: opt_cfg.muon_momentum, MUON_WEIGHT_DECAY: opt_cfg.weight_decay}
    )


# ---- a run's horizon and schedules --------------------------------------------------------------------------


def run_horizon(config: Config) -> horizon.Horizon:
    """The horizon of ``config``'s run: its model, ``training.target_param_data_ratio``, its batch and
    ``optimizer.weight_decay`` (:func:`revjax.horizon.horizon`)."""
    t = config.training
    return horizon.horizon(config.model, t.target_param_data_ratio, t.total_batch_tokens, config.optimizer.weight_decay)


def base_schedule(step: int, num_iterations: int, config: Config, weight_decay: float) -> tuple[float, float, float]:
    """(LR multiplier, Muon momentum, Muon weight decay) at ``step`` of a pretraining run of ``num_iterations``
    steps whose scaled weight decay is ``weight_decay``."""
    o, s = config.optimizer, config.schedule
    warmup = s.warmup_steps if s.warmup_steps >= 0 else round(s.warmup_ratio * num_iterations)
    return (horizon.lr_multiplier(step, num_iterations, warmup, s.warmdown_ratio, s.final_lr_frac),
            horizon.muon_momentum(step, num_iterations, s.warmdown_ratio, start=o.muon_momentum_start,
                                  peak=o.muon_momentum, final=o.muon_momentum_final,
                                  warmup=o.muon_momentum_warmup_steps),
            horizon.muon_weight_decay(step, num_iterations, weight_decay))
