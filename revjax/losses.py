"""A fused, chunked softcap cross-entropy: the loss of ``softcap·tanh((h @ W)/softcap)`` without the B·T·V logits.

The final hidden states ``h`` (B, T, D, compute dtype) and the head kernel ``W`` (D, V) go in; per-token losses
come out. The sequence axis is cut into chunks of ``chunk // B`` positions (every row at once, so a batch that is
split over devices stays split) and a scan computes one chunk's logits at a time in fp32, softcaps them and keeps
only each token's loss and log-normaliser. The backward pass (a custom VJP) recomputes each chunk's logits and
rebuilds the softmax from the saved log-normaliser, so neither pass holds more than one chunk of logits. Targets of
−1 are not scored (loss 0, no gradient); positions added to fill the last chunk are not scored either.
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


def _logits(h_c: jax.Array, w: jax.Array, softcap: float) -> tuple[jax.Array, jax.Array]:
    """Softcapped fp32 logits of one chunk and the tanh they came from (for the backward pass)."""
    raw = jnp.einsum("bcd,dv->bcv", h_c, w, preferred_element_type=jnp.float32)
    t = jnp.tanh(raw / softcap)
    return softcap * t, t


def _forward(h, w, targets, softcap, c, with_accuracy):
    """Per-chunk (nll, log-normaliser, correct), each (n, B, c)."""
    w = w.astype(h.dtype)

    def body(_, xs):
        h_c, t_c = xs
        z, _ = _logits(h_c, w, softcap)
        lse = jax.nn.logsumexp(z, axis=-1)
        valid = t_c >= 0
        z_t = jnp.take_along_axis(z, jnp.where(valid, t_c, 0)[..., None], axis=-1)[..., 0]
        nll = jnp.where(valid, lse - z_t, 0.0)
        correct = (jnp.argmax(z, axis=-1) == t_c) if with_accuracy else jnp.zeros_like(valid)
        return None, (nll, lse, correct & valid)

    _, out = jax.lax.scan(body, None, (_chunked(h, c, 0), _chunked(targets, c, -1)))
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _nll(h, w, targets, softcap, c):
    return _unchunked(_forward(h, w, targets, softcap, c, False)[0], h.shape[1])


def _nll_fwd(h, w, targets, softcap, c):
    nll, lse, _ = _forward(h, w, targets, softcap, c, False)
    return _unchunked(nll, h.shape[1]), (h, w, targets, lse)


def _nll_bwd(softcap, c, residuals, g_BT):
    h, w, targets, lse = residuals
    T, V = h.shape[1], w.shape[1]
    wc = w.astype(h.dtype)

    def body(dw, xs):
        h_c, t_c, lse_c, g_c = xs
        z, t = _logits(h_c, wc, softcap)
        valid = t_c >= 0
        p = jnp.exp(z - lse_c[..., None])
        onehot = jax.nn.one_hot(jnp.where(valid, t_c, -1), V, dtype=jnp.float32)  # −1 → all zeros
        dz = jnp.where(valid, g_c, 0.0)[..., None] * (p - onehot)
        draw = (dz * (1.0 - jnp.square(t))).astype(h.dtype)  # d softcap·tanh(x/softcap) / dx = 1 − tanh²
        dh_c = jnp.einsum("bcv,dv->bcd", draw, wc, preferred_element_type=jnp.float32).astype(h.dtype)
        dw = dw + jnp.einsum("bcd,bcv->dv", h_c, draw, preferred_element_type=jnp.float32)
        return dw, dh_c

    xs = (_chunked(h, c, 0), _chunked(targets, c, -1), lse, _chunked(g_BT.astype(jnp.float32), c, 0.0))
    dw, dh = jax.lax.scan(body, jnp.zeros(w.shape, jnp.float32), xs)
    B, D = h.shape[0], h.shape[2]
    dh = jnp.moveaxis(dh, 0, 1).reshape(B, -1, D)[:, :T]
    return dh, dw.astype(w.dtype), None


_nll.defvjp(_nll_fwd, _nll_bwd)


def _check(h, w, targets):
    if h.ndim != 3 or w.ndim != 2 or targets.shape != h.shape[:2] or w.shape[0] != h.shape[2]:
        raise LossInputError(f"the fused loss takes h (B, T, D), kernel (D, V) and targets (B, T); got "
                             f"{h.shape}, {w.shape} and {targets.shape}")


def softcap_cross_entropy(h_BTD: jax.Array, kernel_DV: jax.Array, targets_BT: jax.Array, *, chunk: int = 4096,
                          softcap: float = SOFTCAP, reduction: str = "none") -> jax.Array:
    """Cross-entropy (fp32, nats) of ``softcap·tanh((h @ kernel)/softcap)`` against ``targets`` (−1: not scored),
    differentiable in ``h`` and ``kernel``; ``chunk`` tokens of logits at a time. 'none': per token (B, T), 0 where
    unscored; 'sum': their sum."""
    _check(h_BTD, kernel_DV, targets_BT)
    if reduction not in ("none", "sum"):
        raise LossInputError(f"reduction must be 'none' or 'sum', got {reduction!r}")
    B, T = targets_BT.shape
    nll = _nll(h_BTD, kernel_DV, targets_BT.astype(jnp.int32), float(softcap), _positions_per_chunk(B, T, chunk))
    return nll if reduction == "none" else nll.sum()


def token_losses(h_BTD: jax.Array, kernel_DV: jax.Array, targets_BT: jax.Array, *, chunk: int = 4096,
                 softcap: float = SOFTCAP) -> TokenLosses:
    """What evaluation reads, forward only: per-token cross-entropy and argmax accuracy (False where unscored)."""
    _check(h_BTD, kernel_DV, targets_BT)
    B, T = targets_BT.shape
    c = _positions_per_chunk(B, T, chunk)
    nll, _, correct = _forward(h_BTD, kernel_DV, targets_BT.astype(jnp.int32), float(softcap), c, True)
    return TokenLosses(_unchunked(nll, T), _unchunked(correct, T))


def model_token_nll(model: GPT, inputs_BT: jax.Array, targets_BT: jax.Array) -> jax.Array:
    """Per-token cross-entropy (B, T) of ``model`` on ``inputs`` → ``targets``: fused in chunks of
    ``model.config.loss_chunk`` tokens, or through the full logits when that is 0."""
    chunk = model.config.loss_chunk
    if not chunk:
        return cross_entropy(model(inputs_BT), targets_BT, reduction="none")
    return softcap_cross_entropy(model.features(inputs_BT), model.lm_head.kernel[...], targets_BT, chunk=chunk)
