"""The GPT, in Flax NNX, with exactly onanchat's (nanochat 4a87a0d) semantics.

Token embedding → parameter-free RMSNorm → L pre-norm blocks (causal self-attention with split-halves
RoPE, QK-norm after RoPE and optional GQA; relu² MLP at 4×) → RMSNorm → untied ``lm_head`` → logit softcap 15.
Kernels are stored ``(in, out)``; PyTorch's ``(out, in)`` layout is the interop module's business. The attention
kernels (XLA, splash, masked, cached) are in :mod:`revjax.attention`. ``model.recipe: nanochat-2026`` (or its
elements one by one, :mod:`revjax.architecture`) adds nanochat 92d63d4's sliding windows, value embeddings,
per-layer lambdas, smear, backout, Q/K scale, padded vocabulary, rotary base and initialisation; their parameters
and arithmetic are in :mod:`revjax.recipe_model`.

The model maps token ids to logits and knows nothing of files, tokenizers or directions.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from revjax import architecture, recipe_model
from revjax.attention import CAUSAL_KERNELS, cached_attention, call_kernel, masked_attention, target_platform
from revjax.config import ConfigError, ModelConfig
from revjax.model_ops import NORM_EPS, relu_squared_matmul, rms_norm  # noqa: F401  (NORM_EPS re-exported)
from revjax.recipe_model import mix_value_embedding

ROPE_BASE = 10_000.0
SOFTCAP = 15.0

# Logical axis names of every parameter kind; the sharding rules map these names to mesh axes.
PARAM_AXES: dict[str, tuple[str, ...]] = {
    "wte": ("vocab", "embed"),
    "c_q": ("embed", "heads"),
    "c_k": ("embed", "kv_heads"),
    "c_v": ("embed", "kv_heads"),
    "attn.c_proj": ("heads", "embed"),
    "c_fc": ("embed", "mlp"),
    "mlp.c_proj": ("mlp", "embed"),
    "lm_head": ("embed", "vocab"),
    # the nanochat-2026 elements (logical names without a rule are replicated)
    "value_embeds": ("vocab", "value_embed"),
    "ve_gate": ("gate_in", "gate_out"),
    "smear_gate": ("gate_in", "gate_out"),
    "resid_lambdas": ("layer",),
    "x0_lambdas": ("layer",),
    "smear_lambda": ("scalar",),
    "backout_lambda": ("scalar",),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@functools.lru_cache(maxsize=None)
def _inv_freq(head_dim: int, base: float = ROPE_BASE) -> np.ndarray:
    channels = np.arange(0, head_dim, 2, dtype=np.float32)
    return (np.float32(1.0) / (np.float32(base) ** (channels / np.float32(head_dim)))).astype(np.float32)


def rope_tables(positions: jax.Array, head_dim: int, base: float = ROPE_BASE,
                dtype=jnp.bfloat16) -> tuple[jax.Array, jax.Array]:
    """cos/sin of shape (T, head_dim/2) for positions (T,), or (B, T, head_dim/2) for per-row positions (B, T),
    computed in fp32 and rounded to ``dtype`` (bf16, as onanchat's tables always are)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(_inv_freq(head_dim, base))
    return jnp.cos(freqs).astype(dtype), jnp.sin(freqs).astype(dtype)


def apply_rope(x_BTHD: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Split-halves rotary embedding: (x1, x2) → (x1·cos + x2·sin, −x1·sin + x2·cos)."""
    d = x_BTHD.shape[-1] // 2
    x1, x2 = x_BTHD[..., :d], x_BTHD[..., d:]
    cos, sin = (cos[None], sin[None]) if cos.ndim == 2 else (cos, sin)
    cos = cos[:, :, None, :].astype(jnp.promote_types(x_BTHD.dtype, cos.dtype))
    sin = sin[:, :, None, :].astype(cos.dtype)
    y = jnp.concatenate([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], axis=-1)
    return y.astype(x_BTHD.dtype)


def init_std(fan_in: int, fan_out: int) -> float:
    """nanochat's Linear init: 1/√fan_in · min(1, √(fan_out/fan_in)) (arXiv 2310.17813)."""
    return 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))


