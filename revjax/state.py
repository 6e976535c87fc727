"""The training state: parameters and optimizer state as pytrees of sharded arrays, created or described (for a
restore) without allocating more than the devices hold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from revjax import sharding as shd
from revjax.config import ModelConfig
from revjax.model import GPT


@dataclass
class TrainState:
    """Parameters and optimizer state, as pytrees of (sharded) arrays; the unit that is checkpointed."""

    params: Any
    opt_state: Any


jax.tree_util.register_dataclass(TrainState, data_fields=["params", "opt_state"], meta_fields=[])


def train_state_shardings(
    config: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """(graphdef, abstract state, state shardings) of a model and its optimizer, computed without allocating them.

    The abstract state's leaves are ``jax.ShapeDtypeStruct`` s carrying their target sharding (a restore target).
    """
    graphdef, params = nnx.split(nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0))))
    params = nnx.to_pure_dict(params)
    p_shard = shd.param_shardings(params, mesh)
    opt_state = jax.eval_shape(tx.init, params)
    shardings = TrainState(p_shard, shd.opt_state_shardings(opt_state, mesh))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            TrainState(params, opt_state), shardings)
    return graphdef, abstract, shardings


def init_train_state(
    config: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, *, seed: int = 0, params: Any = None
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """(graphdef, state, shardings): fresh parameters from ``seed`` (or the given ``params``) placed by the sharding
    rules, created directly on their devices, and the optimizer state initialised in place."""
    graphdef, _, shardings = train_state_shardings(config, tx, mesh)
    if params is None:
        make = jax.jit(lambda: nnx.to_pure_dict(nnx.state(GPT(config, rngs=nnx.Rngs(seed)))),
                       out_shardings=shardings.params)
        params = make()
    else:
        params = jax.device_put(params, shardings.params)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    return graphdef, TrainState(params, opt_state), shardings
