"""The GPT: init scheme, sizes, KV cache, and fp32 parity with PyTorch (our reference and onanchat's golden outputs)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from revjax.config import ModelConfig, load_config
from revjax.interop.state_dict import (
    build_model,
    StateDictError,
    expected_shapes,
    from_torch_layout,
    model_params,
    to_torch_layout,
)
from revjax.model import (GPT, NORM_EPS, KVCache, cross_entropy, flops_per_token, loss_fn, num_params,
                          relu_squared_matmul, rms_norm)
from tests.helpers import CONFIGS, PREFIX, cached_forward, decode_with_cache, forward, new_model, perturbed_model
from tests.torch_reference import RefConfig, RefGPT

jit_loss = nnx.jit(loss_fn)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def torch_model(config: ModelConfig, state_dict) -> RefGPT:
    ref = RefGPT(RefConfig(**config.gpt_config()))
    ref.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in state_dict.items()}, strict=True)
    return ref.eval()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    config = CONFIGS[request.param]
    model = perturbed_model(config)
    ids = jax.random.randint(jax.random.key(7), (2, config.sequence_len), 0, config.vocab_size)
    return request.param, config, model, ids


def test_fresh_model_loss_is_ln_vocab_and_init_scheme():
    config = CONFIGS["gqa"]
    model = new_model(config)
    ids = jax.random.randint(jax.random.key(1), (2, 32), 0, config.vocab_size)
    assert float(jit_loss(model, ids, ids)) == pytest.approx(np.log(config.vocab_size), abs=1e-6)
    p = model_params(model)
    block = p["blocks"][0]
    assert not np.any(p["lm_head"]["kernel"])
    assert not np.any(block["attn"]["c_proj"]["kernel"]) and not np.any(block["mlp"]["c_proj"]["kernel"])
    d = config.n_embd
    assert np.std(p["wte"]) == pytest.approx(1.0, rel=0.05)
    assert np.std(block["attn"]["c_q"]["kernel"]) == pytest.approx(1 / np.sqrt(d), rel=0.05)
    assert np.std(block["attn"]["c_k"]["kernel"]) == pytest.approx(1 / np.sqrt(d) * np.sqrt(64 / 128), rel=0.05)
    assert np.std(block["mlp"]["c_fc"]["kernel"]) == pytest.approx(1 / np.sqrt(d), rel=0.05)


def test_d20_parameter_and_flop_counts():
    d20 = load_config(overrides=["model.depth=20"]).model
    assert (d20.n_layer, d20.n_embd, d20.n_head, d20.n_kv_head, d20.vocab_size) == (20, 1280, 10, 10, 65536)
    assert num_params(d20) == 560_988_160
    assert flops_per_token(d20) == 3_491_758_080  # 3.4918e9 at T=2048
    abstract = nnx.eval_shape(lambda: GPT(d20, rngs=nnx.Rngs(0)))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) == 560_988_160
    assert len(expected_shapes(d20)) == 122


def test_param_count_matches_arrays(case):
    _, config, model, _ = case
    assert sum(x.size for x in jax.tree.leaves(model_params(model))) == num_params(config)


def test_fp32_logits_match_torch_reference(case):
    _, config, model, ids = case
    ref = torch_model(config, to_torch_layout(model_params(model), config))
    with torch.no_grad():
        ref_logits, _ = ref(torch.from_numpy(np.asarray(ids)))
    assert rel_err(forward(model, ids), ref_logits.numpy()) < 1e-5
    targets = np.asarray(ids).copy()
    targets[:, ::3] = -1
    with torch.no_grad():
        ref_loss = ref(torch.from_numpy(np.asarray(ids)), torch.from_numpy(targets).long())
    assert float(jit_loss(model, ids, jnp.asarray(targets))) == pytest.approx(float(ref_loss), rel=1e-5)


def test_kv_cache_matches_full_forward_and_torch(case):
    _, config, model, ids = case
    full = forward(model, ids)
    cached = decode_with_cache(model, ids)
    assert rel_err(cached, full) < 1e-5
    ref = torch_model(config, to_torch_layout(model_params(model), config))
    x = torch.from_numpy(np.asarray(ids))
    with torch.no_grad():
        out, past = ref(x[:, :PREFIX])
        chunks = [out]
        for t in range(PREFIX, x.size(1)):
            out, past = ref(x[:, t:t + 1], past=past)
            chunks.append(out)
    assert rel_err(cached, torch.cat(chunks, 1).numpy()) < 1e-5


def test_multi_token_chunk_after_prefill_matches_full(case):
    _, config, model, ids = case
    cache = KVCache.zeros(config, 2, config.sequence_len)
    first, cache = cached_forward(model, ids[:, :PREFIX], cache)
    rest, cache = cached_forward(model, ids[:, PREFIX:], cache)
    assert int(cache.pos) == config.sequence_len
    assert rel_err(jnp.concatenate([first, rest], 1), forward(model, ids)) < 1e-5


def test_matches_onanchat_golden_outputs(case, golden_dir):
    name, config, _, _ = case
    golden = np.load(golden_dir / f"model_{name}.npz")
    assert json.loads(str(golden["config"])) == config.gpt_config()
    model = build_model(config, from_torch_layout({k[2:]: golden[k] for k in golden.files if k.startswith("w/")}, config))
    ids, targets = jnp.asarray(golden["ids"]), jnp.asarray(golden["targets"])
    logits = forward(model, ids)
    assert rel_err(logits, golden["logits"]) < 1e-5
    assert float(cross_entropy(logits, targets)) == pytest.approx(float(golden["loss"]), rel=1e-5)
    assert rel_err(decode_with_cache(model, ids), golden["kv_logits"]) < 1e-5


def test_state_dict_round_trip_and_refusals(case):
    _, config, model, _ = case
    params = model_params(model)
    sd = to_torch_layout(params, config)
    assert list(sd) == list(expected_shapes(config))
    assert all(sd[k].shape == s for k, s in expected_shapes(config).items())
    back = from_torch_layout(sd, config)
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
    missing = dict(sd)
    del missing["lm_head.weight"]
    with pytest.raises(StateDictError, match="lacks 1 tensor"):
        from_torch_layout(missing, config)
    with pytest.raises(StateDictError, match="does not use"):
        from_torch_layout({**sd, "_orig_mod.lm_head.weight": sd["lm_head.weight"]}, config)
    with pytest.raises(StateDictError, match="shape"):
        from_torch_layout({**sd, "lm_head.weight": sd["lm_head.weight"][:, :-1]}, config)


def test_bf16_compute_close_to_fp32_and_remat_exact():
    config = CONFIGS["gqa"]
    model = perturbed_model(config)
    ids = jax.random.randint(jax.random.key(7), (2, config.sequence_len), 0, config.vocab_size)
    params = model_params(model)
    variants = {}
    for name, change in (("bf16", {"compute_dtype": "bfloat16"}), ("remat", {"remat": "full"})):
        variants[name] = build_model(ModelConfig(**{**config.__dict__, **change}), params)
    logits32 = forward(model, ids)
    assert rel_err(forward(variants["bf16"], ids), logits32) < 5e-2
    assert rel_err(forward(variants["remat"], ids), logits32) == 0.0
    grad = nnx.jit(nnx.grad(lambda m: loss_fn(m, ids, ids)))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 model_params(grad(variants["remat"])), model_params(grad(model)))


def plain_rms_norm(x):
    x32 = x.astype(jnp.float32)
    return (x32 / jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + NORM_EPS)).astype(x.dtype)


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_lean_backward_passes_equal_autodiff_of_the_plain_expressions(dtype, rtol):
    """RMSNorm and relu(h)²·W have hand-written backward passes; their gradients are those of the expressions."""
    kx, kh, kw, kg = jax.random.split(jax.random.key(3), 4)
    x = (3 * jax.random.normal(kx, (2, 5, 64))).astype(dtype)
    h, w = jax.random.normal(kh, (2, 5, 256)).astype(dtype), (0.1 * jax.random.normal(kw, (256, 64))).astype(dtype)
    g = jax.random.normal(kg, (2, 5, 64)).astype(dtype)

    def close(ours, plain, *args):
        for a, b in zip(jax.vjp(ours, *args)[1](g), jax.vjp(plain, *args)[1](g)):
            assert a.dtype == b.dtype == dtype
            assert rel_err(a, b) < rtol
        np.testing.assert_allclose(np.asarray(ours(*args), np.float32), np.asarray(plain(*args), np.float32),
                                   rtol=rtol, atol=rtol)

    close(rms_norm, plain_rms_norm, x)
    close(relu_squared_matmul, lambda h, w: jnp.square(jax.nn.relu(h)) @ w, h, w)
    assert float(jnp.min(h)) < 0 < float(jnp.max(h))  # both sides of the relu are exercised


def test_bf16_backward_keeps_no_fp32_activation_copies():
    """What a bf16 loss keeps for its backward pass, per layer: no fp32 array of the residual width (fp32 stats
    of one value per row only), one array of the MLP's hidden width (its input, in bf16), and one fp32 array of
    attention scores."""
    config = ModelConfig(**{**CONFIGS["gqa"].__dict__, "compute_dtype": "bfloat16", "attention": "xla"})
    model = perturbed_model(config)
    graphdef, params = nnx.split(model, nnx.Param)
    B, T, D = 2, config.sequence_len // 2, config.n_embd  # T ≠ head_dim, so T×T arrays are the scores
    ids = jax.random.randint(jax.random.key(1), (B, T), 0, config.vocab_size)
    kept = jax.tree.leaves(jax.vjp(lambda p: loss_fn(nnx.merge(graphdef, p), ids, ids), params)[1])
    known = {id(leaf) for leaf in jax.tree.leaves(params)}
    activations = [a for a in kept if id(a) not in known and a.ndim >= 3 and a.shape[:1] == (B,)]
    wide = [a for a in activations if a.shape[-1] == 4 * D]
    assert [(a.shape, a.dtype) for a in wide] == [((B, T, 4 * D), jnp.bfloat16)] * config.n_layer
    assert not [a.shape for a in activations if a.dtype == jnp.float32 and a.shape[-1] in (D, 4 * D)]
    # attention scores: no per-head copy of the mask, and one fp32 T×T array per layer (the softmax weights), not
    # the logits and the shifted logits besides
    scores = [a for a in activations if a.shape[-2:] == (T, T)]
    assert T != config.head_dim and scores
    assert not [a.shape for a in scores if a.dtype == jnp.bool_]
    assert len([a for a in scores if a.dtype == jnp.float32]) == config.n_layer


def test_features_feed_the_head_and_stats_are_residual_rms(case):
    _, config, model, ids = case
    h, rms = nnx.jit(lambda m, i: m.features_with_stats(i))(model, ids)
    assert h.shape == (*ids.shape, config.n_embd) and rms.shape == (config.n_layer,) and rms.dtype == jnp.float32
    np.testing.assert_array_equal(nnx.jit(lambda m, i: m.features(i))(model, ids), h)
    np.testing.assert_array_equal(nnx.jit(lambda m, h: m.head(h))(model, h), forward(model, ids))
    # The same RMS by hand: run the blocks one by one and measure the residual stream after each.
    from revjax.model import rms_norm, rope_tables
    cos, sin = rope_tables(jnp.arange(ids.shape[1]), config.head_dim)
    x = rms_norm(model.wte[...][ids])
    want = []
    for block in model.blocks:
        x, _ = block(x, cos, sin, "xla")
        want.append(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))))
    np.testing.assert_allclose(rms, want, rtol=1e-5)
    np.testing.assert_allclose(h, rms_norm(x), rtol=1e-5, atol=1e-5)


def test_packed_row_equals_each_sequence_alone(case):
    """One row holding a sequence, then a prefix with two continuations (a tree), then padding: with per-token
    positions and a mask that keeps each token to its own sequence (and a branch to its prefix), every hidden
    state equals the plain forward of that sequence alone."""
    _, config, model, ids = case
    ids = np.asarray(ids)
    single, prefix, one, two = ids[1, :8], ids[0, :5], ids[0, 5:12], ids[1, :6]
    row = np.concatenate([single, prefix, one, two, np.zeros(32 - 26, ids.dtype)])
    pos = np.concatenate([np.arange(8), np.arange(5), np.arange(5, 12), np.arange(5, 11), np.zeros(6, int)])
    part = np.repeat([0, 1, 2, 3, 4], [8, 5, 7, 6, 6])  # single, prefix, branch one, branch two, padding
    mask = np.zeros((32, 32), bool)
    for t in range(32):
        for s in range(t + 1):
            same = part[s] == part[t]
            mask[t, s] = same or (part[s] == 1 and part[t] in (2, 3))
    packed = nnx.jit(lambda m, i, p, k: m.features(i, p, k))(model, row[None], pos[None], mask[None])[0]
    alone = nnx.jit(lambda m, i: m.features(i))
    for seq, where in ((single, np.arange(8)), (np.concatenate([prefix, one]), np.arange(8, 20)),
                       (np.concatenate([prefix, two]), np.r_[8:13, 20:26])):
        np.testing.assert_allclose(packed[where], alone(model, seq[None])[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="together"):
        model.features(row[None], pos[None])
