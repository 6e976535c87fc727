"""Attention implementations: the Pallas splash kernel (in interpret mode on CPU) against the XLA path."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from revjax.config import MeshConfig, ModelConfig
from revjax.interop.state_dict import build_model, model_params
from revjax.attention import causal_attention, splash_attention
from revjax.model import GPT, loss_fn
from revjax.sharding import make_mesh
from tests.helpers import perturbed_model


def xla_attention(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


def qkv(B, T, H, K, D, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(keys[0], (B, T, H, D)), jax.random.normal(keys[1], (B, T, K, D)),
            jax.random.normal(keys[2], (B, T, K, D)))


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def sum_sq_grads(attention, q, k, v):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v) ** 2), argnums=(0, 1, 2)))(q, k, v)


# (batch, T, query heads, kv heads, head dim): MHA with one 256-tile; GQA (2 queries per kv head) with two 128-tiles
@pytest.mark.parametrize("shape", [(1, 256, 2, 2, 64), (2, 384, 4, 2, 32)], ids=["mha-T256", "gqa-T384"])
def test_splash_matches_xla_forward_and_backward(shape):
    q, k, v = qkv(*shape)
    want = xla_attention(q, k, v)
    got = jax.jit(splash_attention)(q, k, v)
    assert got.shape == want.shape and rel(got, want) < 1e-5
    # causal: the first query sees only the first key, so its output is that key's value
    np.testing.assert_allclose(got[:, 0], jnp.repeat(v[:, 0], shape[2] // shape[3], axis=1), rtol=1e-5, atol=1e-6)
    for g, w in zip(sum_sq_grads(splash_attention, q, k, v), sum_sq_grads(xla_attention, q, k, v)):
        assert rel(g, w) < 1e-5


def test_splash_runs_per_shard_under_a_mesh():
    q, k, v = qkv(4, 128, 4, 2, 32, seed=1)
    mesh = make_mesh(MeshConfig(data=4, fsdp=1, tensor=2))
    placed = [jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))) for x in (q, k, v)]
    with jax.set_mesh(mesh):
        got = jax.jit(splash_attention)(*placed)
        grads = sum_sq_grads(splash_attention, *placed)
    assert rel(got, xla_attention(q, k, v)) < 1e-5
    for g, w in zip(grads, sum_sq_grads(xla_attention, q, k, v)):
        assert rel(g, w) < 1e-5


@pytest.mark.parametrize("heads", [(4, 4), (4, 2)], ids=["mha", "gqa"])
def test_causal_attention_matches_jax_xla_path(heads):
    """The model's XLA path (4-d layout, normaliser after the value product) against jax's own, with gradients."""
    q, k, v = qkv(2, 48, *heads, 16)
    assert rel(jax.jit(causal_attention)(q, k, v), jax.jit(xla_attention)(q, k, v)) < 1e-6
    for g, w in zip(sum_sq_grads(causal_attention, q, k, v), sum_sq_grads(xla_attention, q, k, v)):
        assert rel(g, w) < 1e-5


def test_splash_falls_back_to_xla_when_no_tile_divides_the_sequence():
    q, k, v = qkv(2, 48, 4, 2, 16)
    np.testing.assert_array_equal(jax.jit(splash_attention)(q, k, v), jax.jit(causal_attention)(q, k, v))


def test_gpt_with_splash_attention_matches_xla():
    config = ModelConfig(sequence_len=128, vocab_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                         compute_dtype="float32", attention="xla")
    model = perturbed_model(config)
    splash = build_model(dataclasses.replace(config, attention="splash", scan_layers=True), model_params(model))
    assert splash.attention_implementation() == "splash"
    ids = jax.random.randint(jax.random.key(3), (2, 128), 0, 256)
    forward = nnx.jit(lambda m, i: m(i))
    assert rel(forward(splash, ids), forward(model, ids)) < 1e-5
    grad = nnx.jit(nnx.grad(lambda m, i: loss_fn(m, i, i)))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 model_params(grad(splash, ids)), model_params(grad(model, ids)))


def test_auto_picks_the_backends_attention():
    def choice(**kw):
        return nnx.eval_shape(lambda: GPT(ModelConfig(sequence_len=8, vocab_size=256, n_layer=1, n_head=1,
                                                      n_kv_head=1, n_embd=16, **kw), rngs=nnx.Rngs(0)))
    assert jax.default_backend() == "cpu" and choice().attention_implementation() == "xla"
    assert choice(attention="cudnn").attention_implementation() == "cudnn"
    assert choice(attention="splash").attention_implementation() == "splash"


def test_train_step_with_splash_on_a_mesh_matches_xla(monkeypatch):
    """The train step traces under its mesh, so splash runs per shard (``shard_map``: batch over data, heads over
    tensor) inside the sharded step: one step's loss and parameters equal the XLA path's."""
    real, mapped = jax.shard_map, []
    monkeypatch.setattr(jax, "shard_map", lambda f, **kw: mapped.append(kw["in_specs"]) or real(f, **kw))
    from revjax.config import load_config
    from revjax.optim import build_optimizer
    from revjax.state import init_train_state, train_state_shardings
    from revjax.train.step import build_train_step

    overrides = ["model.depth=null", "model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.n_kv_head=2",
                 "model.sequence_len=128", "tokenizer.vocab_size=320", "model.compute_dtype=float32",
                 "optimizer.ns_dtype=float32", "mesh.data=2", "mesh.tensor=2"]
    data = np.random.default_rng(0).integers(0, 320, (1, 2, 129), dtype=np.int32)
    start = None
    results = {}
    for attention in ("xla", "splash"):
        config = load_config(overrides=[*overrides, f"model.attention={attention}"])
        mesh = make_mesh(config.mesh, jax.devices()[:4])
        tx = build_optimizer(config.optimizer, config.model)
        graphdef, _, shardings = train_state_shardings(config.model, tx, mesh)
        start = start if start is not None else model_params(perturbed_model(config.model, seed=2))
        _, state, _ = init_train_state(config.model, tx, mesh, params=start)
        step = build_train_step(graphdef, tx, mesh, shardings)
        state, metrics = step(state, {"inputs": data[..., :-1], "targets": data[..., 1:]}, np.float32(1.0),
                              np.float32(0.95))
        results[attention] = float(metrics["loss"]), state.params
    assert mapped and mapped[0][0] == P("data", "tensor", None, None)  # splash ran per shard
    assert abs(results["splash"][0] - results["xla"][0]) < 1e-5
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 results["splash"][1], results["xla"][1])
