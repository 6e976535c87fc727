"""The attention kernels the GPT's attention layer chooses between (queries, keys and values after RoPE and QK-norm).

:func:`causal_attention` is the XLA path, :func:`splash_attention` the Pallas splash kernel (TPU; interpret mode
elsewhere), :func:`masked_attention` attention under any per-row mask (packed sequences, shared prefixes) and
:func:`cached_attention` decoding over the KV cache. cuDNN's flash attention is ``jax.nn.dot_product_attention``'s.

:data:`CAUSAL_KERNELS` is the table ``model.attention`` chooses from (besides ``auto``): a new causal kernel is a
function ``(q (B,T,H,D), k (B,T,K,D), v (B,T,K,D)) → (B,T,H,D)`` and one row, added with :func:`register_kernel`.
A layer with a sliding window calls its kernel with ``window=w`` as well (:func:`call_kernel`): query ``t`` then
sees keys ``t − w … t`` (nanochat's left window ``(w, 0)``); ``window=None`` is the whole causal context.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Callable, Iterator

import jax
import jax.numpy as jnp

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("revjax_target_platform", default=None)


def target_platform() -> str:
    """The platform code is traced for: jax's default backend, or the one :func:`lowering_for` names."""
    return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def lowering_for(platform: str) -> Iterator[None]:
    """Trace for ``platform`` (e.g. ``"tpu"`` with ``jax.export(..., platforms=["tpu"])`` on a CPU): kernel choices
    (``model.attention=auto``, splash's interpret mode) follow it instead of the machine's backend."""
    token = _TARGET.set(platform)
    try:
        yield
    finally:
        _TARGET.reset(token)


