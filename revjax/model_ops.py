"""The GPT's lean building blocks: parameter-free RMSNorm and the MLP's relu(h)²·W, each with a hand-written
backward pass that keeps less than differentiating the expression would. :mod:`revjax.model` builds on them (and
re-exports them)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NORM_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07, torch's rms_norm default for eps=None


@jax.custom_vjp
def rms_norm(x: jax.Array) -> jax.Array:
    """Parameter-free RMSNorm over the last axis, computed in fp32 and cast back to the input dtype.

    The backward pass keeps the output (which the next product keeps anyway) and the fp32 reciprocal RMS of each
    row, not the fp32 copies of the row that differentiating the expression keeps.
    """
    return _rms_norm_fwd(x)[0]


def _rms_norm_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    x32 = x.astype(jnp.float32)
    r = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + NORM_EPS)
    y = (x32 * r).astype(x.dtype)
    return y, (y, r)


def _rms_norm_bwd(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    # y = x·r with r = (mean(x²) + eps)^(-1/2):  dx = r·(g − y·mean(g·y))
    y, r = residuals
    y32, g32 = y.astype(jnp.float32), g.astype(jnp.float32)
    return ((r * (g32 - y32 * jnp.mean(g32 * y32, axis=-1, keepdims=True))).astype(y.dtype),)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


@jax.custom_vjp
def relu_squared_matmul(h: jax.Array, w: jax.Array) -> jax.Array:
    """relu(h)² @ w, the MLP's second half; the backward pass keeps ``h`` and recomputes relu(h)², where
    differentiating the expression keeps both and two more arrays of their size."""
    return jnp.square(jax.nn.relu(h)) @ w


def _relu_squared_matmul_fwd(h: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return relu_squared_matmul(h, w), (h, w)


def _relu_squared_matmul_bwd(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    h, w = residuals
    r = jax.nn.relu(h)
    a = jnp.square(r)
    da = g @ w.T
    dw = jnp.einsum("...i,...o->io", a, g)
    return (2 * r * da).astype(h.dtype), dw.astype(w.dtype)


relu_squared_matmul.defvjp(_relu_squared_matmul_fwd, _relu_squared_matmul_bwd)
