"""onanchat's optimizer as one optax transformation: Muon for block matrices, two AdamW groups, LR schedules.

Groups (``setup_optimizers``): every matrix under ``blocks`` is trained by Muon (lr ``matrix_lr``); ``wte`` and
``lm_head`` by AdamW (β 0.8/0.95, eps 1e-10) with lrs ``embedding_lr·s`` and ``unembedding_lr·s``,
``s = (n_embd/768)^-0.5``. Gradients may first be clipped to a global norm over all parameters.

The two scheduled quantities, the LR multiplier and the Muon momentum, are injected hyperparameters stored in
the optimizer state, so the host changes them every step without recompiling. :func:`build_optimizer` builds the
nanochat-2026 optimizer instead (:mod:`revjax.optim_2026`) when ``optimizer.recipe`` (or, with ``auto``,
``model.recipe``) says so; its state holds a third scheduled quantity, the Muon weight decay. The state holds only arrays
(checkpointable), and every per-parameter buffer has its parameter's shape (shardable like the parameters).

The per-parameter buffers take the sharding of the parameters they are initialised from (``tx.init`` on sharded
parameters, outside ``jit``). The training step should use the functional API, a plain ``jax.jit`` over the
parameter state::

    graphdef, params = nnx.split(model, nnx.Param)
    tx = build_optimizer(cfg.optimizer, cfg.model, init_lr_frac=cfg.schedule.init_lr_frac)
    opt_state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, inputs, targets, lrm, momentum):
        opt_state = set_schedule(opt_state, lrm, momentum)
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p), inputs, targets))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # host, each step: lrm = lr_multiplier(step, n, cfg.schedule); momentum = muon_momentum(step, cfg.optimizer)

``nnx.Optimizer(model, tx, wrt=nnx.Param)`` works too; ``set_schedule(optimizer.opt_state, lrm, momentum)``
then writes the values into its state in place.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from revjax import horizon, optim_2026
from revjax.config import ModelConfig, OptimizerConfig, ScheduleConfig
from revjax.errors import RevjaxError
from revjax.optim_2026 import LR_MULTIPLIER, MUON_MOMENTUM, MUON_WEIGHT_DECAY
from revjax.phases import ScheduleKind

MUON = "muon"
ADAM_EMBEDDING = "adam_embedding"
ADAM_HEAD = "adam_head"
GROUPS = (MUON, ADAM_EMBEDDING, ADAM_HEAD)
_GROUP_OF_TOP_KEY = {"blocks": MUON, "wte": ADAM_EMBEDDING, "lm_head": ADAM_HEAD}

NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7
NS_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}

ONANCHAT_2025, NANOCHAT_2026 = "onanchat-2025", "nanochat-2026"
SCHEDULED = (LR_MULTIPLIER, MUON_MOMENTUM, MUON_WEIGHT_DECAY)  # the order a train step takes them in

OptState = TypeVar("OptState")


class LabelError(RevjaxError, ValueError):
    """A parameter without a valid optimizer group, described in one sentence."""


# ---- parameter groups -------------------------------------------------------------------------------------


def _path_name(path: tuple) -> str:
    """'blocks/0/attn/c_q/kernel' for a key path, ignoring the ``value`` attribute of an nnx Variable."""
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _label(path: tuple, leaf: Any) -> str:
    name = _path_name(path)
    group = _GROUP_OF_TOP_KEY.get(name.split("/")[0])
    if group is None:
        raise LabelError(f"parameter '{name}' belongs to no optimizer group (expected wte, lm_head or blocks/...)")
    if group == MUON and jnp.ndim(leaf) < 2:
        raise LabelError(f"parameter '{name}' has shape {jnp.shape(leaf)}, but Muon only trains matrices")
    return group


def param_labels(params: Any) -> Any:
    """A pytree like ``params`` naming each leaf's group: ``muon`` (blocks), ``adam_embedding`` (wte), ``adam_head``."""
    return jax.tree_util.tree_map_with_path(_label, params)


