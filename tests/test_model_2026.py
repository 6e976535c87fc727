"""The nanochat-2026 model elements (``model.recipe``): fp32 parity with nanochat 92d63d4's own outputs (logits, loss,
KV-cache decode), the sliding windows in every attention path, nanochat's checkpoint names, the parameter and FLOP
counts by hand, and the elements acting in the model's own order in every direction."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from revjax import architecture, memory
from revjax.attention import cached_attention, causal_attention, cudnn_attention, splash_attention
from revjax.config import Config, ConfigError, ModelConfig, load_config
from revjax.direction import Specials, inputs_and_targets, orient_documents
from revjax.engine import Engine
from revjax.interop.export import onanchat_meta, torch_state_dict
from revjax.interop.state_dict import (StateDictError, build_model, checkpoint_model_config, expected_shapes,
                                       from_torch_layout, model_keys_from_checkpoint, model_params, to_torch_layout)
from revjax.losses import model_loss
from revjax.model import GPT, KVCache, cross_entropy, flops_per_token, num_params
from tests.helpers import cached_forward, decode_with_cache, forward

GOLDEN = ("windows_gqa", "small_mha")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def golden_config(golden, **change) -> ModelConfig:
    c = json.loads(str(golden["config"]))
    keys = {k: c[k] for k in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")}
    return ModelConfig(**{**keys, "window_pattern": c["window_pattern"], "recipe": "nanochat-2026",
                          "compute_dtype": "float32", "attention": "xla", **change})


@pytest.fixture(scope="module", params=GOLDEN)
def case(request, golden_dir):
    golden = np.load(golden_dir / "nanochat-2026" / f"model_{request.param}.npz")
    config = golden_config(golden)
    state_dict = {k[2:]: golden[k] for k in golden.files if k.startswith("w/")}
    return request.param, config, build_model(config, from_torch_layout(state_dict, config)), golden, state_dict


# ---- parity with nanochat's own outputs ------------------------------------------------------------------------


def test_logits_loss_and_decode_match_nanochat(case):
    name, config, model, golden, _ = case
    c = json.loads(str(golden["config"]))
    windows = [None if w == config.sequence_len else w for w, _ in c["window_sizes"]]
    assert list(model.windows) == windows and config.vocab_size == c["vocab_size"]
    ids, targets = jnp.asarray(golden["ids"]), jnp.asarray(golden["targets"])
    logits = forward(model, ids)
    assert logits.shape == golden["logits"].shape and rel_err(logits, golden["logits"]) < 1e-5
    assert float(cross_entropy(logits, targets)) == pytest.approx(float(golden["loss"]), rel=1e-5)
    assert rel_err(decode_with_cache(model, ids, c["prefill"]), golden["kv_logits"]) < 1e-5


def test_windows_matter_in_the_golden_model(case):
    """Beyond the short window the logits are not those of full attention (so the parity above pins the windows),
    and inside it they are."""
    name, config, model, golden, _ = case
    if name != "windows_gqa":
        assert set(config.window_pattern) == {"L"}
        return
    full = build_model(dataclasses.replace(config, window_pattern="L"), model_params(model))
    ids = jnp.asarray(golden["ids"])
    a, b = forward(model, ids), forward(full, ids)
    np.testing.assert_allclose(a[:, :129], b[:, :129], rtol=1e-5, atol=1e-5)
    assert rel_err(a[:, 129:], b[:, 129:]) > 1e-3


def test_splash_with_local_masks_matches_nanochat(golden_dir):
    golden = np.load(golden_dir / "nanochat-2026" / "model_windows_gqa.npz")
    config = golden_config(golden, attention="splash")
    state_dict = {k[2:]: golden[k] for k in golden.files if k.startswith("w/")}
    model = build_model(config, from_torch_layout(state_dict, config))
    assert model.attention_implementation() == "splash"
    assert rel_err(forward(model, jnp.asarray(golden["ids"])), golden["logits"]) < 1e-5


# ---- the window in each attention path --------------------------------------------------------------------------


def qkv(B, T, H, K, D, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(keys[0], (B, T, H, D)), jax.random.normal(keys[1], (B, T, K, D)),
            jax.random.normal(keys[2], (B, T, K, D)))


def banded_reference(q, k, v, window):
    """Attention by hand in float64: query t sees keys t − window … t."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, T, H, D = q.shape
    k, v = (np.repeat(x, H // x.shape[2], axis=2) for x in (k, v))
    logits = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    logits = np.where((s <= t) & (t - s <= window), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhts,bshd->bthd", w / w.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("window", [0, 5, 100])
def test_xla_and_cudnn_arguments_give_the_banded_mask(window):
    q, k, v = qkv(2, 256, 4, 2, 16)
    want = banded_reference(q, k, v, window)
    assert rel_err(jax.jit(causal_attention, static_argnums=3)(q, k, v, window), want) < 1e-5
    # the cuDNN path's arguments, run by jax.nn.dot_product_attention's XLA backend (cuDNN itself needs a GPU)
    got = jax.jit(lambda q, k, v: cudnn_attention(q, k, v, window, implementation="xla"))(q, k, v)
    assert rel_err(got, want) < 1e-5


def test_splash_local_mask_matches_xla_forward_and_backward():
    q, k, v = qkv(1, 256, 2, 1, 32, seed=3)
    window = 100
    xla = lambda q, k, v: causal_attention(q, k, v, window)  # noqa: E731
    splash = lambda q, k, v: splash_attention(q, k, v, window)  # noqa: E731
    assert rel_err(jax.jit(splash)(q, k, v), banded_reference(q, k, v, window)) < 1e-5
    grads = [jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) ** 2), argnums=(0, 1, 2)))(q, k, v)
             for f in (splash, xla)]
    for g, w in zip(*grads):
        assert rel_err(g, w) < 1e-5


