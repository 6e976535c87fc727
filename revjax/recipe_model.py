"""The GPT's nanochat-2026 elements (:mod:`revjax.architecture` says which a model has): value embeddings and their
gates, per-layer lambdas, smear, backout, the padded head, nanochat's initialisation, and the per-layer windows of
the masked path. :class:`revjax.model.GPT` calls these; a model without the elements never does.

Parameter names in the model (nanochat's state_dict name in brackets; kernels are ``(in, out)``, the transpose of
PyTorch's Linear weights, and everything else keeps nanochat's layout):

* ``value_embeds[str(i)]`` (V_pad, n_kv_head·head_dim) [``value_embeds.{i}.weight``], on the layers of
  :func:`revjax.architecture.value_embed_layers`;
* ``blocks[i].attn.ve_gate.kernel`` (12, n_kv_head) [``transformer.h.{i}.attn.ve_gate.weight``], on the same layers;
* ``resid_lambdas`` (n_layer,) and ``x0_lambdas`` (n_layer,) [same names];
* ``smear_gate.kernel`` (24, 1) [``smear_gate.weight``], ``smear_lambda`` (1,) and ``backout_lambda`` (1,)
  [same names];
* ``wte`` (V_pad, d) [``transformer.wte.weight``]; the head is ``lm_head.kernel`` (d, V) for the real vocabulary
  and ``lm_head.padding`` (d, V_pad − V) for the padding rows [together ``lm_head.weight`` (V_pad, d)], so that
  ``lm_head.kernel`` gives exactly the logits nanochat keeps after cutting the padding off.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from revjax import architecture
from revjax.architecture import NANOCHAT_2026, SMEAR_CHANNELS, VE_GATE_CHANNELS, Elements

Init = Callable[[jax.Array, tuple[int, ...]], jax.Array]

GATE_INIT_HIGH = 0.02  # gates start at U(0, 0.02): slightly above neutral
BACKOUT_INIT = 0.2
VE_GATE_RANGE = 3.0  # a value-embedding gate lies in (0, 3)


def uniform(low: float, high: float) -> Init:
    return lambda key, shape: jax.random.uniform(key, shape, jnp.float32, low, high)


def normal(std: float) -> Init:
    return lambda key, shape: std * jax.random.normal(key, shape, jnp.float32)


def nanochat_inits(n_embd: int) -> dict[str, Init]:
    """nanochat's initialisation per parameter kind: block inputs uniform with the std of 1/√d (c_fc 0.4× that),
    projections zero, wte N(0, 0.8²), the head N(0, 0.001²), value embeddings like c_v, gates U(0, 0.02)."""
    s = math.sqrt(3.0) / math.sqrt(n_embd)
    return {"input": uniform(-s, s), "c_fc": uniform(-0.4 * s, 0.4 * s), "wte": normal(0.8), "head": normal(0.001),
            "value_embed": uniform(-s, s), "gate": uniform(0.0, GATE_INIT_HIGH)}


def block_inits(e: Elements, n_embd: int) -> dict[str, Init | None]:
    """The initialisers of the block kernels (None: onanchat's scaled normal, or zeros for the projections)."""
    if e.init != NANOCHAT_2026:
        return {"input": None, "c_fc": None}
    inits = nanochat_inits(n_embd)
    return {"input": inits["input"], "c_fc": inits["c_fc"]}


class Gate(nnx.Module):
    """A bias-free ``(in, out)`` kernel initialised U(0, 0.02) (the smear and value-embedding gates)."""

    def __init__(self, fan_in: int, fan_out: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(uniform(0.0, GATE_INIT_HIGH)(rngs.params(), (fan_in, fan_out)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...].astype(x.dtype)


def add_recipe_params(model: nnx.Module, config, e: Elements, rngs: nnx.Rngs) -> None:
    """The GPT-level parameters of the elements ``e`` turns on, set on ``model`` (see the module docstring)."""
    n_layer, d = config.n_layer, config.n_embd
    vocab = architecture.padded_vocab(config.vocab_size, e.vocab_multiple)
    if e.value_embeds:
        init = nanochat_inits(d)["value_embed"]
        width = config.n_kv_head * config.head_dim
        model.value_embeds = nnx.Dict({str(i): nnx.Param(init(rngs.params(), (vocab, width)))
                                       for i in architecture.value_embed_layers(n_layer)})
    if e.layer_lambdas:
        steps = jnp.arange(n_layer, dtype=jnp.float32) / max(n_layer - 1, 1)
        model.resid_lambdas = nnx.Param(1.15 - 0.10 * steps)
        model.x0_lambdas = nnx.Param(0.20 - 0.15 * steps)
    if e.smear:
        model.smear_gate = Gate(SMEAR_CHANNELS, 1, rngs=rngs)
        model.smear_lambda = nnx.Param(jnp.zeros((1,), jnp.float32))
    if e.backout:
        model.backout_lambda = nnx.Param(jnp.full((1,), BACKOUT_INIT, jnp.float32))


def head_padding(config, e: Elements, rngs: nnx.Rngs) -> nnx.Param | None:
    """The head's columns for the padding rows of the vocabulary (never read by the logits), or None."""
    pad = architecture.padded_vocab(config.vocab_size, e.vocab_multiple) - config.vocab_size
    if not pad:
        return None
    init = nanochat_inits(config.n_embd)["head"] if e.init == NANOCHAT_2026 else lambda key, shape: jnp.zeros(shape)
    return nnx.Param(init(rngs.params(), (config.n_embd, pad)))


def mix_value_embedding(gate: Gate, x_BTD: jax.Array, v_BTKD: jax.Array, ve_BTC: jax.Array) -> jax.Array:
    """V plus the value embedding, per kv head scaled by 3·sigmoid of a gate reading the block input's first 12
    channels (ResFormer)."""
    B, T, K, D = v_BTKD.shape
    g = VE_GATE_RANGE * jax.nn.sigmoid(gate(x_BTD[..., :VE_GATE_CHANNELS]))
    return v_BTKD + g[..., None] * ve_BTC.reshape(B, T, K, D).astype(v_BTKD.dtype)


def value_embedding(model: nnx.Module, layer: int, idx_BT: jax.Array, dtype) -> jax.Array | None:
    """Layer ``layer``'s value embedding of the ids (B, T, n_kv_head·head_dim), or None where it has none."""
    table = getattr(model, "value_embeds", None)
    if table is None or str(layer) not in table:
        return None
    return table[str(layer)][...].astype(dtype)[idx_BT]


def mix_layer_input(model: nnx.Module, layer: int, x: jax.Array, x0: jax.Array) -> jax.Array:
    """``resid_lambdas[i]·x + x0_lambdas[i]·x0``, the input of block ``i``."""
    r = model.resid_lambdas[...][layer].astype(x.dtype)
    return r * x + model.x0_lambdas[...][layer].astype(x.dtype) * x0


def backout(model: nnx.Module, x: jax.Array, kept: jax.Array) -> jax.Array:
    """The residual stream less ``backout_lambda`` times the one kept after the middle layer."""
    return x - model.backout_lambda[...].astype(x.dtype) * kept


def smear(model: nnx.Module, x_BTD: jax.Array, prev_BTD: jax.Array, has_prev) -> jax.Array:
    """Each position's normalised embedding plus ``smear_lambda · sigmoid(gate(its first 24 channels))`` times the
    previous token's (``prev``), where it has one (``has_prev``, broadcast to (B, T))."""
    gate = model.smear_lambda[...].astype(x_BTD.dtype) * jax.nn.sigmoid(model.smear_gate(x_BTD[..., :SMEAR_CHANNELS]))
    return jnp.where(jnp.asarray(has_prev)[..., None], x_BTD + gate * prev_BTD, x_BTD)


def packed_previous(x_BTD: jax.Array, positions_BT: jax.Array, mask_BTS: jax.Array) -> tuple[jax.Array, jax.Array]:
    """In packed rows, each token's predecessor in its own sequence: the key it sees whose position is one less.
    Returns that token's normalised embedding (B, T, d) and whether there is one (B, T)."""
    before = mask_BTS & (positions_BT[:, None, :] == positions_BT[:, :, None] - 1)
    index = jnp.argmax(before, axis=-1)
    return jnp.take_along_axis(x_BTD, index[..., None], axis=1), before.any(-1)


def windowed_mask(mask_BTS: jax.Array, positions_BT: jax.Array, window: int | None) -> jax.Array:
    """A packed row's mask restricted to keys at most ``window`` positions before the query (None: unchanged)."""
    if window is None:
        return mask_BTS
    return mask_BTS & (positions_BT[:, :, None] - positions_BT[:, None, :] <= window)
