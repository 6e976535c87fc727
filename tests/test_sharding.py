"""Meshes, logical-axis rules and the sharded train step: every mesh reproduces the one-device run."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from revjax.config import MeshConfig, load_config
from revjax.model import GPT
from revjax.interop.state_dict import model_params
from revjax.optim import build_optimizer
from revjax.sharding import ShardingError, make_mesh, mesh_shape, param_shardings
from revjax.state import init_train_state
from revjax.train.step import accumulation_steps, build_train_step
from tests.helpers import new_model

ROWS, SEQ, STEPS = 16, 32, 3
# fp32 Newton–Schulz and a larger Adam eps make the comparison well-conditioned: with nanochat's bf16 iteration and
# eps 1e-10, summation-order noise of ~1e-7 flips bf16 roundings and the signs of near-zero first Adam updates.
CONFIG = load_config(overrides=[
    "model.depth=null", "model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.sequence_len=32",
    "model.compute_dtype=float32", "tokenizer.vocab_size=512", "optimizer.ns_dtype=float32", "optimizer.adam_eps=1e-3",
])


@pytest.fixture(scope="module")
def setup():
    params = jax.tree.map(np.asarray, model_params(new_model(CONFIG.model)))
    data = np.random.default_rng(0).integers(0, CONFIG.model.vocab_size, (STEPS, ROWS, SEQ + 1)).astype(np.int32)
    data[:, :, ::7] = -1  # some unscored targets: the loss must stay token-weighted across the split
    return params, data


def train(params, data, mesh):
    tx = build_optimizer(CONFIG.optimizer, CONFIG.model)
    graphdef, state, shardings = init_train_state(CONFIG.model, tx, mesh, params=params)
    step = build_train_step(graphdef, tx, mesh, shardings)
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    accum = accumulation_steps(ROWS * SEQ, {1: 4, 4: 2, 8: 1}[dp], SEQ, dp)
    losses = []
    for batch in data:
        inputs = np.maximum(batch[:, :-1], 0).reshape(accum, ROWS // accum, SEQ)
        targets = batch[:, 1:].reshape(accum, ROWS // accum, SEQ)
        state, metrics = step(state, {"inputs": inputs, "targets": targets}, 1.0, 0.9)
        losses.append(float(metrics["loss"]))
    return np.array(losses), jax.tree.map(np.asarray, state.params), state


@pytest.fixture(scope="module")
def reference(setup):
    return train(*setup, make_mesh(MeshConfig(data=1), jax.devices()[:1]))


@pytest.mark.parametrize("mesh_config", [MeshConfig(data=8), MeshConfig(data=1, fsdp=8), MeshConfig(data=4, tensor=2)],
                         ids=["dp8", "fsdp8", "dp4xtp2"])
def test_meshes_match_one_device(setup, reference, mesh_config):
    ref_losses, ref_params, _ = reference
    losses, params, state = train(*setup, make_mesh(mesh_config))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), params, ref_params)
    kernel = state.params["blocks"][0]["mlp"]["c_fc"]["kernel"]
    expected = {"dp8": P(None, None), "fsdp8": P("fsdp", None), "dp4xtp2": P(None, "tensor")}
    name = {8: "dp8", 1: "fsdp8", 4: "dp4xtp2"}[mesh_config.data]
    assert kernel.sharding.spec == expected[name]


def test_mesh_shape_and_errors():
    assert mesh_shape(MeshConfig(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
    assert mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=1), 8) == (2, 4, 1)
    with pytest.raises(ShardingError, match="do not divide the 8 devices"):
        mesh_shape(MeshConfig(data=3), 8)
    with pytest.raises(ShardingError, match="uses 2 devices but 8 are present"):
        mesh_shape(MeshConfig(data=2), 8)
    with pytest.raises(ValueError, match="not a multiple of device_batch_size"):
        accumulation_steps(1000, 4, 32, 8)


def test_parameter_rules_and_indivisible_shapes():
    abstract = jax.eval_shape(lambda: model_params(GPT(CONFIG.model, rngs=nnx.Rngs(0))))
    shardings = param_shardings(abstract, make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)))
    assert shardings["wte"].spec == P("tensor", "fsdp")
    assert shardings["lm_head"]["kernel"].spec == P("fsdp", "tensor")
    assert shardings["blocks"][1]["attn"]["c_proj"]["kernel"].spec == P("tensor", "fsdp")
    odd = load_config(overrides=["model.depth=null", "model.n_layer=1", "model.n_embd=36", "model.n_head=1",
                                 "tokenizer.vocab_size=512"]).model
    odd_abstract = jax.eval_shape(lambda: model_params(GPT(odd, rngs=nnx.Rngs(0))))
    with pytest.raises(ShardingError, match="'embed'=36 does not divide mesh axis fsdp=8"):
        param_shardings(odd_abstract, make_mesh(MeshConfig(data=1, fsdp=8)))