def test_cached_attention_reads_only_the_window():
    """A chunk of 3 queries at positions 40…42 over a 64-slot cache with window 7: the same as the banded mask over
    the filled prefix, and the result does not change when the slots outside the window hold garbage."""
    B, H, K, D, S, pos, T, window = 1, 4, 2, 8, 64, 40, 3, 7
    q, k, v = qkv(B, S, H, K, D, seed=5)
    want = banded_reference(q[:, :pos + T], k[:, :pos + T], v[:, :pos + T], window)[:, pos:]
    k_cache, v_cache = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    run = jax.jit(cached_attention, static_argnums=4)
    got = run(q[:, pos:pos + T], k_cache, v_cache, jnp.int32(pos), window).reshape(B, T, H, D)
    assert rel_err(got, want) < 1e-5
    outside = jnp.ones(S, bool).at[pos - window:pos + T].set(False)[None, None, :, None]
    junk = [jnp.where(outside, 1e4, x) for x in (k_cache, v_cache)]
    np.testing.assert_array_equal(run(q[:, pos:pos + T], *junk, jnp.int32(pos), window).reshape(B, T, H, D), got)


def test_packed_rows_honour_window_segment_and_causality(case):
    """The scorer's masked path: one row holding a sequence, then a prefix and two continuations, then padding,
    with per-token positions: every hidden state equals the plain forward of its sequence alone (windows, smear
    and value embeddings included), so a window never reaches into another sequence or branch."""
    name, config, model, golden, _ = case
    ids = np.asarray(golden["ids"]).reshape(-1)
    T = config.sequence_len
    n = [T // 2 - 20, T // 8, T // 4, T // 8 - 4] if name == "windows_gqa" else [20, 8, 14, 10]
    parts = [ids[:n[0]], ids[:n[1]], ids[n[1]:n[1] + n[2]], ids[T // 2:T // 2 + n[3]]]
    pad = T - sum(n)
    row = np.concatenate([*parts, np.zeros(pad, ids.dtype)])
    pos = np.concatenate([np.arange(n[0]), np.arange(n[1]), n[1] + np.arange(n[2]), n[1] + np.arange(n[3]),
                          np.zeros(pad, int)])
    part = np.repeat([0, 1, 2, 3, 4], [*n, pad])
    same = part[:, None] == part[None, :]
    branch = (part[None, :] == 1) & np.isin(part, [2, 3])[:, None]
    mask = np.tril(same | branch)
    packed = nnx.jit(lambda m, i, p, k: m.features(i, p, k))(model, row[None], pos[None], mask[None])[0]
    alone = nnx.jit(lambda m, i: m.features(i))
    starts = np.cumsum([0, *n])
    for seq, where in ((parts[0], np.arange(n[0])),
                       (np.concatenate(parts[1:3]), np.arange(starts[1], starts[3])),
                       (np.concatenate([parts[1], parts[3]]), np.r_[starts[1]:starts[2], starts[3]:starts[4]])):
        np.testing.assert_allclose(packed[where], alone(model, seq[None])[0], rtol=2e-5, atol=2e-5)


# ---- decode state and the engine ---------------------------------------------------------------------------------


def test_multi_token_chunk_after_prefill_and_the_smear_state(case):
    name, config, model, golden, _ = case
    ids = jnp.asarray(golden["ids"])
    first = config.sequence_len // 3
    cache = KVCache.zeros(config, ids.shape[0], config.sequence_len)
    a, cache = cached_forward(model, ids[:, :first], cache)
    np.testing.assert_array_equal(cache.prev, ids[:, first - 1])
    b, cache = cached_forward(model, ids[:, first:], cache)
    assert rel_err(jnp.concatenate([a, b], 1), forward(model, ids)) < 1e-5
    # a wrong previous id in the decode state changes the next position's logits (the smear reads it)
    cache = KVCache.zeros(config, ids.shape[0], config.sequence_len)
    _, cache = cached_forward(model, ids[:, :first], cache)
    right, _ = cached_forward(model, ids[:, first:first + 1], cache)
    wrong, _ = cached_forward(model, ids[:, first:first + 1], cache._replace(prev=(cache.prev + 1) % 7))
    assert float(jnp.abs(right - wrong).max()) > 1e-4


def test_engine_greedy_generation_equals_argmax_of_the_full_forward(case):
    """Prompts of different lengths (the longer one is fed token by token after a shared prefill), decoded past
    the short window: each greedy id is the argmax of the full forward over the ids before it, with its log-prob."""
    name, config, model, golden, _ = case
    ids = np.asarray(golden["ids"]).reshape(-1)
    lengths, new = ((140, 150), 6) if name == "windows_gqa" else ((9, 12), 5)
    prompts = [ids[:lengths[0]].tolist(), ids[50:50 + lengths[1]].tolist()]
    graphdef, params = nnx.split(model)
    out = Engine(graphdef, params, chunk_size=4).generate(prompts, new)
    for prompt, got, logprobs in zip(prompts, out.tokens, out.logprobs):
        assert len(got) == new
        logits = forward(model, jnp.asarray([prompt + got]))[0, len(prompt) - 1:-1]
        assert got == [int(i) for i in jnp.argmax(logits, axis=-1)]
        want = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), jnp.asarray(got)[:, None], axis=-1)[:, 0]
        np.testing.assert_allclose(logprobs, want, rtol=1e-5, atol=1e-5)


# ---- configuration, names, counts --------------------------------------------------------------------------------


TINY = ["tokenizer.vocab_size=300", "model.depth=null", "model.n_layer=4", "model.n_embd=64", "model.n_head=2",
        "model.n_kv_head=1", "model.sequence_len=512", "training.total_batch_tokens=1024"]


def test_recipe_switch_sets_the_elements_and_each_is_settable_alone():
    today = load_config(overrides=TINY).model
    assert (today.recipe, today.window_pattern, today.value_embeds, today.smear, today.qk_scale) == (
        "onanchat-2025", "L", False, False, 1.0)
    m = load_config(overrides=[*TINY, "model.recipe=nanochat-2026"]).model
    assert (m.window_pattern, m.value_embeds, m.layer_lambdas, m.smear, m.backout, m.qk_scale, m.vocab_multiple,
            m.rope_base, m.rope_bf16, m.init) == ("SSSL", True, True, True, True, 1.2, 64, 100_000.0, False,
                                                   "nanochat-2026")
    alone = load_config(overrides=[*TINY, "model.recipe=nanochat-2026", "model.window_pattern=sl",
                                   "model.backout=false"]).model
    assert (alone.window_pattern, alone.backout, alone.smear) == ("SL", False, True)
    plain = load_config(overrides=[*TINY, "model.recipe=nanochat-2026", *(f"model.{key}=false" for key in (
        "value_embeds", "layer_lambdas", "smear", "backout"))]).model
    model = nnx.eval_shape(lambda: GPT(plain, rngs=nnx.Rngs(0)))
    assert set(model_params(model)) == {"wte", "blocks", "lm_head"} and plain.qk_scale == 1.2
    smear_only = ModelConfig(**{**today.__dict__, "smear": True})
    model = nnx.eval_shape(lambda: GPT(smear_only, rngs=nnx.Rngs(0)))
    assert set(model_params(model)) == {"wte", "blocks", "lm_head", "smear_gate", "smear_lambda"}
    scanned = GPT(ModelConfig(**{**m.__dict__, "scan_layers": True}), rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="scan_layers"):
        scanned(jnp.zeros((1, 8), jnp.int32))
    recipe = ["model.recipe=nanochat-2026"]
    for bad, words in ((["model.window_pattern=SXL"], "string of S"), (["model.qk_scale=0"], "qk_scale"),
                       ([*recipe, "model.scan_layers=true"], "scan_layers"),
                       ([*recipe, "model.n_embd=16", "model.n_head=1"], "24 channels")):
        with pytest.raises(ConfigError, match=words):
            load_config(overrides=[*TINY, *bad])


def test_window_sizes_and_value_embedding_layers_by_hand():
    # short = ceil(T / 4 / 128)·128: 2048 → 512, 512 → 128, 100 → 128, 1000 → 256; the pattern tiles, the last
    # layer is long
    assert [architecture.short_window(t) for t in (2048, 512, 100, 1000)] == [512, 128, 128, 256]
    assert architecture.layer_windows("SSSL", 6, 2048) == (512, 512, 512, None, 512, None)
    assert architecture.layer_windows("S", 3, 512) == (128, 128, None)
    assert architecture.value_embed_layers(4) == (1, 3) and architecture.value_embed_layers(3) == (0, 2)
    assert architecture.backout_layer(4) == 2 and architecture.padded_vocab(32768, 64) == 32768


def test_fresh_model_has_nanochat_init_and_param_names():
    config = load_config(overrides=[*TINY, "model.recipe=nanochat-2026", "model.compute_dtype=float32"]).model
    p = model_params(nnx.jit(lambda: GPT(config, rngs=nnx.Rngs(0)))())
    d, s = 64, math.sqrt(3 / 64)
    assert p["wte"].shape == (320, d) and float(np.std(p["wte"])) == pytest.approx(0.8, rel=0.05)
    assert p["lm_head"]["kernel"].shape == (d, 300) and p["lm_head"]["padding"].shape == (d, 20)
    assert float(np.std(p["lm_head"]["kernel"])) == pytest.approx(0.001, rel=0.05)
    block = p["blocks"][1]
    assert float(np.abs(block["attn"]["c_q"]["kernel"]).max()) <= s
    assert float(np.std(block["attn"]["c_q"]["kernel"])) == pytest.approx(1 / math.sqrt(d), rel=0.1)
    assert float(np.abs(block["mlp"]["c_fc"]["kernel"]).max()) <= 0.4 * s
    assert not np.any(block["attn"]["c_proj"]["kernel"]) and not np.any(block["mlp"]["c_proj"]["kernel"])
    assert block["attn"]["ve_gate"]["kernel"].shape == (12, 1) and "ve_gate" not in p["blocks"][0]["attn"]
    gates = [block["attn"]["ve_gate"]["kernel"], p["smear_gate"]["kernel"]]
    assert all(0 <= g.min() and g.max() <= 0.02 for g in gates)
    assert sorted(p["value_embeds"]) == ["1", "3"] and p["value_embeds"]["3"].shape == (320, 32)
    np.testing.assert_allclose(p["resid_lambdas"], [1.15, 1.15 - 0.1 / 3, 1.15 - 0.2 / 3, 1.05], rtol=1e-6)
    np.testing.assert_allclose(p["x0_lambdas"], [0.2, 0.15, 0.1, 0.05], rtol=1e-6)
    assert (float(p["smear_lambda"][0]), float(p["backout_lambda"][0])) == (0.0, pytest.approx(0.2))


def test_state_dict_names_shapes_and_round_trip_equal_nanochat(case):
    _, config, model, _, state_dict = case
    exported = to_torch_layout(model_params(model), config)
    assert list(exported) == list(state_dict) == list(expected_shapes(config))
    for name, array in state_dict.items():
        assert exported[name].shape == array.shape == expected_shapes(config)[name]
        np.testing.assert_array_equal(exported[name], array)
    assert checkpoint_model_config(config) == {**config.gpt_config(), "window_pattern": config.window_pattern}
    assert model_keys_from_checkpoint(checkpoint_model_config(config)) == {
        **config.gpt_config(), "recipe": "nanochat-2026", "window_pattern": config.window_pattern}
    with pytest.raises(StateDictError, match="mixes the recipes"):
        checkpoint_model_config(dataclasses.replace(config, smear=False))
    with pytest.raises(StateDictError, match="lacks 1 tensor"):
        from_torch_layout({k: v for k, v in state_dict.items() if k != "smear_lambda"}, config)


def test_export_writes_nanochat_tensors_and_metadata(case):
    _, config, model, _, state_dict = case
    run_config = Config(model=config)
    exported = torch_state_dict(model_params(model), run_config)
    assert list(exported) == list(state_dict)
    for name, tensor in exported.items():
        assert tuple(tensor.shape) == state_dict[name].shape
        bf16 = name == "transformer.wte.weight" or name.startswith("value_embeds.")
        assert tensor.dtype == (torch.bfloat16 if bf16 else torch.float32)
    meta = onanchat_meta({"step": 7, "direction": "backward"}, run_config)
    assert meta["model_config"] == {**config.gpt_config(), "window_pattern": config.window_pattern}
    assert set(meta["model_config"]) == {"sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd",
                                         "window_pattern"}  # nanochat's GPTConfig fields


def test_parameter_count_and_flops_by_hand(golden_dir):
    golden = np.load(golden_dir / "nanochat-2026" / "model_windows_gqa.npz")
    config = golden_config(golden)
    # per layer c_q 64·64 + c_k, c_v 64·32 + c_proj 64·64 + c_fc, mlp.c_proj 64·256 = 45056; 2 ve gates of 12;
    # smear_gate 24; lm_head 320·64 (padded) → 200752 matmul parameters
    matmul = 4 * 45056 + 2 * 12 + 24 + 320 * 64
    # wte 320·64, value embeddings 2·320·32, lambdas 2·4, smear and backout scalars
    total = matmul + 320 * 64 + 2 * 320 * 32 + 8 + 2
    assert num_params(config) == memory.param_count(config) == total
    assert total == sum(golden[k].size for k in golden.files if k.startswith("w/"))
    assert memory.param_count({**config.gpt_config(), "window_pattern": "SSSL"}) == total
    # attention: three short layers see 128 keys, the last 512; 12 · 2 heads · 32 dims each
    attention = 3 * 12 * 2 * 32 * 128 + 12 * 2 * 32 * 512
    assert flops_per_token(config) == 6 * matmul + attention == 1_892_640
    # today's models are counted as before: 6·(N − wte) + 12·L·H·hd·T
    old = dataclasses.replace(config, recipe="onanchat-2025", window_pattern=None)
    assert flops_per_token(old) == 6 * (num_params(old) - 300 * 64) + 12 * 4 * 2 * 32 * 512


# ---- every direction ----------------------------------------------------------------------------------------------


DIRECTIONS = ("forward", "backward", "bidirectional")


def tiny_recipe_model(seed=0) -> GPT:
    config = load_config(overrides=[*TINY, "model.recipe=nanochat-2026", "model.compute_dtype=float32",
                                    "model.sequence_len=160", "training.total_batch_tokens=320",
                                    "model.attention=xla"]).model
    model = nnx.jit(lambda: GPT(config, rngs=nnx.Rngs(seed)))()
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.02, p.shape).astype(np.float32),
                          model_params(model))
    return build_model(config, params)


