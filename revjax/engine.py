"""Generation: one prefill pass, then KV-cache decoding in compiled chunks, with streaming and a calculator tool.

The model's cache has one position shared by all rows, so a batch of prompts of different lengths is prefilled up to
the shortest length ``m`` (padded to a bucket; positions past ``m`` are rewritten before anything attends to them)
and each longer prompt's remaining tokens are fed by decode steps as *given* tokens: a row whose next position is
still given takes that token instead of sampling. Tool outputs use the same mechanism: when a row writes its tool
end marker, the chunk stops, the host evaluates the expression and writes the result as given tokens. Generation
without tools never leaves the compiled chunk loop except to hand back ``chunk_size`` tokens per row.

Ids are in model order. The engine knows nothing of directions: ``tool_order`` says only whether a tool call is laid
out ``forward`` or ``backward`` (:mod:`revjax.calculator` evaluates it and lays out its output).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from revjax.calculator import tool_output, tool_specials
from revjax.model import KVCache

CACHE_BUCKET = 64  # cache lengths are rounded up to a multiple of this, so nearby lengths share one program
PREFILL_BUCKET = 16  # prefill lengths likewise


# ---- compiled prefill and decode ------------------------------------------------------------------------------

class Context(NamedTuple):
    """Per-call values: per-row last writable position, stop ids (padded with −1), per-row tool end id (−1: none),
    and the sampling settings (traced, so that changing them compiles nothing)."""

    last: jax.Array
    stop_ids: jax.Array
    tool_end: jax.Array
    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array


class State(NamedTuple):
    """Decode state: positions < ``cache.pos`` are fed, ``logits`` predict position ``cache.pos``; < ``given`` known."""

    tokens: jax.Array
    given: jax.Array
    cache: KVCache
    logits: jax.Array
    key: jax.Array
    done: jax.Array


def _keep_top(logits, top_k, top_p):
    """Logits outside the ``top_k`` most likely ids (0: all), then outside the top_p nucleus of those, set to −inf."""
    vocab = logits.shape[-1]
    ordered = -jnp.sort(-logits, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    ordered = jnp.where(jnp.arange(vocab) < k, ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    keep = ((jnp.cumsum(probs, axis=-1) - probs) < top_p) & (jnp.arange(vocab) < k)  # mass before an id < top_p
    cutoff = jnp.take_along_axis(ordered, keep.sum(-1, keepdims=True) - 1, axis=-1)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


def sample_logits(logits, key, temperature, top_k=0, top_p=1.0) -> jax.Array:
    """Next ids (int32) from (B, V) logits: argmax at temperature 0, else sampling within top_k (0: off) and top_p.

    All settings may be traced; ``lax.cond`` runs only the branch needed (no sort unless a filter is on).
    """
    def draw(logits):
        logits = logits / temperature
        logits = jax.lax.cond((top_k > 0) | (top_p < 1), _keep_top, lambda x, *_: x, logits, top_k, top_p)
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, draw, lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32), logits)


def _write(state: State, logits, pos, ctx: Context):
    """Choose and write the token at ``pos`` from the logits of ``pos − 1``; returns (state, logprob, tool trigger)."""
    key, sub = jax.random.split(state.key)
    sampled = sample_logits(logits, sub, ctx.temperature, ctx.top_k, ctx.top_p)
    free = pos >= state.given
    chosen = jnp.where(free, sampled, jax.lax.dynamic_index_in_dim(state.tokens, pos, axis=1, keepdims=False))
    tokens = jax.lax.dynamic_update_slice_in_dim(state.tokens, chosen[:, None], pos, axis=1)
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), chosen[:, None], axis=-1)[:, 0]
    stop = free & (chosen[:, None] == ctx.stop_ids[None, :]).any(-1)
    done = state.done | stop | (pos >= ctx.last)
    trigger = free & (chosen == ctx.tool_end) & ~done
    return state._replace(tokens=tokens, key=key, done=done), logprob, trigger


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len", "num_samples"))
def _prefill(graphdef, params, prompts, m, tokens, given, key, *, cache_len, num_samples):
    """One pass over the (padded) prompts, then position m − 1 again for its logits (the pass's own logits are
    unused, so the compiler drops the head over every position), after id m − 2 as the previous token (the
    smear's); rows repeated ``num_samples`` times."""
    model = nnx.merge(graphdef, params)
    cache = KVCache.zeros(model.config, prompts.shape[0], cache_len, dtype=model.compute_dtype)
    _, cache = model(prompts, cache)
    before = jax.lax.dynamic_index_in_dim(prompts, jnp.maximum(m - 2, 0), axis=1, keepdims=False)
    logits, cache = model(jax.lax.dynamic_slice_in_dim(prompts, m - 1, 1, axis=1),
                          cache._replace(pos=m - 1, prev=before.astype(jnp.int32)))
    repeat = functools.partial(jnp.repeat, repeats=num_samples, axis=1)
    cache = KVCache(repeat(cache.k), repeat(cache.v), m, jnp.repeat(cache.prev, num_samples, axis=0))
    last = jnp.repeat(logits[:, -1], num_samples, axis=0)
    return State(tokens, given, cache, last, key, jnp.zeros(tokens.shape[0], bool))


@functools.partial(jax.jit, static_argnames=("graphdef", "steps"), donate_argnames=("state",))
def _decode(graphdef, params, state, inject, inject_len, ctx, *, steps):
    model = nnx.merge(graphdef, params)
    start = state.cache.pos
    rows = state.tokens.shape[0]
    current = jax.lax.dynamic_slice_in_dim(state.tokens, start, inject.shape[1], axis=1)
    forced = jnp.where((inject_len > 0)[:, None], inject, current)
    state = state._replace(tokens=jax.lax.dynamic_update_slice_in_dim(state.tokens, forced, start, axis=1),
                           given=jnp.where(inject_len > 0, start + inject_len, state.given))

    def cond(carry):
        i, state, trigger, _ = carry
        return (i < steps) & ~trigger.any() & ~state.done.all()

    def body(carry):
        i, state, _, logprobs = carry
        pos = state.cache.pos
        state, logprob, trigger = _write(state, state.logits, pos, ctx)
        logits, cache = model(jax.lax.dynamic_slice_in_dim(state.tokens, pos, 1, axis=1), state.cache)
        return i + 1, state._replace(cache=cache, logits=logits[:, -1]), trigger, logprobs.at[:, i].set(logprob)

    carry = (jnp.int32(0), state, jnp.zeros(rows, bool), jnp.zeros((rows, steps), jnp.float32))
    n, state, _, logprobs = jax.lax.while_loop(cond, body, carry)
    return state, (jax.lax.dynamic_slice_in_dim(state.tokens, start, steps, axis=1), logprobs, n)


# ---- the host side --------------------------------------------------------------------------------------------

class Chunk(NamedTuple):
    """What one chunk adds: per row, the new ids (model order), their log-probabilities under the model itself
    (before temperature and filters; forced tool ids included), and whether the row has finished."""

    tokens: list[list[int]]
    logprobs: list[list[float]]
    done: list[bool]


class Generation(NamedTuple):
    tokens: list[list[int]]
    logprobs: list[list[float]]


class _Row:
    """Host view of one row: every known id, the prompt length, ids known ahead (< given), last position, done."""

    __slots__ = ("seq", "prompt_len", "given", "last", "done", "tool")

    def __init__(self, seq, prompt_len, last, tool):
        self.seq, self.prompt_len, self.given, self.last, self.tool = seq, prompt_len, len(seq), last, tool
        self.done = False


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


class Engine:
    """Batched, streaming generation for one model (``graphdef`` + ``params``, as from ``nnx.split``).

    ``tokenizer`` (``encode(text)``, ``decode(ids)``, ``encode_special(name)``) is needed only for the calculator
    tool. Decoding runs ``chunk_size`` compiled steps per host round trip; ``timings`` holds the last call's split
    of wall time into prefill, decode and host work.
    """

    def __init__(self, graphdef, params, *, tokenizer=None, chunk_size: int = 16, max_tool_tokens: int = 32):
        self.graphdef, self.params, self.tokenizer = graphdef, params, tokenizer
        self.chunk_size, self.max_tool_tokens = chunk_size, max_tool_tokens
        self.timings: dict[str, float] = {}
        self.sync_prefill = False
        if tokenizer is not None:
            self.ids = tool_specials(tokenizer)

    def tool_tokens(self, seq: Sequence[int], order: str) -> list[int] | None:
        """The forced output for a tool call that ``seq`` ends with (layout ``order``), or None if there is none."""
        return tool_output(seq, order, self.ids, self.tokenizer, self.max_tool_tokens)

    def generate(self, prompts, max_new_tokens, **kwargs) -> Generation:
        """All of :meth:`stream` at once: per row (prompt ``i``, sample ``s`` → row ``i·num_samples + s``) the ids."""
        tokens, logprobs = None, None
        for chunk in self.stream(prompts, max_new_tokens, **kwargs):
            if tokens is None:
                tokens, logprobs = [[] for _ in chunk.tokens], [[] for _ in chunk.tokens]
            for out, lps, new, new_lps in zip(tokens, logprobs, chunk.tokens, chunk.logprobs):
                out.extend(new)
                lps.extend(new_lps)
        return Generation(tokens, logprobs)

    def stream(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        num_samples: int = 1,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        stop_ids: Sequence[int] = (),
        max_len: int | None = None,
        tool_order: str | None | Sequence[str | None] = None,
    ) -> Iterator[Chunk]:
        """Continue each prompt by up to ``max_new_tokens`` ids, yielding a :class:`Chunk` per compiled chunk.

        Each prompt gets ``num_samples`` rows that sample independently from the first token on. A row ends at a
        stop id (not emitted) or at ``max_new_tokens``; ``max_len`` bounds prompt + continuation (default: longest
        prompt + ``max_new_tokens``). ``tool_order`` (one value, or one per prompt) turns the calculator on.
        """
        t_start = time.perf_counter()
        prompts = [[int(t) for t in p] for p in prompts]
        orders, total = self._check_request(prompts, max_new_tokens, num_samples, temperature, top_k, top_p,
                                            max_len, tool_order)
        rows = []
        for prompt, order in zip(prompts, orders):
            forced = self.tool_tokens(prompt, order) if order else None  # a prompt that ends with a tool call
            for _ in range(num_samples):
                row = _Row(prompt + (forced or []), len(prompt), min(len(prompt) + max_new_tokens, total) - 1, order)
                rows.append(row)
        m, steps, extra = min(map(len, prompts)), self.chunk_size, self.max_tool_tokens
        cache_len = _round_up(total, CACHE_BUCKET)
        tokens, batch = _host_arrays(prompts, rows, m, cache_len, steps + extra)
        specials = self.ids if any(orders) else {}
        end = {"forward": specials.get("python_end"), "backward": specials.get("python_start"), None: -1}
        stops = np.full(_round_up(max(len(stop_ids), 1), 8), -1, np.int32)
        stops[: len(stop_ids)] = list(stop_ids)
        ctx = Context(np.array([r.last for r in rows], np.int32), stops,
                      np.array([end[r.tool] for r in rows], np.int32),
                      np.float32(temperature), np.int32(top_k or 0), np.float32(top_p or 1.0))
        timings = {"prefill_s": 0.0, "decode_s": 0.0, "host_s": 0.0, "chunks": 0, "steps": 0}
        self.timings = timings

        t0 = time.perf_counter()
        state = _prefill(self.graphdef, self.params, batch, np.int32(m), tokens,
                         np.array([r.given for r in rows], np.int32), jax.random.key(seed),
                         cache_len=cache_len, num_samples=num_samples)
        if self.sync_prefill:  # only to time it apart from decoding
            jax.block_until_ready(state)
        timings["prefill_s"] += time.perf_counter() - t0
        inject, inject_len = np.zeros((len(rows), extra), np.int32), np.zeros(len(rows), np.int32)
        position = m
        while True:
            t0 = time.perf_counter()
            state, (block, logprobs, n) = _decode(self.graphdef, self.params, state, inject, inject_len, ctx,
                                                  steps=steps)
            block, logprobs, n = np.asarray(block), np.asarray(logprobs), int(n)
            timings["decode_s"] += time.perf_counter() - t0
            timings["chunks"] += 1
            timings["steps"] += n
            t0 = time.perf_counter()
            inject, inject_len = np.zeros((len(rows), extra), np.int32), np.zeros(len(rows), np.int32)
            chunk = self._read_chunk(rows, block[:, :n].tolist(), logprobs[:, :n].tolist(), position, stop_ids, end,
                                     inject, inject_len)
            position += n
            timings["host_s"] += time.perf_counter() - t0
            yield chunk
            if all(chunk.done):
                break
        timings["total_s"] = time.perf_counter() - t_start

    def _check_request(self, prompts, max_new_tokens, num_samples, temperature, top_k, top_p, max_len,
                       tool_order) -> tuple[list[str | None], int]:
        """Refuse what :meth:`stream` cannot do (ValueError); returns the tool order per prompt and ``max_len``."""
        if not prompts or min(map(len, prompts)) == 0:
            raise ValueError("generation needs at least one prompt, and every prompt at least one token")
        if max_new_tokens < 1 or num_samples < 1 or temperature < 0 or (top_k or 0) < 0:
            raise ValueError("max_new_tokens and num_samples must be positive, temperature and top_k non-negative")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        longest = max(map(len, prompts))
        total = max_len or longest + max_new_tokens
        if longest >= total:
            raise ValueError(f"a prompt of {longest} tokens leaves no room to generate within {total} positions")
        orders = list(tool_order) if isinstance(tool_order, (list, tuple)) else [tool_order] * len(prompts)
        if any(o not in (None, "forward", "backward") for o in orders) or len(orders) != len(prompts):
            raise ValueError(f"tool_order must be None, 'forward' or 'backward' (one, or one per prompt): {tool_order}")
        if any(orders) and self.tokenizer is None:
            raise ValueError("the calculator tool needs the engine to have a tokenizer")
        return orders, total

    def _read_chunk(self, rows, block, logprobs, position, stop_ids, end, inject, inject_len) -> Chunk:
        """The host's side of one chunk: extend each row's ids, cut at stops, and set up a tool call's output as the
        next chunk's given tokens (``inject``, ``inject_len``, written in place)."""
        chunk = Chunk([[] for _ in rows], [[] for _ in rows], [False] * len(rows))
        for i, row in enumerate(rows):
            for j, (token, lp) in enumerate(zip(block[i], logprobs[i])):
                pos, free = position + j, position + j >= row.given
                if pos == len(row.seq):
                    row.seq.append(token)
                if row.done or pos < row.prompt_len:
                    continue
                if free and token in stop_ids:
                    row.done = True
                    continue
                chunk.tokens[i].append(token)
                chunk.logprobs[i].append(lp)
                row.done = pos >= row.last
                if free and row.tool and not row.done and token == end[row.tool]:
                    forced = self.tool_tokens(row.seq, row.tool)
                    if forced:
                        inject[i, : len(forced)], inject_len[i] = forced, len(forced)
                        row.seq.extend(forced)
                        row.given = len(row.seq)
            chunk.done[i] = row.done
        return chunk


def _host_arrays(prompts, rows, m, cache_len, spare) -> tuple[np.ndarray, np.ndarray]:
    """Every row's known ids in a buffer ``spare`` positions longer than the cache, and the prompts cut to the
    prefill length (``m`` rounded up to the prefill bucket)."""
    tokens = np.zeros((len(rows), cache_len + spare), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row.seq)] = row.seq
    batch = np.zeros((len(prompts), min(_round_up(m, PREFILL_BUCKET), cache_len)), np.int32)
    for i, prompt in enumerate(prompts):
        batch[i, : min(len(prompt), batch.shape[1])] = prompt[: batch.shape[1]]
    return tokens, batch


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
    engine = Engine(graphdef, params)
    return engine.generate(prompts, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                           stop_ids=stop_ids, max_len=max_len).tokens