class Linear(nnx.Module):
    """Bias-free linear layer with an ``(in, out)`` kernel; zero-initialised when ``zero_init``, else drawn by
    ``init(key, shape)`` or, by default, N(0, :func:`init_std`²)."""

    def __init__(self, fan_in: int, fan_out: int, *, rngs: nnx.Rngs, zero_init: bool = False, init=None):
        if zero_init:
            kernel = jnp.zeros((fan_in, fan_out), jnp.float32)
        elif init is not None:
            kernel = init(rngs.params(), (fan_in, fan_out))
        else:
            kernel = init_std(fan_in, fan_out) * jax.random.normal(rngs.params(), (fan_in, fan_out), jnp.float32)
        self.kernel = nnx.Param(kernel)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...].astype(x.dtype)


class KVCache(NamedTuple):
    """Keys/values of every layer, head-major (L, B, H_kv, T_max, D), the number of positions already filled, and
    per row the id at position ``pos − 1`` (the smear's previous token: its normalised embedding is recomputed).

    A cached call writes each layer's new keys/values into the stacked arrays in place and attends over that
    layer's slice as it lies (a windowed layer over the part its window sees), so a decode step neither
    transposes nor rebuilds the cache.
    """

    k: jax.Array
    v: jax.Array
    pos: jax.Array
    prev: jax.Array

    @classmethod
    def zeros(cls, config: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> "KVCache":
        shape = (config.n_layer, batch, config.n_kv_head, max_len, config.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32),
                   jnp.zeros((batch,), jnp.int32))


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int = 0, *, rngs: nnx.Rngs):
        d, hd = config.n_embd, config.head_dim
        e = architecture.elements(config)
        self.n_head, self.n_kv_head, self.head_dim, self.qk_scale = config.n_head, config.n_kv_head, hd, e.qk_scale
        init = recipe_model.block_inits(e, d)["input"]
        self.c_q = Linear(d, config.n_head * hd, rngs=rngs, init=init)
        self.c_k = Linear(d, config.n_kv_head * hd, rngs=rngs, init=init)
        self.c_v = Linear(d, config.n_kv_head * hd, rngs=rngs, init=init)
        self.c_proj = Linear(d, d, rngs=rngs, zero_init=True)
        if e.value_embeds and architecture.has_value_embed(layer, config.n_layer):
            self.ve_gate = recipe_model.Gate(architecture.VE_GATE_CHANNELS, config.n_kv_head, rngs=rngs)

    def __call__(self, x_BTD, cos, sin, implementation, window=None, ve=None, cache=None, layer=None, mask=None):
        """Output (B, T, d) and, with ``cache``, the cache with this ``layer``'s keys/values written at its ``pos``.
        ``window``: the layer's sliding window (None: whole context); ``ve``: its value embedding of the ids (or
        None); ``mask`` (B, T, T) replaces the causal mask, window included (no cache)."""
        B, T, _ = x_BTD.shape
        q = self.c_q(x_BTD).reshape(B, T, self.n_head, self.head_dim)
        k = self.c_k(x_BTD).reshape(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x_BTD).reshape(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            v = mix_value_embedding(self.ve_gate, x_BTD, v, ve)
        q, k = rms_norm(apply_rope(q, cos, sin)), rms_norm(apply_rope(k, cos, sin))
        if self.qk_scale != 1.0:
            q, k = q * jnp.asarray(self.qk_scale, q.dtype), k * jnp.asarray(self.qk_scale, k.dtype)
        if mask is not None:
            return self.c_proj(masked_attention(q, k, v, mask)), None
        if cache is None:
            y = call_kernel(implementation, q, k, v, window)
            return self.c_proj(y.reshape(B, T, -1)), None
        at = (layer, 0, 0, cache.pos, 0)
        k_all = jax.lax.dynamic_update_slice(cache.k, k.transpose(0, 2, 1, 3)[None].astype(cache.k.dtype), at)
        v_all = jax.lax.dynamic_update_slice(cache.v, v.transpose(0, 2, 1, 3)[None].astype(cache.v.dtype), at)
        y = cached_attention(q, k_all[layer], v_all[layer], cache.pos, window)
        return self.c_proj(y), cache._replace(k=k_all, v=v_all)


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        init = recipe_model.block_inits(architecture.elements(config), config.n_embd)["c_fc"]
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, rngs=rngs, init=init)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, rngs=rngs, zero_init=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.c_fc(x)
        return relu_squared_matmul(h, self.c_proj.kernel[...].astype(h.dtype))


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int = 0, *, rngs: nnx.Rngs):
        self.attn = Attention(config, layer, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, cos, sin, implementation, window=None, ve=None, cache=None, layer=None, mask=None):
        y, cache = self.attn(rms_norm(x), cos, sin, implementation, window, ve, cache, layer, mask)
        x = x + y
        x = x + self.mlp(rms_norm(x))
        return x, cache