def direction_rows(direction: str, T: int) -> tuple[np.ndarray, np.ndarray]:
    specials = Specials(*range(300 - 11, 300))
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 289, size=n) for n in (90, 120, 70, 80)]
    ids, is_target = orient_documents(docs, direction, specials, seed=3)
    rows = 2 * (T + 1)
    return inputs_and_targets(ids[:rows].reshape(2, T + 1), is_target[:rows].reshape(2, T + 1))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_recipe_model_trains_a_step_in_every_direction(direction):
    """Rows in the direction's model order: the loss through revjax's fused training loss equals the full-logits
    cross-entropy, every parameter of the new elements gets a gradient, and one step lowers the loss."""
    model = tiny_recipe_model()
    T = model.config.sequence_len
    inputs, targets = direction_rows(direction, T)
    scored = float(np.sum(targets >= 0))
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: model_loss(nnx.merge(graphdef, p), inputs, targets) / scored  # noqa: E731
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert float(value) == pytest.approx(float(cross_entropy(forward(model, inputs), targets)), rel=1e-5)
    g = nnx.to_pure_dict(grads)
    for path in (("resid_lambdas",), ("x0_lambdas",), ("smear_lambda",), ("backout_lambda",), ("smear_gate", "kernel"),
                 ("value_embeds", "3"), ("blocks", 1, "attn", "ve_gate", "kernel")):
        leaf = g
        for key in path:
            leaf = leaf[key]
        assert float(jnp.abs(leaf).max()) > 0, path
    assert not np.any(g["lm_head"]["padding"])  # the padding rows never reach the loss
    tx = optax.adam(1e-3)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jax.jit(loss)(optax.apply_updates(params, updates))) < float(value)