def check_labels(params: Any, labels: Any) -> None:
    """Raise a LabelError unless ``labels`` gives every parameter of ``params`` exactly one known group."""
    param_paths = [_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    labelled = {_path_name(p): label for p, label in jax.tree_util.tree_flatten_with_path(labels)[0]}
    for name in param_paths:
        if name not in labelled:
            raise LabelError(f"parameter '{name}' has no optimizer group label")
        if labelled[name] not in GROUPS:
            raise LabelError(f"parameter '{name}' is labelled {labelled[name]!r}, which is not one of {GROUPS}")
    extra = sorted(set(labelled) - set(param_paths))
    if extra:
        raise LabelError(f"the label '{extra[0]}' names no parameter")


# ---- Muon ---------------------------------------------------------------------------------------------------


def _round_to(x: jax.Array, dtype: Any) -> jax.Array:
    """Round fp32 values to ``dtype``'s precision, keeping fp32 storage (an explicit op XLA never elides)."""
    info = jnp.finfo(dtype)
    return jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def _mm(x: jax.Array, y: jax.Array) -> jax.Array:
    """Matrix product with fp32 accumulation and an fp32 result.

    XLA:CPU multiplies bf16 matrices more slowly than fp32 ones, so there bf16 operands are widened first: a bf16
    value is exact in fp32 and so is the product of two, so the result is the same up to summation order.
    """
    if jax.default_backend() == "cpu":
        x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    return jnp.matmul(x, y, preferred_element_type=jnp.float32)


def newton_schulz5(g: jax.Array, steps: int = 5, dtype: Any = jnp.bfloat16) -> jax.Array:
    """nanochat's quintic Newton–Schulz orthogonalisation of ``g`` (..., out, in) in torch's layout, in ``dtype``.

    Tall matrices are transposed so that ``X·Xᵀ`` is the smaller Gram matrix. Rounding follows nanochat's
    ``torch.compile``d function: the Frobenius normalisation is fused with the cast to ``dtype`` (computed in fp32),
    matrix products accumulate in fp32, and each fused ``p·M + Q·R`` rounds to ``dtype`` once. The result is
    ``dtype``; nanochat's is bf16, and fp32 gives an update that is reproducible across device layouts.
    """
    a, b, c = NS_COEFFS
    x32 = g.astype(jnp.float32)
    tall = x32.shape[-2] > x32.shape[-1]
    if tall:
        x32 = jnp.swapaxes(x32, -1, -2)
    x32 = x32 / (jnp.sqrt(jnp.sum(jnp.square(x32), axis=(-2, -1), keepdims=True)) + NS_EPS)
    for _ in range(steps):
        x = x32.astype(dtype)
        gram = _mm(x, jnp.swapaxes(x, -1, -2)).astype(dtype)
        gram32 = gram.astype(jnp.float32)
        poly = (_round_to(b * gram32, dtype) + _mm((c * gram32).astype(dtype), gram)).astype(dtype)
        x32 = _round_to(_round_to(a * x32, dtype) + _mm(poly, x), dtype)
    x = x32.astype(dtype)
    return jnp.swapaxes(x, -1, -2) if tall else x


def orthogonalize_kernel(kernel: jax.Array, steps: int = 5, dtype: Any = jnp.bfloat16) -> jax.Array:
    """Newton–Schulz of an ``(in, out)`` kernel, run on its ``(out, in)`` transpose to reproduce torch's numerics."""
    return jnp.swapaxes(newton_schulz5(jnp.swapaxes(kernel, -1, -2), steps, dtype), -1, -2)


def orthogonalize_kernels(kernels: list[jax.Array], steps: int = 5, dtype: Any = jnp.bfloat16) -> list[jax.Array]:
    """:func:`orthogonalize_kernel` of each kernel, batched over kernels of equal shape (one NS5 per shape)."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, kernel in enumerate(kernels):
        by_shape.setdefault(kernel.shape, []).append(i)
    out: dict[int, jax.Array] = {}
    for indices in by_shape.values():
        stacked = orthogonalize_kernel(jnp.stack([kernels[i] for i in indices]), steps, dtype)
        out.update((i, stacked[j]) for j, i in enumerate(indices))
    return [out[i] for i in range(len(kernels))]


def muon_shape_scale(shape: tuple[int, ...]) -> float:
    """√max(1, fan_out/fan_in) for an ``(..., in, out)`` kernel (×2 for the MLP's 4× up-projection)."""
    return math.sqrt(max(1.0, shape[-1] / shape[-2]))


class MuonState(NamedTuple):
    momentum_buffer: optax.Updates  # fp32, one per matrix


def scale_by_muon(
    momentum: float | jax.Array, ns_steps: int = 5, ns_dtype: Any = jnp.bfloat16
) -> optax.GradientTransformation:
    """Muon's direction without the learning rate: lerp momentum, Nesterov, NS5 (bf16 by default), × shape scale.

    ``buf ← m·buf + (1−m)·g``; ``u = NS5((1−m)·g + m·buf)·√max(1, out/in)``; no bias correction, no weight decay.
    """

    def init(params: optax.Params) -> MuonState:
        return MuonState(jax.tree.map(lambda p: jnp.zeros_like(p, dtype=jnp.float32), params))

    def update(updates: optax.Updates, state: MuonState, params: optax.Params | None = None):
        del params
        m = jnp.asarray(momentum, jnp.float32)
        buf = jax.tree.map(lambda b, g: m * b + (1 - m) * g.astype(jnp.float32), state.momentum_buffer, updates)
        grads, treedef = jax.tree.flatten(updates)
        nesterov = [(1 - m) * g.astype(jnp.float32) + m * b for g, b in zip(grads, jax.tree.leaves(buf))]
        directions = [
            (muon_shape_scale(g.shape) * o.astype(jnp.float32)).astype(g.dtype)
            for g, o in zip(grads, orthogonalize_kernels(nesterov, ns_steps, ns_dtype))
        ]
        return jax.tree.unflatten(treedef, directions), MuonState(buf)

    return optax.GradientTransformation(init, update)


# ---- the whole optimizer ------------------------------------------------------------------------------------


def dmodel_lr_scale(model_cfg: ModelConfig) -> float:
    """(n_embd/768)^-0.5, applied to the AdamW groups only."""
    return (model_cfg.n_embd / 768) ** -0.5


def group_learning_rates(
    opt_cfg: OptimizerConfig, model_cfg: ModelConfig, init_lr_frac: float = 1.0
) -> dict[str, float]:
    """Each group's initial learning rate (the LR multiplier scales all three)."""
    s = dmodel_lr_scale(model_cfg)
    return {
        MUON: opt_cfg.matrix_lr * init_lr_frac,
        ADAM_EMBEDDING: opt_cfg.embedding_lr * s * init_lr_frac,
        ADAM_HEAD: opt_cfg.unembedding_lr * s * init_lr_frac,
    }


def optimizer_recipe(opt_cfg: OptimizerConfig, model_cfg: ModelConfig) -> str:
    """The optimizer's recipe: ``optimizer.recipe``, or with ``auto`` the model's."""
    if opt_cfg.recipe != "auto":
        return opt_cfg.recipe
    return getattr(model_cfg, "recipe", None) or ONANCHAT_2025


def build_optimizer(
    opt_cfg: OptimizerConfig, model_cfg: ModelConfig, *, init_lr_frac: float = 1.0, batch_tokens: int | None = None
) -> optax.GradientTransformationExtraArgs:
    """onanchat's optimizer: optional global-norm clip, then Muon (blocks) and AdamW (wte, lm_head).

    The state starts with LR multiplier 1 and Muon momentum ``opt_cfg.muon_momentum``; change them with
    :func:`set_schedule`. ``init_lr_frac`` multiplies every initial learning rate (mid/SFT/RL). Clipping is
    base_train's (``grad_clip`` 0 disables it, as mid/SFT/RL need); unlike torch's it adds no 1e-6 to the norm.

    Under the nanochat-2026 recipe (:func:`optimizer_recipe`) it is :func:`revjax.optim_2026.build_optimizer`, its
    learning rates × √(batch_tokens/2^19) (``batch_tokens`` None: the reference batch, factor 1).
    """
    if optimizer_recipe(opt_cfg, model_cfg) == NANOCHAT_2026:
        scale = 1.0 if batch_tokens is None else horizon.batch_lr_scale(batch_tokens)
        return optim_2026.build_optimizer(opt_cfg, model_cfg, init_lr_frac=init_lr_frac, lr_scale=scale)
    lrs = group_learning_rates(opt_cfg, model_cfg, init_lr_frac)

    def adamw(lr: jax.Array) -> optax.GradientTransformation:
        return optax.adamw(lr, b1=opt_cfg.adam_beta1, b2=opt_cfg.adam_beta2, eps=opt_cfg.adam_eps,
                           weight_decay=opt_cfg.weight_decay)

    def make(lr_multiplier: jax.Array, muon_momentum: jax.Array) -> optax.GradientTransformation:
        groups = optax.partition(
            {
                MUON: optax.chain(scale_by_muon(muon_momentum, opt_cfg.ns_steps, NS_DTYPES[opt_cfg.ns_dtype]),
                                  optax.scale_by_learning_rate(lrs[MUON] * lr_multiplier)),
                ADAM_EMBEDDING: adamw(lrs[ADAM_EMBEDDING] * lr_multiplier),
                ADAM_HEAD: adamw(lrs[ADAM_HEAD] * lr_multiplier),
            },
            param_labels,
        )
        if opt_cfg.grad_clip > 0:
            return optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip), groups)
        return groups

    return optax.inject_hyperparams(make, hyperparam_dtype=jnp.float32)(
        **{LR_MULTIPLIER: 1.0, MUON_MOMENTUM: opt_cfg.muon_momentum}
    )