# model.remat → what the backward pass keeps of each block's forward (None: no rematerialisation)
REMAT_POLICIES = {
    "none": None,
    False: None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
    True: jax.checkpoint_policies.nothing_saveable,
}


def residual_rms(x: jax.Array) -> jax.Array:
    """The fp32 root mean square of a whole activation tensor (a scalar)."""
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


class GPT(nnx.Module):
    """onanchat's GPT, or nanochat 2026's (``model.recipe``). ``model(idx)`` → softcapped fp32 logits (B, T, V)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        e, d = architecture.elements(config), config.n_embd
        vocab = architecture.padded_vocab(config.vocab_size, e.vocab_multiple)
        wte = jax.random.normal(rngs.params(), (vocab, d), jnp.float32)
        self.wte = nnx.Param(wte if e.init != architecture.NANOCHAT_2026 else 0.8 * wte)
        self.blocks = nnx.List([Block(config, i, rngs=rngs) for i in range(config.n_layer)])
        head = recipe_model.nanochat_inits(d)["head"] if e.init == architecture.NANOCHAT_2026 else None
        self.lm_head = Linear(d, config.vocab_size, rngs=rngs, zero_init=head is None, init=head)
        if (padding := recipe_model.head_padding(config, e, rngs)) is not None:
            self.lm_head.padding = padding
        recipe_model.add_recipe_params(self, config, e, rngs)
        self.windows = architecture.layer_windows(e.window_pattern, config.n_layer, config.sequence_len)

    @property
    def elements(self) -> architecture.Elements:
        return architecture.elements(self.config)

    @property
    def compute_dtype(self):
        return DTYPES[self.config.compute_dtype]

    def attention_implementation(self) -> str:
        """The key of :data:`revjax.attention.CAUSAL_KERNELS` that ``model.attention`` names (``auto``: splash on
        TPU, cuDNN on GPU in bf16, else XLA)."""
        choice = self.config.attention
        if choice == "auto":
            backend = target_platform()
            if backend == "tpu":
                return "splash"
            return "cudnn" if backend == "gpu" and self.config.compute_dtype == "bfloat16" else "xla"
        if choice not in CAUSAL_KERNELS:
            raise ConfigError(f"model.attention={choice!r} is not an attention kernel; choose auto or one of "
                              f"{', '.join(CAUSAL_KERNELS)}")
        return choice

    def _trunk(self, idx_BT: jax.Array, cache: KVCache | None = None, stats: bool = False,
               positions: jax.Array | None = None, mask: jax.Array | None = None):
        """Final RMS-normed hidden state (B, T, d) in the compute dtype, the updated cache (or None), and with
        ``stats`` the fp32 RMS of the residual stream after each block (L,) (else None). ``positions`` (B, T) and
        ``mask`` (B, T, T), given together and without a cache, replace the row's positions 0…T−1 and the causal
        mask (packed sequences)."""
        B, T = idx_BT.shape
        e = self.elements
        if positions is None:
            positions = (jnp.zeros((), jnp.int32) if cache is None else cache.pos) + jnp.arange(T)
        tables = jnp.bfloat16 if e.rope_bf16 else self.compute_dtype
        cos, sin = rope_tables(positions, self.config.head_dim, e.rope_base, tables)
        x = self._embed(idx_BT)
        if e.smear:
            x = self._smear(x, cache, positions, mask)
        run = self._scanned_blocks if self.config.scan_layers else self._unrolled_blocks
        x, cache, rms = run(x, idx_BT, cos, sin, cache, stats, mask, positions)
        if cache is not None:
            cache = cache._replace(pos=cache.pos + T, prev=idx_BT[:, -1].astype(jnp.int32))
        return rms_norm(x), cache, rms

    def _embed(self, idx_BT: jax.Array) -> jax.Array:
        return rms_norm(self.wte[...].astype(self.compute_dtype)[idx_BT])

    def _smear(self, x, cache, positions, mask):
        """The smear over normalised embeddings: each token's predecessor is the previous position of the row, the
        cache's last id for a cached call's first token, or in packed rows the one of its own sequence."""
        if mask is not None:
            prev, has_prev = recipe_model.packed_previous(x, positions, mask)
        else:
            first = jnp.zeros_like(x[:, :1]) if cache is None else self._embed(cache.prev[:, None])
            prev, has_prev = jnp.concatenate([first, x[:, :-1]], axis=1), positions > 0
        return recipe_model.smear(self, x, prev, has_prev)

    def _unrolled_blocks(self, x, idx, cos, sin, cache, stats, mask=None, positions=None):
        implementation = self.attention_implementation()
        policy = REMAT_POLICIES[self.config.remat]
        e, rms, x0, kept = self.elements, [], x, None
        for i, block in enumerate(self.blocks):
            if e.layer_lambdas:
                x = recipe_model.mix_layer_input(self, i, x, x0)
            window, ve = self.windows[i], recipe_model.value_embedding(self, i, idx, x.dtype)
            if cache is not None or mask is not None:
                layer_mask = None if mask is None else recipe_model.windowed_mask(mask, positions, window)
                x, cache = block(x, cos, sin, implementation, window, ve, cache, i, layer_mask)
            elif policy is None:
                x, _ = block(x, cos, sin, implementation, window, ve)
            else:
                x, _ = nnx.remat(Block.__call__, static_argnums=(4, 5), policy=policy)(
                    block, x, cos, sin, implementation, window, ve)
            if e.backout and i == architecture.backout_layer(len(self.blocks)):
                kept = x
            if stats:
                rms.append(residual_rms(x))
        if kept is not None:
            x = recipe_model.backout(self, x, kept)
        return x, cache, (jnp.stack(rms) if stats else None)

    def _scanned_blocks(self, x, idx, cos, sin, cache, stats, mask=None, positions=None):
        """The blocks as one ``lax.scan`` over their parameters stacked on a leading layer axis (in the compute
        dtype). Parameters stay stored per layer, so both modes share checkpoints and exports."""
        if problem := architecture.scan_refusal(self.config):
            raise ConfigError(problem)
        implementation = self.attention_implementation()
        graphdef, _ = nnx.split(self.blocks[0])
        dtype = self.compute_dtype
        stacked = jax.tree.map(lambda *ws: jnp.stack([w.astype(dtype) for w in ws]),
                               *[nnx.state(block) for block in self.blocks])

        def body(carry, layer_params):
            h, k_all, v_all = carry
            params, layer = layer_params
            block = nnx.merge(graphdef, params)
            if cache is None:
                h, _ = block(h, cos, sin, implementation, mask=mask)
            else:
                h, new = block(h, cos, sin, implementation, cache=cache._replace(k=k_all, v=v_all), layer=layer)
                k_all, v_all = new.k, new.v
            return (h, k_all, v_all), (residual_rms(h) if stats else None)

        policy = REMAT_POLICIES[self.config.remat]
        if policy is not None and cache is None:
            body = jax.checkpoint(body, policy=policy, prevent_cse=False)
        kv = (None, None) if cache is None else (cache.k, cache.v)
        layers = jnp.arange(self.config.n_layer, dtype=jnp.int32)
        (x, k_all, v_all), rms = jax.lax.scan(body, (x, *kv), (stacked, layers))
        if cache is not None:
            cache = cache._replace(k=k_all, v=v_all)
        return x, cache, rms

    def features(self, idx_BT: jax.Array, positions: jax.Array | None = None,
                 mask: jax.Array | None = None) -> jax.Array:
        """The final RMS-normed hidden state (B, T, d) that ``lm_head`` reads: ``head(features(idx))`` is
        ``model(idx)``. ``positions`` (B, T) and ``mask`` (B, T, T; query t sees key s iff ``mask[b, t, s]``)
        pack several sequences, or a prefix and its continuations, into one row."""
        if (positions is None) != (mask is None):
            raise ValueError("features takes positions and mask together")
        return self._trunk(idx_BT, positions=positions, mask=mask)[0]

    def features_with_stats(self, idx_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``features(idx)`` and the fp32 RMS of the residual stream after each block, shape (n_layer,)."""
        h, _, rms = self._trunk(idx_BT, stats=True)
        return h, rms

    def head(self, h_BTD: jax.Array) -> jax.Array:
        """Softcapped fp32 logits from final hidden states."""
        logits = self.lm_head(h_BTD).astype(jnp.float32)
        return SOFTCAP * jnp.tanh(logits / SOFTCAP)

    def __call__(self, idx_BT: jax.Array, cache: KVCache | None = None):
        """Logits for ``idx_BT``; with a cache, also the updated cache (positions continue from ``cache.pos``)."""
        h, new_cache, _ = self._trunk(idx_BT, cache)
        logits = self.head(h)
        return logits if cache is None else (logits, new_cache)


