"""Research diagnostics computed inside a train step: per-token loss statistics, loss and accuracy by position,
gradient norms per parameter group and per layer, and activation RMS per layer.

A step built with diagnostics (:func:`revjax.train.step.build_train_step` with ``diagnostics=True``, the program of
a run with ``logging.hdf5``) runs the same update as a plain step and returns these as extra outputs under
``metrics["diagnostics"]``, computed only on the steps it is told to (the research log's ``logging.hdf5_every``
and ``logging.hdf5_layers_every``): a ``lax.cond`` skips them at run time on the others, so the run compiles one
program and the other steps pay only for a skipped branch.

* ``tokens``: one extra forward pass per micro-batch on the parameters before the update gives each scored
  token's cross-entropy and whether the argmax is the target. Over all scored tokens of the step: ``mean``,
  ``std``, ``max``, ``percentiles`` at :data:`PERCENTILES`, ``accuracy`` and ``count``; over the rows, by input
  position (T,): ``loss_by_position``, ``accuracy_by_position`` and ``count_by_position`` (NaN where a position
  has no scored token).
* ``layers``: the L2 norms of the step's accumulated gradients (the ones the optimizer reads) per group
  (``embedding``, ``head``, ``attention``, ``mlp``) and per block (``layer``, ``layer_attention``, ``layer_mlp``,
  each (L,)), and ``activation_rms`` (L,), the RMS of the residual stream after each block over the whole step's
  batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from revjax.losses import token_losses
from revjax.model import GPT, cross_entropy

PERCENTILES = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
GROUPS = ("embedding", "head", "attention", "mlp", "scalars")
# the 2026 recipe's value embeddings count as embeddings; its lambdas and smear/backout gates and scalars as scalars
_TOP_GROUP = {"wte": "embedding", "value_embeds": "embedding", "lm_head": "head", "resid_lambdas": "scalars",
              "x0_lambdas": "scalars", "smear_gate": "scalars", "smear_lambda": "scalars", "backout_lambda": "scalars"}
_BLOCK_KIND = {"attn": "attention", "mlp": "mlp"}


def forward_probe(model: GPT, micro: dict) -> dict:
    """One micro-batch's per-token cross-entropy and correctness (B, T) and residual RMS per block (L,)."""
    h, act_rms = model.features_with_stats(micro["inputs"])
    targets = micro["targets"]
    chunk = model.config.loss_chunk
    if chunk:
        nll, correct = token_losses(h, model.lm_head.kernel[...], targets, chunk=chunk)
    else:
        logits = model.head(h)
        nll = cross_entropy(logits, targets, reduction="none")
        correct = (jnp.argmax(logits, axis=-1) == targets) & (targets >= 0)
    return {"nll": nll, "correct": correct, "act_rms": act_rms}


def token_statistics(nll: jax.Array, correct: jax.Array, targets: jax.Array) -> dict:
    """Statistics over the scored tokens of arrays shaped (..., rows, T); by position over all leading axes."""
    valid = targets >= 0
    count = jnp.sum(valid)
    n = jnp.maximum(count, 1).astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, nll, 0.0)) / n
    var = jnp.sum(jnp.where(valid, jnp.square(nll - mean), 0.0)) / n
    axes = tuple(range(nll.ndim - 1))
    by_count = jnp.sum(valid, axis=axes)
    nan = jnp.float32(jnp.nan)
    per = lambda x: jnp.where(by_count > 0, jnp.sum(x, axis=axes) / jnp.maximum(by_count, 1), nan)  # noqa: E731
    return {
        "mean": mean,
        "std": jnp.sqrt(var),
        "max": jnp.max(jnp.where(valid, nll, -jnp.inf)),
        "percentiles": jnp.nanpercentile(jnp.where(valid, nll, nan).reshape(-1), jnp.asarray(PERCENTILES)),
        "accuracy": jnp.sum(correct & valid) / n,
        "count": count,
        "loss_by_position": per(jnp.where(valid, nll, 0.0)),
        "accuracy_by_position": per((correct & valid).astype(jnp.float32)),
        "count_by_position": by_count,
    }


def gradient_norms(grads, n_layer: int) -> dict:
    """L2 norms of ``grads`` per group and per block, for per-layer (``blocks/<i>/…``) or stacked (a leading L
    axis under ``blocks``) layouts."""
    group = {name: jnp.zeros((), jnp.float32) for name in GROUPS}
    layer = {kind: jnp.zeros((n_layer,), jnp.float32) for kind in ("layer", "layer_attention", "layer_mlp")}
    for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
        keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
        squares = jnp.square(leaf.astype(jnp.float32))
        if keys[0] != "blocks":
            group[_TOP_GROUP[keys[0]]] += jnp.sum(squares)
            continue
        if isinstance(keys[1], int):
            per_layer = jnp.zeros((n_layer,), jnp.float32).at[keys[1]].set(jnp.sum(squares))
        else:
            per_layer = jnp.sum(squares.reshape(n_layer, -1), axis=1)
        kind = next(_BLOCK_KIND[k] for k in keys if k in _BLOCK_KIND)
        group[kind] += jnp.sum(per_layer)
        layer["layer"] += per_layer
        layer[f"layer_{kind}"] += per_layer
    return {name: jnp.sqrt(value) for name, value in {**group, **layer}.items()}


def layer_statistics(grads, act_rms_AL: jax.Array, n_layer: int) -> dict:
    """Gradient norms and the residual RMS per block over the step (micro-batches of equal size: the RMS of the
    whole batch is the root mean square of theirs)."""
    return {**gradient_norms(grads, n_layer), "activation_rms": jnp.sqrt(jnp.mean(jnp.square(act_rms_AL), axis=0))}


def step_diagnostics(graphdef: nnx.GraphDef, params, batch: dict, grads, diagnose: jax.Array) -> dict:
    """``{"tokens": …, "layers": …}`` for a step's batch (accum, rows, T), the parameters it started from and the
    gradients it accumulated, where ``diagnose`` is true; zeros of the same shapes otherwise (skipped at run
    time)."""

    def compute(params, batch, grads):
        probes = jax.lax.map(lambda micro: forward_probe(nnx.merge(graphdef, params), micro), batch)
        return {"tokens": token_statistics(probes["nll"], probes["correct"], batch["targets"]),
                "layers": layer_statistics(grads, probes["act_rms"], probes["act_rms"].shape[-1])}

    shapes = jax.eval_shape(compute, params, batch, grads)
    skip = lambda *_: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)  # noqa: E731
    return jax.lax.cond(diagnose, compute, skip, params, batch, grads)