def schedule_names(opt_state: Any) -> tuple[str, ...]:
    """The scheduled hyperparameters ``opt_state`` holds, in the order :func:`set_schedule` (and a train step)
    takes them: LR multiplier and Muon momentum, and the Muon weight decay of the nanochat-2026 optimizer."""
    hyperparams = getattr(opt_state, "hyperparams", None)
    names = tuple(name for name in SCHEDULED if isinstance(hyperparams, dict) and name in hyperparams)
    if not isinstance(hyperparams, dict) or set(hyperparams) != set(names) or names[:2] != SCHEDULED[:2]:
        raise TypeError(f"set_schedule needs the state of build_optimizer's optimizer, got {type(opt_state).__name__}")
    return names


def set_schedule(opt_state: OptState, lr_multiplier: float | jax.Array, muon_momentum: float | jax.Array,
                 muon_weight_decay: float | jax.Array | None = None) -> OptState:
    """``opt_state`` (from :func:`build_optimizer`) with the LR multiplier and Muon momentum replaced, and the Muon
    weight decay of the nanochat-2026 optimizer too when given (else it keeps its stored value).

    Works on host and inside ``jit`` (values become fp32 scalars, so changing them never recompiles). An
    ``nnx.Optimizer``'s ``opt_state`` holds Variables: they are written in place and ``opt_state`` itself is returned.
    """
    names = schedule_names(opt_state)
    if muon_weight_decay is not None and MUON_WEIGHT_DECAY not in names:
        raise TypeError("this optimizer (onanchat-2025's) schedules no Muon weight decay; call set_schedule with "
                        "the LR multiplier and the Muon momentum only")
    given = (lr_multiplier, muon_momentum, muon_weight_decay)
    values = {name: jnp.asarray(value, jnp.float32) for name, value in zip(SCHEDULED, given) if value is not None}
    hyperparams = opt_state.hyperparams
    if all(isinstance(v, nnx.Variable) for v in hyperparams.values()):
        for key, value in values.items():
            hyperparams[key][...] = value
        return opt_state
    return opt_state._replace(hyperparams={**hyperparams, **values})