def cross_entropy(logits_BTV: jax.Array, targets_BT: jax.Array, reduction: str = "mean") -> jax.Array:
    """Cross-entropy in fp32 with targets of −1 ignored; 'mean' over the scored targets, 'none' per position."""
    valid = targets_BT >= 0
    logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, targets_BT, 0)[..., None], axis=-1)[..., 0]
    nll = jnp.where(valid, nll, 0.0)
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.sum() / jnp.maximum(valid.sum(), 1)


def loss_fn(model: GPT, inputs_BT: jax.Array, targets_BT: jax.Array) -> jax.Array:
    return cross_entropy(model(inputs_BT), targets_BT)


# ---- sizes --------------------------------------------------------------------------------------------------


def num_params(config: ModelConfig) -> int:
    """Parameter count: embedding + head + L blocks (attention with GQA, 4× MLP), and the parameters of the
    nanochat-2026 elements the model has (:func:`revjax.architecture.counts`)."""
    return architecture.counts(config).total


def flops_per_token(config: ModelConfig, seq_len: int | None = None) -> int:
    """nanochat's estimate: 6·(the Linear kernels, lm_head included) + Σ_layers 12·H·head_dim·min(window, T) (a
    layer's attention counts the keys its window lets it see; without windows, 6·(N − N_wte) + 12·L·H·head_dim·T)."""
    t = config.sequence_len if seq_len is None else seq_len
    return 6 * architecture.counts(config).matmul + architecture.attention_flops(config, t)
