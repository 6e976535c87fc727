"""The train step: one jitted, sharded, donated function with gradient accumulation inside; the loss is passed in.

A step consumes a global batch: a dict of arrays of shape ``(accum, rows, T)`` (``inputs``, ``targets`` and
whatever the loss reads, e.g. ``advantages``): ``accum`` micro-batches, each split over the data-parallel devices.
A loss function maps ``(model, micro-batch)`` to the *sum* of its per-token losses; the step divides by the number
of scored targets (≥ 0) of the whole step, so the result does not depend on how the batch is split into
micro-batches or devices.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from revjax import sharding as shd
from revjax.losses import model_loss
from revjax.model import GPT
from revjax.optim import schedule_names, set_schedule
from revjax.state import TrainState
from revjax.train.diagnostics import step_diagnostics
from revjax.train.errors import BatchSplitError


Batch = dict[str, jax.Array]
LossFn = Callable[[GPT, Batch], jax.Array]


def next_token_loss(model: GPT, batch: Batch) -> jax.Array:
    """Summed cross-entropy over the scored targets of one micro-batch (base, mid, SFT); fused and chunked
    unless ``model.loss_chunk`` is 0."""
    return model_loss(model, batch["inputs"], batch["targets"])


def policy_gradient_loss(model: GPT, batch: Batch) -> jax.Array:
    """−Σ advantage · log p(sampled token) over the sampled tokens (RL; ``advantages`` per token, 0 elsewhere)."""
    return model_loss(model, batch["inputs"], batch["targets"], batch["advantages"])


LOSSES: dict[str, LossFn] = {"next_token": next_token_loss, "policy_gradient": policy_gradient_loss}


def accumulation_steps(total_batch_tokens: int, device_batch_size: int, seq_len: int, dp_size: int) -> int:
    """How many micro-batches make one optimizer step; refuses a batch that does not divide evenly."""
    per_micro = device_batch_size * seq_len * dp_size
    if total_batch_tokens % per_micro:
        raise BatchSplitError(
            f"training.total_batch_tokens={total_batch_tokens} is not a multiple of device_batch_size × sequence_len "
            f"× data-parallel devices = {device_batch_size}×{seq_len}×{dp_size} = {per_micro}; change one of them"
        )
    return total_batch_tokens // per_micro


def build_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    state_shardings: TrainState,
    loss: LossFn = next_token_loss,
    *,
    diagnostics: bool = False,
) -> Callable[..., tuple[TrainState, dict]]:
    """``step(state, batch, lr_multiplier, muon_momentum) -> (state, metrics)``, jitted and donating state.

    The scalars after the batch are the optimizer's scheduled hyperparameters (:func:`revjax.optim.schedule_names`):
    the nanochat-2026 optimizer takes a third, ``muon_weight_decay``. Each is also in ``metrics`` under its name.
    With ``diagnostics`` (the research log's program) the step takes one more argument, ``diagnose`` (a bool): the
    same update, and ``metrics["diagnostics"]`` (:mod:`revjax.train.diagnostics`) computed only where ``diagnose``
    is true (a ``lax.cond``; other steps skip it at run time), so one program serves every step of the run.
    """
    batch_sharding = shd.step_batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())
    scheduled = schedule_names(state_shardings.opt_state)

    def step(state: TrainState, batch: Batch, *args):
        values, diagnose = args[:len(scheduled)], (args[len(scheduled)] if diagnostics else None)
        n_scored = jnp.maximum(jnp.sum(batch["targets"] >= 0), 1).astype(jnp.float32)
        grad_fn = jax.value_and_grad(lambda p, micro: loss(nnx.merge(graphdef, p), micro) / n_scored)

        def micro(carry, micro_batch):
            value, grads = grad_fn(state.params, micro_batch)
            return (carry[0] + value, jax.tree.map(jnp.add, carry[1], grads)), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (value, grads), _ = jax.lax.scan(micro, (jnp.zeros((), jnp.float32), zeros), batch)
        opt_state = set_schedule(state.opt_state, *values)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads), "scored_tokens": n_scored,
                   "params_finite": jnp.isfinite(optax.tree.norm(params)),
                   # what the optimizer itself read this step
                   **{name: opt_state.hyperparams[name] for name in scheduled}}
        if diagnostics:
            # read through a barrier, so the update above compiles as in the plain step whatever is added here
            seen = jax.lax.optimization_barrier((state.params, batch, grads))
            metrics["diagnostics"] = step_diagnostics(graphdef, *seen, diagnose)
        return TrainState(params, opt_state), metrics

    return shd.UnderMesh(jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding) + (replicated,) * (len(scheduled) + bool(diagnostics)),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    ), mesh)