def get_schedule(opt_state: Any) -> tuple[float, ...]:
    """The (LR multiplier, Muon momentum[, Muon weight decay]) currently stored in ``opt_state``."""
    return tuple(float(jnp.asarray(opt_state.hyperparams[k][...])) for k in schedule_names(opt_state))


# ---- schedules ----------------------------------------------------------------------------------------------


def base_lr_multiplier(step: int, num_iterations: int, sched: ScheduleConfig) -> float:
    """base_train: linear warmup ``(it+1)/W`` (``schedule.warmup_steps``, else ``warmup_ratio·N``), flat at 1,
    then linear warmdown reaching final_lr_frac at it = N."""
    warmup = sched.warmup_steps if sched.warmup_steps >= 0 else round(sched.warmup_ratio * num_iterations)
    return horizon.lr_multiplier(step, num_iterations, warmup, sched.warmdown_ratio, sched.final_lr_frac)


def mid_lr_multiplier(progress: float) -> float:
    """mid_train: 1 until 80 % of the epoch, then linear to 0 at the end."""
    return 1.0 if progress < 0.8 else 1.0 - (progress - 0.8) / 0.2


def lr_multiplier(step: int, num_iterations: int, sched: ScheduleConfig, kind: ScheduleKind = "base") -> float:
    """The LR multiplier at ``step``: ``base`` (pretraining), ``mid`` (progress step/N) or ``linear`` (1 − step/N).

    Mid-training over one epoch of unknown length uses :func:`mid_lr_multiplier` with the data cursor's progress.
    """
    if num_iterations < 1:
        raise ValueError(f"num_iterations={num_iterations} must be positive to schedule the learning rate")
    if kind == "base":
        return base_lr_multiplier(step, num_iterations, sched)
    if kind == "mid":
        return mid_lr_multiplier(step / num_iterations)
    if kind == "linear":
        return 1.0 - step / num_iterations
    raise ValueError(f"unknown LR schedule kind {kind!r}; use 'base', 'mid' or 'linear'")


def muon_momentum(step: int, opt_cfg: OptimizerConfig) -> float:
    """Muon momentum ramp (base and mid training): start → final over ``muon_momentum_warmup_steps`` steps.

    SFT and RL keep the constant ``opt_cfg.muon_momentum``.
    """
    warmup = opt_cfg.muon_momentum_warmup_steps
    frac = min(step / warmup, 1.0) if warmup > 0 else 1.0
    return (1 - frac) * opt_cfg.muon_momentum_start + frac * opt_cfg.muon_momentum
