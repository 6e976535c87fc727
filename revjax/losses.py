"""A fused, chunked softcap cross-entropy: the loss of ``softcap·tanh((h @ W)/softcap)`` without the B·T·V logits.

The final hidden states ``h`` (B, T, D, compute dtype) and the head kernel ``W`` (D, V) go in. The sequence axis is
cut into chunks of ``chunk // B`` positions (every row at once, so a batch that is split over devices stays split)
and a scan computes one chunk's logits at a time in fp32 and softcaps them. Training takes a weighted sum of the
token losses (:func:`softcap_cross_entropy`, a custom VJP): when it is differentiated, the forward scan also takes
each chunk's gradients with respect to ``h`` and ``W`` while that chunk's softmax is live, so the logits are made
once, no pass holds more than one chunk of them, and the backward pass only scales the saved gradients by the
incoming cotangent. Evaluation reads per-token losses and argmax hits (:func:`token_losses`). Targets of −1 are not
scored (loss 0, no gradient); positions added to fill the last chunk are not scored either.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from revjax.errors import RevjaxError
from revjax.model import GPT, SOFTCAP, cross_entropy


class LossInputError(RevjaxError, ValueError):
    """Shapes or options the fused loss cannot take."""


class TokenLosses(NamedTuple):
    """Per-token results, (B, T): cross-entropy (fp32, 0 where unscored) and whether the argmax is the target."""

    nll: jax.Array
    correct: jax.Array


def _positions_per_chunk(B: int, T: int, chunk: int) -> int:
    if chunk < 1:
        raise LossInputError(f"the loss chunk must hold at least one token, got {chunk}")
    return max(1, min(T, chunk // B))


def _chunked(x: jax.Array, c: int, fill) -> jax.Array:
    """(B, T, ...) → (n, B, c, ...), padding T up to a multiple of ``c`` with ``fill``."""
    B, T = x.shape[:2]
    n = -(-T // c)
    pad = [(0, 0), (0, n * c - T)] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, pad, constant_values=fill)
    return jnp.moveaxis(x.reshape(B, n, c, *x.shape[2:]), 1, 0)


def _unchunked(x: jax.Array, T: int) -> jax.Array:
    """(n, B, c) → (B, T), dropping the padding."""
    n, B, c = x.shape
    return jnp.moveaxis(x, 0, 1).reshape(B, n * c)[:, :T]


def _chunk_loss(h_c: jax.Array, w: jax.Array, t_c: jax.Array, softcap: float):
    """One chunk's softcapped fp32 logits z, the tanh they came from, their log-normaliser, which targets are
    scored, and the per-token loss (0 where unscored)."""
    t = jnp.tanh(jnp.einsum("bcd,dv->bcv", h_c, w, preferred_element_type=jnp.float32) / softcap)
    z = softcap * t
    lse = jax.nn.logsumexp(z, axis=-1)
    valid = t_c >= 0
    z_t = jnp.take_along_axis(z, jnp.where(valid, t_c, 0)[..., None], axis=-1)[..., 0]
    return z, t, lse, valid, jnp.where(valid, lse - z_t, 0.0)


def _forward(h, w, targets, softcap, c, with_accuracy):
    """Per-chunk (nll, correct), each (n, B, c); ``correct`` is all False unless ``with_accuracy``."""
    w = w.astype(h.dtype)

    def body(_, xs):
        h_c, t_c = xs
        z, _, _, valid, nll = _chunk_loss(h_c, w, t_c, softcap)
        correct = (jnp.argmax(z, axis=-1) == t_c) if with_accuracy else jnp.zeros_like(valid)
        return None, (nll, correct & valid)

    _, out = jax.lax.scan(body, None, (_chunked(h, c, 0), _chunked(targets, c, -1)))
    return out


def _gradients(h, w, targets, weights, softcap, c):
    """Per-chunk nll (n, B, c), and the gradients of Σ weights·nll: dh (n, B, c, D) in ``h``'s dtype, dw (D, V) fp32.

    Each chunk's gradient is taken while its softmax is live: d/dz = weight·(softmax − onehot), through the softcap
    (d softcap·tanh(x/softcap)/dx = 1 − tanh²), into both products.
    """
    wc = w.astype(h.dtype)
    V = w.shape[1]

    def body(dw, xs):
        h_c, t_c, a_c = xs
        z, t, lse, valid, nll = _chunk_loss(h_c, wc, t_c, softcap)
        onehot = jax.nn.one_hot(jnp.where(valid, t_c, -1), V, dtype=jnp.float32)  # −1 → all zeros
        dz = jnp.where(valid, a_c, 0.0)[..., None] * (jnp.exp(z - lse[..., None]) - onehot)
        draw = (dz * (1.0 - jnp.square(t))).astype(h.dtype)
        dh_c = jnp.einsum("bcv,dv->bcd", draw, wc, preferred_element_type=jnp.float32).astype(h.dtype)
        dw = dw + jnp.einsum("bcd,bcv->dv", h_c, draw, preferred_element_type=jnp.float32)
        return dw, (nll, dh_c)

    xs = (_chunked(h, c, 0), _chunked(targets, c, -1), _chunked(weights, c, 0.0))
    dw, (nll, dh) = jax.lax.scan(body, jnp.zeros(w.shape, jnp.float32), xs)
    return nll, dh, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _weighted_sum(h, w, targets, weights, softcap, c):
    return jnp.sum(weights * _unchunked(_forward(h, w, targets, softcap, c, False)[0], h.shape[1]))


def _weighted_sum_fwd(h, w, targets, weights, softcap, c):
    nll, dh, dw = _gradients(h, w, targets, weights, softcap, c)
    (B, T, D), nll = h.shape, _unchunked(nll, h.shape[1])
    dh = jnp.moveaxis(dh, 0, 1).reshape(B, -1, D)[:, :T]
    return jnp.sum(weights * nll), (dh, dw.astype(w.dtype), nll)


def _weighted_sum_bwd(softcap, c, residuals, g):
    dh, dw, nll = residuals
    return (g * dh).astype(dh.dtype), (g * dw).astype(dw.dtype), None, g * nll


_weighted_sum.defvjp(_weighted_sum_fwd, _weighted_sum_bwd)


def _check(h, w, targets):
    if h.ndim != 3 or w.ndim != 2 or targets.shape != h.shape[:2] or w.shape[0] != h.shape[2]:
        raise LossInputError(f"the fused loss takes h (B, T, D), kernel (D, V) and targets (B, T); got "
                             f"{h.shape}, {w.shape} and {targets.shape}")


def softcap_cross_entropy(h_BTD: jax.Array, kernel_DV: jax.Array, targets_BT: jax.Array,
                          weights_BT: jax.Array | None = None, *, chunk: int = 4096,
                          softcap: float = SOFTCAP) -> jax.Array:
    """Σ weights·cross-entropy (fp32, nats) of ``softcap·tanh((h @ kernel)/softcap)`` against ``targets`` (−1: not
    scored) over the scored targets, ``chunk`` tokens of logits at a time; weights default to 1 (the summed loss).
    Differentiable in ``h``, ``kernel`` and ``weights``: the forward pass of a gradient computes the gradients of the
    head chunk by chunk, so the backward pass only scales them."""
    _check(h_BTD, kernel_DV, targets_BT)
    B, T = targets_BT.shape
    weights_BT = jnp.ones((B, T), jnp.float32) if weights_BT is None else weights_BT.astype(jnp.float32)
    if weights_BT.shape != (B, T):
        raise LossInputError(f"the loss weights must be (B, T) = {(B, T)}, got {weights_BT.shape}")
    return _weighted_sum(h_BTD, kernel_DV, targets_BT.astype(jnp.int32), weights_BT, float(softcap),
                         _positions_per_chunk(B, T, chunk))


def token_losses(h_BTD: jax.Array, kernel_DV: jax.Array, targets_BT: jax.Array, *, chunk: int = 4096,
                 softcap: float = SOFTCAP, accuracy: bool = True) -> TokenLosses:
    """What evaluation reads, forward only: per-token cross-entropy and argmax accuracy (False where unscored, and
    everywhere without ``accuracy``)."""
    _check(h_BTD, kernel_DV, targets_BT)
    B, T = targets_BT.shape
    c = _positions_per_chunk(B, T, chunk)
    nll, correct = _forward(h_BTD, kernel_DV, targets_BT.astype(jnp.int32), float(softcap), c, accuracy)
    return TokenLosses(_unchunked(nll, T), _unchunked(correct, T))


def model_token_nll(model: GPT, inputs_BT: jax.Array, targets_BT: jax.Array) -> jax.Array:
    """Per-token cross-entropy (B, T) of ``model`` on ``inputs`` → ``targets``, forward only (evaluation): fused in
    chunks of ``model.config.loss_chunk`` tokens, or through the full logits when that is 0."""
    chunk = model.config.loss_chunk
    if not chunk:
        return cross_entropy(model(inputs_BT), targets_BT, reduction="none")
    h = model.features(inputs_BT)
    return token_losses(h, model.lm_head.kernel[...], targets_BT, chunk=chunk, accuracy=False).nll


def model_loss(model: GPT, inputs_BT: jax.Array, targets_BT: jax.Array,
               weights_BT: jax.Array | None = None) -> jax.Array:
    """Σ weights·cross-entropy of ``model`` over the scored targets (weights default to 1), for training: fused in
    chunks of ``model.config.loss_chunk`` tokens, or through the full logits when that is 0."""
    chunk = model.config.loss_chunk
    if not chunk:
        nll = cross_entropy(model(inputs_BT), targets_BT, reduction="none")
        return jnp.sum(nll if weights_BT is None else weights_BT * nll)
    return softcap_cross_entropy(model.features(inputs_BT), model.lm_head.kernel[...], targets_BT, weights_BT,
                                 chunk=chunk)