@pytest.mark.parametrize("direction", ("backward", "bidirectional"))
def test_smear_and_value_embeddings_act_in_model_order(direction):
    """Changing the id at model position t leaves every earlier logit unchanged (smear, windows and value
    embeddings read only earlier model positions) and changes the logits at t and t + 1 (the smear carries the
    id forward in model order, which is reading order reversed for a backward document)."""
    model = tiny_recipe_model(seed=2)
    inputs, _ = direction_rows(direction, model.config.sequence_len)
    t = 70
    changed = inputs.copy()
    changed[:, t] = (changed[:, t] + 1) % 289
    a, b = forward(model, inputs), forward(model, changed)
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert all(float(jnp.abs(a[:, u] - b[:, u]).max()) > 1e-4 for u in (t, t + 1))
    # without attention and MLP output, position t + 1 still hears position t, through the smear alone
    params = model_params(model)
    for block in params["blocks"].values():
        block["attn"]["c_proj"]["kernel"] = np.zeros_like(block["attn"]["c_proj"]["kernel"])
        block["mlp"]["c_proj"]["kernel"] = np.zeros_like(block["mlp"]["c_proj"]["kernel"])
    quiet = build_model(model.config, params)
    a, b = forward(quiet, inputs), forward(quiet, changed)
    np.testing.assert_array_equal(a[:, t + 2:], b[:, t + 2:])
    assert float(jnp.abs(a[:, t + 1] - b[:, t + 1]).max()) > 1e-4



