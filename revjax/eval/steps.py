"""Bits per byte: the validation metric that compares models across tokenizers and directions.

Every scored target contributes its cross-entropy (nats) and its byte length from the tokenizer's ``token_bytes``
table; special tokens have 0 bytes and are left out of both sums. Every direction scores the same tokens of a
document (the direction module guarantees it), so the same bytes are counted forward, backward or bidirectionally.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from revjax import sharding as shd
from revjax.losses import model_token_nll


def build_eval_step(graphdef: nnx.GraphDef, mesh: Mesh, param_shardings: Any, token_bytes: np.ndarray) -> Callable:
    """``eval_step(params, inputs, targets) -> (nats of byte-bearing targets, their bytes, nats of every scored
    target, scored targets)`` summed over the batch, jitted and sharded."""
    table = jax.device_put(jnp.asarray(token_bytes, jnp.int32), NamedSharding(mesh, P()))
    batch = shd.batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())

    def step(params, inputs, targets):
        nll = model_token_nll(nnx.merge(graphdef, params), inputs, targets)  # fused unless model.loss_chunk=0
        nbytes = jnp.where(targets >= 0, table[jnp.maximum(targets, 0)], 0)
        return jnp.sum(jnp.where(nbytes > 0, nll, 0.0)), jnp.sum(nbytes), jnp.sum(nll), jnp.sum(targets >= 0)

    return shd.UnderMesh(jax.jit(step, in_shardings=(param_shardings, batch, batch), out_shardings=replicated), mesh)


def evaluate_loss(
    eval_step: Callable, params: Any, batches: Iterator[tuple[jax.Array, jax.Array]], max_batches: int
) -> dict[str, float]:
    """``{"bpb", "loss"}`` over up to ``max_batches`` global batches (fewer if the iterator ends first): bits per byte
    of the byte-bearing targets, and the mean cross-entropy (nats) per scored target."""
    nats, nbytes, loss_nats, scored = 0.0, 0, 0.0, 0
    for _, (inputs, targets) in zip(range(max_batches), batches):
        n, b, ln, c = eval_step(params, inputs, targets)
        nats, nbytes, loss_nats, scored = nats + float(n), nbytes + int(b), loss_nats + float(ln), scored + int(c)
    if nbytes == 0:
        raise ValueError("the validation batches hold no scored bytes; check the val split and the tokenizer")
    return {"bpb": nats / (math.log(2) * nbytes), "loss": loss_nats / scored}
