"""Batched log-likelihood of many token sequences in a few compiled shapes.

A :class:`Request` is a model-order sequence and a span ``[first, last)`` of target positions: the scorer returns
the sum of ``log p(ids[i] | ids[:i])`` over the span and whether every token of the span is the model's greedy
(argmax) prediction.

Single requests are sorted by length and packed into batches whose length is a power of two (at least
``min_len``) and whose row count (a power of two) fills a budget of ``tokens_per_call`` tokens; what a bucket
has left after its full batches goes in at most two smaller power-of-two batches. A whole suite therefore
compiles a handful of programs however many examples and tasks it has. Only the scored positions go through the
vocabulary projection (the hidden states are gathered there first), and only the target log-probabilities and
greedy flags come back to the host, never the logits.

Requests that share a long prefix (the options of one few-shot question) are scored as a *group*: the prefix runs
once through the model, filling its KV cache (its logits are never computed), and every option's remainder
continues from that cache, so the shared few-shot context is computed once instead of once per option. The
shared prefix ends where the first span of the group begins. Groups are batched the same way (prefix width,
option count and remainder length bucketed to powers of two; the groups of one call, sorted by prefix length,
all continue from the shortest prefix among them). The results equal scoring each request on its own, up to
float rounding.

Padding rows and positions score nothing. Batches are dispatched before earlier results are read, so the host
prepares the next batch while the device works. :meth:`Scorer.logits_at` reads the logits of a few candidate ids
at one position per sequence instead (the last prompt position of a chat question, for letter answers).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from revjax.model import KVCache

MIN_LEN = 64  # shorter sequences share the 64-token shape: a compile costs far more than the padding
MIN_REMAINDER = 16
MIN_SPAN = 8  # scored positions per row are bucketed to a power of two, at least this
SHARE_MIN = 32  # a group shares its prefix when the prefix has at least this many tokens
LOGITS_BUDGET = 1 << 27  # largest batch·length·vocab one call may hold as fp32 logits (512 MiB)


@dataclass(frozen=True)
class Request:
    """A model-order sequence and the target positions ``[first, last)`` to score (``1 <= first <= last``)."""

    ids: tuple[int, ...]
    first: int
    last: int


def _pow2(n: int, least: int = 1) -> int:
    return max(least, 1 << max(0, (n - 1).bit_length()))


def _floor_pow2(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _target_logprobs(logits, targets):
    """``(log p(target), target is argmax)`` for logits (..., V) and targets (...)."""
    logits = logits.astype(jnp.float32)
    logp = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)
    return logp, jnp.argmax(logits, axis=-1) == targets


def _reduce(logp, greedy, inside, axis):
    return jnp.sum(jnp.where(inside, logp, 0.0), axis=axis), jnp.all(greedy | ~inside, axis=axis)


@functools.partial(jax.jit, static_argnames=("graphdef", "span"))
def _span_scores(graphdef, params, ids, first, last, span):
    """Per row: the sum of target log-probabilities over ``[first, last)`` and whether all of them are argmax.

    Only the ``span`` positions from ``first`` on (``span >= last - first``) go through the head: the hidden
    states are gathered there, so the vocabulary projection costs the scored tokens, not the whole row.
    """
    model = nnx.merge(graphdef, params)
    targets = jnp.minimum(first[:, None] + jnp.arange(span)[None, :], ids.shape[1] - 1)  # (rows, span)
    hidden = jnp.take_along_axis(model.features(ids), (targets - 1)[..., None], axis=1)
    logp, greedy = _target_logprobs(model.head(hidden), jnp.take_along_axis(ids, targets, axis=1))
    return _reduce(logp, greedy, first[:, None] + jnp.arange(span)[None, :] < last[:, None], 1)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _group_scores(graphdef, params, prefix, split, rest, first, last):
    """Per group ``e`` and option ``k``: span sums and greedy flags of ``prefix[e, :split] ⊕ rest[e, k, 1:]``.

    ``rest[e, k]`` starts with the prefix's last token ``prefix[e, split - 1]`` and every span starts at or
    after ``split`` (a traced scalar). Every group of the call runs its prefix through the model once, for its
    KV cache only (its logits are never computed); the options continue from the cache at position
    ``split - 1``, overwriting the prefix's last entry with the same token and its padding with their own.
    """
    model = nnx.merge(graphdef, params)
    groups, width = prefix.shape
    options, tail = rest.shape[1:]
    _, cache = model(prefix, KVCache.zeros(model.config, groups, width + tail, dtype=model.compute_dtype))
    shared = KVCache(jnp.repeat(cache.k, options, axis=1), jnp.repeat(cache.v, options, axis=1), split - 1)
    logits = model(rest.reshape(groups * options, tail), shared)[0].reshape(groups, options, tail, -1)
    logp, greedy = _target_logprobs(logits[:, :, :-1], rest[:, :, 1:])  # absolute positions split … split+tail-2
    pos = split + jnp.arange(tail - 1)[None, None, :]
    return _reduce(logp, greedy, (pos >= first[..., None]) & (pos < last[..., None]), 2)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _candidate_logits(graphdef, params, ids, position, candidates):
    """Per row: the logits of ``candidates`` (row, K) at ``position`` (the prediction of the next token)."""
    model = nnx.merge(graphdef, params)
    at = jnp.take_along_axis(model.features(ids), position[:, None, None], axis=1)  # (rows, 1, d)
    return jnp.take_along_axis(model.head(at)[:, 0], candidates, axis=-1)


def _chunks(members: list, most: int):
    """Yield ``(rows, chunk)`` covering ``members``: ``most`` at a time, then what is left in at most two chunks
    whose row counts are powers of two (the largest that fits, then the smallest that holds the rest), so a few
    row counts serve every bucket and padding rows stay under a quarter of the remainder."""
    full = len(members) - len(members) % most
    for at in range(0, full, most):
        yield most, members[at: at + most]
    left = members[full:]
    if left:
        head = _floor_pow2(len(left))
        yield head, left[:head]
        if len(left) > head:
            yield _pow2(len(left) - head), left[head:]


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    shortest = min(map(len, seqs))
    for i in range(shortest):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return shortest


class Scorer:
    """Scores requests for one model (``graphdef`` and ``params`` as from ``nnx.split``).

    ``tokens_per_call`` bounds the tokens one call runs through the model (lowered for large vocabularies so the
    fp32 logits of one call stay under ``LOGITS_BUDGET``); ``pad_id`` fills padding (any valid id; padding is
    never scored); a group's prefix is shared when it has at least ``share_min`` tokens.
    """

    def __init__(self, graphdef: nnx.GraphDef, params: Any, *, vocab_size: int, pad_id: int = 0,
                 tokens_per_call: int = 8192, min_len: int = MIN_LEN, share_min: int = SHARE_MIN):
        self.graphdef, self.params, self.pad_id, self.min_len = graphdef, params, int(pad_id), min_len
        self.share_min = share_min
        fit = max(min_len, LOGITS_BUDGET // max(1, vocab_size))
        self.tokens_per_call = max(min_len, min(tokens_per_call, _floor_pow2(fit)))
        self.calls = 0  # model calls so far, the token positions they ran (padding included) and their shapes
        self.positions = 0
        self.shapes: set[tuple[int, ...]] = set()

    def _batches(self, lengths: Sequence[int]):
        """Yield ``(shape (rows, length), indices)`` covering every sequence, grouped by length bucket."""
        buckets: dict[int, list[int]] = {}
        for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
            buckets.setdefault(_pow2(lengths[i], self.min_len), []).append(i)
        for length, members in sorted(buckets.items()):
            for rows, chunk in _chunks(members, _floor_pow2(self.tokens_per_call // length)):
                yield (rows, length), chunk

    def _pack(self, shape, members, seqs):
        ids = np.full(shape, self.pad_id, np.int32)
        for row, i in enumerate(members):
            ids[row, : len(seqs[i])] = seqs[i]
        self.calls += 1
        self.positions += shape[0] * shape[1]
        self.shapes.add(shape)
        return ids

    def score(self, requests: Sequence[Request],
              groups: Sequence[Sequence[int]] = ()) -> tuple[np.ndarray, np.ndarray]:
        """``(log-prob sums float64 (N,), greedy matches bool (N,))`` of ``requests``, in their order.

        ``groups`` lists indices of requests that may share a prefix (e.g. one question's options): the tokens
        all of them have in common before any of their spans starts. A group whose shared prefix has at least
        ``share_min`` tokens and whose padded shapes run fewer positions than its members alone computes it
        once.
        Everything else is scored on its own.
        """
        for r in requests:
            if not 1 <= r.first <= r.last <= len(r.ids):
                raise ValueError(f"a request's span [{r.first}, {r.last}) does not fit its {len(r.ids)} ids")
        sums, greedy = np.zeros(len(requests)), np.ones(len(requests), bool)
        shared, taken = [], set()
        for group in groups:
            members = [i for i in dict.fromkeys(group) if i not in taken]
            if len(members) < 2:
                continue
            seqs = [requests[i].ids for i in members]
            prefix = min(_common_prefix(seqs), min(requests[i].first for i in members))
            # worth it when the prefix is long and the padded shapes run fewer positions than the members alone
            alone = sum(_pow2(len(s), self.min_len) for s in seqs)
            together = _pow2(prefix, self.min_len) + _pow2(len(members)) * _pow2(
                max(len(s) for s in seqs) - prefix + 1, MIN_REMAINDER)
            if prefix >= max(1, self.share_min) and together < alone:
                shared.append((prefix, members))
                taken.update(members)
        pending = self._dispatch_groups(requests, shared)
        singles = [i for i in range(len(requests)) if i not in taken]
        seqs = [requests[i].ids for i in singles]
        spans: dict[int, int] = {}  # per length bucket: the widest span, so a bucket compiles one program
        for r in (requests[i] for i in singles):
            length = _pow2(len(r.ids), self.min_len)
            spans[length] = max(spans.get(length, 1), r.last - r.first)
        for shape, rows in self._batches([len(s) for s in seqs]):
            first, last = np.ones(shape[0], np.int32), np.ones(shape[0], np.int32)  # padding rows: empty spans
            for row, j in enumerate(rows):
                first[row], last[row] = requests[singles[j]].first, requests[singles[j]].last
            span = min(shape[1], _pow2(spans[shape[1]], MIN_SPAN))
            out = _span_scores(self.graphdef, self.params, self._pack(shape, rows, seqs), first, last, span)
            pending.append(([[singles[j]] for j in rows], out))
        for owners, (s, g) in pending:
            s, g = np.asarray(s, np.float64).reshape(len(s), -1), np.asarray(g).reshape(len(g), -1)
            for row, members in enumerate(owners):
                sums[members], greedy[members] = s[row, : len(members)], g[row, : len(members)]
        return sums, greedy

    def _dispatch_groups(self, requests: Sequence[Request], groups: list[tuple[int, list[int]]]) -> list:
        """Dispatch the shared-prefix groups (``(prefix length, members)``); returns ``(owners per row, device
        results)`` per call.

        Groups are bucketed by prefix width and option count and sorted by prefix length; a call splits all its
        groups at the shortest prefix among them (the rest of a longer prefix goes with each option).
        """
        plans: dict[tuple[int, int], list[tuple[int, list[int]]]] = {}
        for p, members in groups:
            plans.setdefault((_pow2(p, self.min_len), _pow2(len(members))), []).append((p, members))
        pending = []
        for (width, options), plan in sorted(plans.items()):
            plan.sort(key=lambda item: -item[0])
            typical = _pow2(max(len(requests[i].ids) - p + 1 for p, members in plan for i in members),
                            MIN_REMAINDER)
            most = _floor_pow2(max(1, self.tokens_per_call // (width + options * typical)))
            for rows, chunk in _chunks(plan, most):
                split = min(p for p, _ in chunk)
                tail = _pow2(max(len(requests[i].ids) - split + 1 for _, members in chunk for i in members),
                             MIN_REMAINDER)
                prefix = np.full((rows, width), self.pad_id, np.int32)
                rest = np.full((rows, options, tail), self.pad_id, np.int32)
                first, last = np.ones((rows, options), np.int32), np.ones((rows, options), np.int32)
                for row, (_, members) in enumerate(chunk):
                    prefix[row, :split] = requests[members[0]].ids[:split]
                    for k, i in enumerate(members):
                        r = requests[i]
                        rest[row, k, : len(r.ids) - split + 1] = r.ids[split - 1:]
                        first[row, k], last[row, k] = r.first, r.last
                self.calls += 1
                self.positions += rows * (width + options * tail)
                self.shapes.add((rows, width, options, tail))
                out = _group_scores(self.graphdef, self.params, prefix, np.int32(split), rest, first, last)
                pending.append(([members for _, members in chunk], out))
        return pending

    def logits_at(self, sequences: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """For each sequence, the logits (fp32) of its candidate ids for the token after its last one."""
        seqs = [tuple(int(t) for t in s) for s in sequences]
        width = _pow2(max((len(c) for c in candidates), default=1))
        out: list[np.ndarray | None] = [None] * len(seqs)
        pending = []
        for shape, members in self._batches([len(s) for s in seqs]):
            position = np.zeros(shape[0], np.int32)
            cands = np.zeros((shape[0], width), np.int32)
            for row, i in enumerate(members):
                position[row] = len(seqs[i]) - 1
                cands[row, : len(candidates[i])] = candidates[i]
            result = _candidate_logits(self.graphdef, self.params, self._pack(shape, members, seqs), position, cands)
            pending.append((members, result))
        for members, result in pending:
            result = np.asarray(result)
            for row, i in enumerate(members):
                out[i] = result[row, : len(candidates[i])]
        return out  # type: ignore[return-value]