def test_remat_and_bf16_with_the_recipe():
    """Rematerialised blocks (which take the window and value embedding as arguments) give the same logits and
    gradients; bf16 compute stays close to fp32."""
    model = tiny_recipe_model(seed=4)
    inputs, targets = direction_rows("forward", model.config.sequence_len)
    params = model_params(model)
    variants = {name: build_model(dataclasses.replace(model.config, **change), params)
                for name, change in (("remat", {"remat": "full"}), ("bf16", {"compute_dtype": "bfloat16"}))}
    logits = forward(model, inputs)
    np.testing.assert_array_equal(forward(variants["remat"], inputs), logits)
    assert rel_err(forward(variants["bf16"], inputs), logits) < 5e-2
    grad = nnx.jit(nnx.grad(lambda m: cross_entropy(m(inputs), targets)))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 model_params(grad(variants["remat"])), model_params(grad(model)))


def test_nanochat_checkpoint_folder_imports_as_a_2026_run(golden_dir, tmp_path):
    """nanochat's own checkpoint layout (model_<step>.pt + meta_<step>.json with its window_pattern, the tokenizer
    beside them) imports into a revjax run of the 2026 recipe holding exactly those weights."""
    from revjax.interop.importer import import_checkpoint
    from revjax.runs import load_run
    from revjax.tokenizer import train_tokenizer

    golden = np.load(golden_dir / "nanochat-2026" / "model_windows_gqa.npz")
    config = golden_config(golden)
    state_dict = {k[2:]: golden[k] for k in golden.files if k.startswith("w/")}
    src = tmp_path / "base_checkpoints" / "d4"
    src.mkdir(parents=True)
    docs = [f"document {i} says {' '.join(str(j * i) for j in range(30))}" for i in range(200)]
    tokenizer = train_tokenizer(docs, src, config.vocab_size, progress=False)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, src / "model_000007.pt")
    meta = {"step": 7, "model_config": {**config.gpt_config(), "window_pattern": "SSSL"}}
    (src / "meta_000007.json").write_text(json.dumps(meta))
    run = load_run(import_checkpoint(src, tmp_path / "run"))
    model = run.config.model
    assert (model.recipe, model.window_pattern, run.step, run.meta["direction"]) == ("nanochat-2026", "SSSL", 7,
                                                                                        "forward")
    assert run.tokenizer.identity() == tokenizer.identity()
    want = from_torch_layout(state_dict, config)
    for (path, got), (_, expected) in zip(jax.tree.leaves_with_path(run.arrays), jax.tree.leaves_with_path(want)):
        np.testing.assert_array_equal(got, expected, err_msg=jax.tree_util.keystr(path))


def test_gradient_norm_groups_cover_the_new_parameters():
    """The research log's per-group gradient norms (logging.hdf5_layers_every) take every 2026 parameter: value
    embeddings as embeddings, the lambdas and smear/backout parameters as scalars."""
    from revjax.train.diagnostics import gradient_norms

    model = tiny_recipe_model()
    grads = jax.tree.map(lambda p: jnp.ones_like(p), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    norms = gradient_norms(grads, model.config.n_layer)
    c = model.config
    V, d, kv = architecture.padded_vocab(c.vocab_size, 64), c.n_embd, c.n_kv_head * c.head_dim
    n_ve = len(architecture.value_embed_layers(c.n_layer))
    assert float(norms["embedding"]) ** 2 == pytest.approx(V * d + n_ve * V * kv)
    assert float(norms["scalars"]) ** 2 == pytest.approx(2 * c.n_layer + architecture.SMEAR_CHANNELS + 2)