def cached_attention(q_BTHD: jax.Array, k_BKSD: jax.Array, v_BKSD: jax.Array, pos: jax.Array,
                     window: int | None = None) -> jax.Array:
    """Attention of queries at positions ``pos … pos+T−1`` over a head-major cache (keys ≤ each query's position,
    and with a ``window`` at most that many positions before it).

    The arithmetic of ``jax.nn.dot_product_attention``'s XLA path (fp32 logits and softmax, GQA by grouping the
    query heads of each key/value head), with both products laid out so that the cache is read where it lies:
    neither operand is transposed, only the small output. A window shorter than the cache reads only the
    ``window + T`` positions it can see. Returns (B, T, H·D).
    """
    B, T, H, D = q_BTHD.shape
    K, S = k_BKSD.shape[1], k_BKSD.shape[2]
    keys = jnp.arange(S)
    if window is not None and window + T < S:
        start = jnp.clip(pos + T - (window + T), 0, S - (window + T))
        k_BKSD, v_BKSD = (jax.lax.dynamic_slice_in_dim(x, start, window + T, axis=2) for x in (k_BKSD, v_BKSD))
        keys = start + jnp.arange(window + T)
    q = q_BTHD.reshape(B, T, K, H // K, D)
    logits = jnp.einsum("btkgd,bksd->bkgts", q, k_BKSD.astype(q.dtype), preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(1.0 / math.sqrt(D))
    queries = (pos + jnp.arange(T))[:, None]
    visible = keys[None, :] <= queries  # (T, S): the prefix and the causal chunk
    if window is not None:
        visible &= queries - keys[None, :] <= window
    probs = jax.nn.softmax(jnp.where(visible, logits, jnp.finfo(jnp.float32).min), axis=-1).astype(q.dtype)
    y = jnp.einsum("bkgts,bksd->bkgtd", probs, v_BKSD.astype(q.dtype))
    return y.transpose(0, 3, 1, 2, 4).reshape(B, T, H * D)


def masked_attention(q_BTHD: jax.Array, k_BTKD: jax.Array, v_BTKD: jax.Array, mask_BTS: jax.Array) -> jax.Array:
    """Attention where query ``t`` of row ``b`` sees key ``s`` iff ``mask[b, t, s]`` (each query must see at least
    itself): several independent sequences, or a shared prefix and its continuations, packed in one row.

    fp32 logits as the XLA path; heads lead (B, H, T, D), GQA's key/value heads repeated to the query heads (XLA:CPU
    runs these 4-d products much faster than grouped 5-d ones), and the softmax's normaliser applied after the
    value product. Returns (B, T, H·D).
    """
    B, T, H, D = q_BTHD.shape
    q = q_BTHD.transpose(0, 2, 1, 3)
    k, v = (jnp.repeat(x.transpose(0, 2, 1, 3), H // x.shape[2], axis=1) for x in (k_BTKD, v_BTKD))
    logits = jnp.einsum("bhtd,bhsd->bhts", q, k, preferred_element_type=jnp.float32)
    # an additive mask and a shift that is a constant to differentiation (the softmax does not depend on it): the
    # backward pass keeps the weights only, not the logits or a per-head copy of the mask
    logits = logits * jnp.float32(1.0 / math.sqrt(D)) + jnp.where(mask_BTS, 0.0, -jnp.inf).astype(jnp.float32)[:, None]
    weights = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
    y = jnp.einsum("bhts,bhsd->bhtd", weights.astype(q.dtype), v, preferred_element_type=jnp.float32)
    y = y / jnp.sum(weights, axis=-1, keepdims=True)
    return y.astype(q.dtype).transpose(0, 2, 1, 3).reshape(B, T, H * D)


def causal_mask(T: int, window: int | None = None) -> jax.Array:
    """(T, T): query ``t`` sees key ``s`` iff ``s ≤ t`` and, with a window, ``t − s ≤ window``."""
    t, s = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
    return (s <= t) if window is None else (s <= t) & (t - s <= window)


def causal_attention(q_BTHD: jax.Array, k_BTKD: jax.Array, v_BTKD: jax.Array, window: int | None = None) -> jax.Array:
    """Causal attention, the XLA path: :func:`masked_attention` with the lower-triangular (banded, with a
    ``window``) mask shared by every row (the arithmetic of ``jax.nn.dot_product_attention``'s XLA path, laid out as
    XLA:CPU runs fastest). (B, T, H, D)."""
    T = q_BTHD.shape[1]
    mask = causal_mask(T, _effective(window, T))[None]
    return masked_attention(q_BTHD, k_BTKD, v_BTKD, mask).reshape(q_BTHD.shape)


def _effective(window: int | None, T: int) -> int | None:
    """The window, or None where it lets every query see its whole causal context anyway."""
    return None if window is None or window >= T - 1 else window


SPLASH_BLOCKS = (512, 256, 128)  # splash tiles tried in order; a tile must divide T and be a multiple of 128


@functools.lru_cache(maxsize=None)
def _splash_kernel(n_head: int, seq_len: int, interpret: bool, window: int | None = None):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    block = next(b for b in SPLASH_BLOCKS if seq_len % b == 0)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    shape = (seq_len, seq_len)
    if window is None:
        heads = [splash.CausalMask(shape) for _ in range(n_head)]
    else:  # keys t − window … t: the causal band, whose empty blocks the kernel skips
        heads = [splash.LocalMask(shape, window_size=(window, 0), offset=0) for _ in range(n_head)]
    mask = splash.MultiHeadMask(heads)
    with jax.ensure_compile_time_eval():  # the mask tables are constants, never tracers of the calling trace
        return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q_BTHD: jax.Array, k_BTKD: jax.Array, v_BTKD: jax.Array, window: int | None = None) -> jax.Array:
    """Causal attention by the Pallas splash kernel (TPU; Pallas interpret mode elsewhere), GQA by kv heads; a
    ``window`` makes its mask splash's local mask.

    The kernel takes one sequence head-major and unscaled; it is vmapped over the batch. Under a mesh set with
    ``jax.set_mesh`` it runs per shard (``shard_map``: batch over every mesh axis but ``tensor``, heads over
    ``tensor``), since a Pallas kernel cannot be partitioned automatically. Sequence lengths that no tile divides
    (not a multiple of 128) take the XLA path.
    """
    B, T, H, D = q_BTHD.shape
    if T % SPLASH_BLOCKS[-1]:
        return causal_attention(q_BTHD, k_BTKD, v_BTKD, window)
    interpret = target_platform() != "tpu"
    window = _effective(window, T)

    def local(q, k, v):  # (b, h, T, D) on one shard
        return jax.vmap(_splash_kernel(q.shape[1], T, interpret, window))(q, k, v)

    q = (q_BTHD * jnp.asarray(1.0 / math.sqrt(D), q_BTHD.dtype)).transpose(0, 2, 1, 3)
    k, v = k_BTKD.transpose(0, 2, 1, 3), v_BTKD.transpose(0, 2, 1, 3)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        batch = tuple(a for a in mesh.axis_names if a != "tensor" and mesh.shape[a] > 1) or None
        heads = "tensor" if mesh.shape.get("tensor", 1) > 1 else None
        if heads and k.shape[1] % mesh.shape["tensor"]:  # fewer kv heads than tensor shards: one per query head
            k, v = (jnp.repeat(x, H // x.shape[1], axis=1) for x in (k, v))
        spec = jax.sharding.PartitionSpec(batch, heads, None, None)
        local = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
    return local(q, k, v).transpose(0, 2, 1, 3)


def cudnn_attention(q_BTHD: jax.Array, k_BTKD: jax.Array, v_BTKD: jax.Array, window: int | None = None, *,
                    implementation: str = "cudnn") -> jax.Array:
    """Causal attention by cuDNN's flash kernel (GPU only), a ``window`` as its left local window.
    (``implementation`` names another backend of ``jax.nn.dot_product_attention``, for checks off the GPU.)"""
    window = _effective(window, q_BTHD.shape[1])
    return jax.nn.dot_product_attention(q_BTHD, k_BTKD, v_BTKD, is_causal=True, implementation=implementation,
                                        local_window_size=None if window is None else (window, 0))


CAUSAL_KERNELS: dict[str, Callable[..., jax.Array]] = {
    "xla": causal_attention,
    "splash": splash_attention,
    "cudnn": cudnn_attention,
}


def call_kernel(name: str, q_BTHD: jax.Array, k_BTKD: jax.Array, v_BTKD: jax.Array,
                window: int | None = None) -> jax.Array:
    """Kernel ``name`` of :data:`CAUSAL_KERNELS` on q, k, v; ``window`` is passed only when there is one, so a
    registered kernel that knows no windows still serves layers without one."""
    kernel = CAUSAL_KERNELS[name]
    return kernel(q_BTHD, k_BTKD, v_BTKD) if window is None else kernel(q_BTHD, k_BTKD, v_BTKD, window=window)


def register_kernel(name: str, kernel: Callable[..., jax.Array]) -> None:
    """Add ``kernel`` as ``model.attention=<name>``."""
    if name == "auto" or name in CAUSAL_KERNELS:
        raise ValueError(f"an attention kernel named {name!r} exists already")
    CAUSAL_KERNELS[name] = kernel
