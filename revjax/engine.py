"""Compiled sampling with a KV cache: one ``lax.fori_loop`` over positions, one decode step per token.

Prompts of different lengths share one compiled program: every row starts at position 0 and, while a row is
still inside its prompt, its prompt token is fed instead of the sampled one. Ids are in model order; orienting
prompts and restoring outputs to reading order is the direction module's job.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from revjax.model import GPT, KVCache


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float, top_k: int | None) -> jax.Array:
    """Next ids from (B, V) logits: argmax at temperature 0, else softmax sampling over the top_k logits."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1)
    if top_k is not None and top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits / temperature, axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "top_k"))
def _generate(graphdef, params, tokens, lengths, key, *, temperature: float, top_k: int | None):
    model: GPT = nnx.merge(graphdef, params)
    batch, total = tokens.shape
    cache = KVCache.zeros(model.config, batch, total, dtype=model.compute_dtype)

    def body(t, carry):
        tokens, cache, key = carry
        logits, cache = model(jax.lax.dynamic_slice_in_dim(tokens, t, 1, axis=1), cache)
        key, sub = jax.random.split(key)
        sampled = sample_logits(logits[:, -1], sub, temperature, top_k).astype(tokens.dtype)
        given = jax.lax.dynamic_slice_in_dim(tokens, t + 1, 1, axis=1)[:, 0]
        chosen = jnp.where(t + 1 < lengths, given, sampled)
        return jax.lax.dynamic_update_slice_in_dim(tokens, chosen[:, None], t + 1, axis=1), cache, key

    tokens, _, _ = jax.lax.fori_loop(0, total - 1, body, (tokens, cache, key))
    return tokens


def generate(
    graphdef: nnx.GraphDef,
    params: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    stop_ids: Sequence[int] = (),
    max_len: int | None = None,
) -> list[list[int]]:
    """Continue each prompt (model-order ids) by up to ``max_new_tokens``; returns the new ids, cut before a stop id.

    ``max_len`` bounds prompt + continuation (default: the longest prompt plus ``max_new_tokens``).
    """
    longest = max(len(p) for p in prompts)
    total = max_len or longest + max_new_tokens
    if longest >= total:
        raise ValueError(f"a prompt of {longest} tokens leaves no room to generate within {total} positions")
    tokens = np.zeros((len(prompts), total), np.int32)
    for i, prompt in enumerate(prompts):
        tokens[i, : len(prompt)] = prompt
    lengths = np.array([len(p) for p in prompts], np.int32)
    out = np.asarray(
        _generate(graphdef, params, tokens, lengths, jax.random.key(seed), temperature=float(temperature), top_k=top_k)
    )
    results = []
    for row, n in zip(out, lengths):
        new = row[n : n + max_new_tokens].tolist()
        for i, token in enumerate(new):
            if token in stop_ids:
                new = new[:i]
                break
        results.append(new)
    return results
