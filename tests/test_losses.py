"""The fused, chunked softcap cross-entropy against the plain full-logits path: values, gradients, masks, chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from revjax.config import ModelConfig
from revjax.losses import LossInputError, softcap_cross_entropy, token_losses
from revjax.model import GPT, SOFTCAP, cross_entropy
from revjax.train.step import next_token_loss, policy_gradient_loss

B, T, D, V = 3, 10, 16, 50


def plain_nll(h, w, targets):
    """The model's path: logits in the compute dtype, fp32, softcap, log-softmax over the full vocabulary."""
    logits = (h @ w.astype(h.dtype)).astype(jnp.float32)
    return cross_entropy(SOFTCAP * jnp.tanh(logits / SOFTCAP), targets, reduction="none")


def inputs(dtype=jnp.float32, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    h = jax.random.normal(k1, (B, T, D), jnp.float32).astype(dtype)
    w = 2.0 * jax.random.normal(k2, (D, V), jnp.float32)  # large logits: the softcap bends them
    targets = jax.random.randint(k3, (B, T), 0, V)
    targets = targets.at[0, :4].set(-1).at[2, 7].set(-1)  # masked positions
    return h, w, targets


def test_a_hand_computed_token():
    """One token, vocabulary of 2: loss = logsumexp(z) − z[target] with z = 15·tanh(logit/15)."""
    h = jnp.array([[[1.0, 2.0]]])
    w = jnp.array([[3.0, -1.0], [4.0, 0.5]])  # logits 11 and 0
    z1 = 15 * np.tanh(11 / 15)
    expected = np.log(np.exp(z1) + 1.0) - 0.0  # target 1 (logit 0 → z 0)
    np.testing.assert_allclose(softcap_cross_entropy(h, w, jnp.array([[1]]), chunk=1), expected, rtol=1e-6)
    np.testing.assert_allclose(token_losses(h, w, jnp.array([[1]]), chunk=1).nll, [[expected]], rtol=1e-6)
    # d loss/d logit: softmax − onehot through the softcap's 1 − tanh²: (p₀(1 − tanh²(11/15)), p₁ − 1)
    p0 = np.exp(z1) / (np.exp(z1) + 1.0)
    dz = np.array([p0 * (1 - np.tanh(11 / 15) ** 2), (1 - p0) - 1.0])
    np.testing.assert_allclose(jax.grad(softcap_cross_entropy)(h, w, jnp.array([[1]]), chunk=1),
                               [[np.asarray(w) @ dz]], rtol=1e-5)


@pytest.mark.parametrize("chunk", [7, 12, 4096])  # 7 // B = 2 positions (10 = 5 chunks), 12 → 4 (pads to 12), one chunk
def test_values_and_gradients_match_the_plain_path_in_fp32(chunk):
    h, w, targets = inputs()
    weights = jax.random.normal(jax.random.key(1), (B, T))  # per-token cotangents, as the policy gradient's

    def fused(h, w, weights):
        return 0.5 * softcap_cross_entropy(h, w, targets, weights, chunk=chunk)  # an outer cotangent of 0.5

    def plain(h, w, weights):
        return 0.5 * jnp.sum(weights * plain_nll(h, w, targets))

    np.testing.assert_allclose(token_losses(h, w, targets, chunk=chunk).nll, plain_nll(h, w, targets),
                               atol=1e-5, rtol=1e-5)
    (fv, (fdh, fdw, fda)), (pv, (pdh, pdw, pda)) = (jax.value_and_grad(f, argnums=(0, 1, 2))(h, w, weights)
                                                    for f in (fused, plain))
    np.testing.assert_allclose(fv, pv, rtol=1e-5)
    np.testing.assert_allclose(fdh, pdh, atol=1e-5)
    np.testing.assert_allclose(fdw, pdw, atol=1e-5)
    np.testing.assert_allclose(fda, pda, atol=1e-5)
    assert fdh.dtype == h.dtype and fdw.dtype == w.dtype


def test_masked_targets_score_nothing_and_get_no_gradient():
    h, w, targets = inputs()
    nll = token_losses(h, w, targets, chunk=7).nll
    assert np.all(np.asarray(nll)[np.asarray(targets) < 0] == 0.0)
    assert np.all(np.asarray(nll)[np.asarray(targets) >= 0] > 0.0)
    dh = jax.grad(lambda h: softcap_cross_entropy(h, w, targets, chunk=7))(h)
    assert np.all(np.asarray(dh)[0, :4] == 0.0) and np.all(np.asarray(dh)[2, 7] == 0.0)
    assert np.all(np.abs(np.asarray(dh)[1]).sum(-1) > 0.0)
    all_masked = jnp.full((B, T), -1)
    assert float(softcap_cross_entropy(h, w, all_masked)) == 0.0
    assert float(jnp.abs(jax.grad(lambda w: softcap_cross_entropy(h, w, all_masked))(w)).sum()) == 0


def test_the_loss_is_the_sum_of_per_token_losses():
    h, w, targets = inputs()
    per_token = token_losses(h, w, targets, chunk=7).nll
    np.testing.assert_allclose(softcap_cross_entropy(h, w, targets, chunk=7), per_token.sum(), rtol=1e-6)
    # the sum over scored targets divided by their count is the model's mean cross-entropy
    mean = per_token.sum() / (targets >= 0).sum()
    np.testing.assert_allclose(mean, cross_entropy(SOFTCAP * jnp.tanh((h @ w) / SOFTCAP), targets), rtol=1e-5)


def test_bf16_compute_inputs_stay_close_to_the_plain_path():
    h, w, targets = inputs(jnp.bfloat16)
    fused = token_losses(h, w, targets, chunk=7).nll
    assert fused.dtype == jnp.float32
    # the plain path rounds the logits to bf16 before the softcap; the fused path keeps the fp32 accumulator
    np.testing.assert_allclose(fused, plain_nll(h, w, targets), atol=0.1, rtol=0.02)
    exact = plain_nll(h.astype(jnp.float32), w.astype(jnp.bfloat16).astype(jnp.float32), targets)
    np.testing.assert_allclose(fused, exact, atol=1e-4, rtol=1e-5)
    fdh, fdw = jax.grad(lambda h, w: softcap_cross_entropy(h, w, targets, chunk=7), (0, 1))(h, w)
    pdh, pdw = jax.grad(lambda h, w: plain_nll(h, w, targets).sum(), (0, 1))(h, w)
    assert fdh.dtype == jnp.bfloat16 and fdw.dtype == jnp.float32
    np.testing.assert_allclose(fdh.astype(jnp.float32), pdh.astype(jnp.float32), atol=0.05, rtol=0.05)
    np.testing.assert_allclose(fdw, pdw, atol=0.1, rtol=0.05)


def test_token_losses_give_the_eval_its_losses_and_argmax_accuracy():
    h, w, targets = inputs()
    logits = SOFTCAP * jnp.tanh((h @ w) / SOFTCAP)
    out = token_losses(h, w, targets, chunk=7)
    np.testing.assert_allclose(out.nll, plain_nll(h, w, targets), atol=1e-5, rtol=1e-5)
    hits = (jnp.argmax(logits, -1) == targets) & (targets >= 0)
    # make a few targets the argmax so that both outcomes are present
    targets2 = targets.at[1, :5].set(jnp.argmax(logits, -1)[1, :5])
    out2 = token_losses(h, w, targets2, chunk=7)
    np.testing.assert_array_equal(out.correct, hits)
    assert bool(out2.correct[1, :5].all()) and not bool(out2.correct[0, :4].any())


def test_bad_shapes_and_options_are_refused_in_one_sentence():
    h, w, targets = inputs()
    with pytest.raises(LossInputError, match="h \\(B, T, D\\)"):
        softcap_cross_entropy(h[0], w, targets)
    with pytest.raises(LossInputError, match="at least one token"):
        softcap_cross_entropy(h, w, targets, chunk=0)
    with pytest.raises(LossInputError, match="weights must be"):
        softcap_cross_entropy(h, w, targets, jnp.ones((B, T + 1)))


@pytest.mark.parametrize("loss", [next_token_loss, policy_gradient_loss])
def test_the_train_losses_match_the_full_logits_path_with_every_parameter_gradient(loss):
    """A tiny GPT whose head is not zero: the fused step losses (chunk of 5 tokens) equal the plain ones."""
    def model_with(chunk):
        config = ModelConfig(sequence_len=8, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32,
                             compute_dtype="float32", loss_chunk=chunk)
        model = GPT(config, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)
        rng = np.random.default_rng(0)
        params = jax.tree.map(lambda p: p + rng.normal(0, 0.1, p.shape).astype(np.float32), params)
        return graphdef, params

    rng = np.random.default_rng(1)
    data = rng.integers(0, 64, (2, 9))
    targets = np.where(rng.random((2, 8)) < 0.25, -1, data[:, 1:])
    batch = {"inputs": jnp.asarray(data[:, :-1]), "targets": jnp.asarray(targets),
             "advantages": jnp.asarray(rng.normal(size=(2, 8)), jnp.float32)}
    results = []
    for chunk in (5, 0):
        graphdef, params = model_with(chunk)
        results.append(jax.value_and_grad(lambda p: loss(nnx.merge(graphdef, p), batch))(params))
    (fused, fgrads), (plain, pgrads) = results
    np.testing.assert_allclose(fused, plain, rtol=1e-5)
    for f, p in zip(jax.tree.leaves(fgrads), jax.tree.leaves(pgrads)):
        np.testing.assert_allclose(f, p, atol=1e-5)
