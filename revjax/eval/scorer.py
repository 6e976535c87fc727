"""Batched log-likelihood of many token sequences, packed into rows of a few compiled shapes.

A :class:`Request` is a model-order sequence and a span ``[first, last)`` of target positions: the scorer returns
the sum of ``log p(ids[i] | ids[:i])`` over the span and whether every token of the span is the model's greedy
(argmax) prediction.

Requests become *trees*: a request on its own is a tree of one sequence; requests that share a prefix (the options
of one few-shot question, given as a group) become one tree holding the shared tokens once, followed by each
option's remainder. Trees are packed first-fit (longest first) into rows whose length is a power of two (at
least ``min_len``; a tree only opens a row as long as itself needs), several trees per row, and rows of one
length go ``tokens_per_call // length`` at a time into one call. Inside a row, every token carries its position in
its own sequence (RoPE) and attends only to the earlier tokens of its tree's prefix and of its own branch, so the
results equal scoring each request alone, up to float rounding, with next to no padding. Only the hidden states
that predict a scored target go through the vocabulary projection, and only their log-probabilities and greedy
flags come back to the host, never the logits. A group whose tree would be longer than ``max_tree`` is split
into several trees, each repeating the prefix, so rows stay short (attention costs the row's length per token).

The targets one call gathers are rounded up to ``2^k·{1, 5/4, 3/2, 7/4}``, so a whole suite compiles a handful of
programs. Calls are dispatched before earlier results are read, so the host prepares the next batch
while the device works. :meth:`Scorer.logits_at` reads the logits of a few candidate ids at one position per
sequence instead (the last prompt position of a chat question, for letter answers).
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx



MIN_LEN = 64  # rows are at least this long: a compile costs far more than the padding
MAX_TREE = 256  # a shared-prefix tree longer than this is split (each part repeats the prefix)
MIN_TARGETS = 64  # the targets one call gathers are at least this many


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


def _row_length(n: int, least: int) -> int:
    """The shortest row of ``2^k`` or ``3·2^(k-1)`` tokens (at least ``least``) that holds ``n``."""
    top = _pow2(n, least)
    return top * 3 // 4 if top * 3 // 4 >= max(n, least) and top % 4 == 0 else top


def _target_count(n: int) -> int:
    """Targets one call gathers for ``n``: the least of ``2^k·{1, 5/4, 3/2, 7/4}`` (at least ``MIN_TARGETS``)."""
    top = _pow2(n, MIN_TARGETS)
    return next((top // 8 * f for f in (5, 6, 7) if top // 8 * f >= max(n, MIN_TARGETS)), top)


@dataclass
class _Tree:
    """Packed tokens (a prefix, then each branch), their positions and branch numbers (0: the prefix), and per
    scored target: the offset of the hidden state that predicts it, the target id and the owning request."""

    ids: np.ndarray
    pos: np.ndarray
    branch: np.ndarray
    at: np.ndarray
    targets: np.ndarray
    owners: np.ndarray


def _tree(requests: Sequence[Request], members: Sequence[int], prefix: int) -> _Tree:
    """The requests ``members`` (all sharing their first ``prefix`` tokens, which none of their spans reaches
    into) as one tree; a single request is a tree of its prefix alone. A sequence is cut after the last token
    whose hidden state predicts a target (what follows would be computed for nothing)."""
    ids, pos, branch = [np.asarray(requests[members[0]].ids[:prefix], np.int32)], [np.arange(prefix)], [
        np.zeros(prefix, np.int32)]
    at, targets, owners, start = [], [], [], prefix
    for k, i in enumerate(members, 1):
        r = requests[i]
        seq, end = np.asarray(r.ids, np.int32), max(prefix, r.last - 1)
        ids.append(seq[prefix:end])
        pos.append(np.arange(prefix, end))
        branch.append(np.full(end - prefix, k, np.int32))
        hidden = np.arange(r.first, r.last) - 1  # the position in the sequence that predicts each target
        at.append(np.where(hidden < prefix, hidden, start + hidden - prefix))
        targets.append(seq[r.first: r.last])
        owners.append(np.full(r.last - r.first, i))
        start += end - prefix
    return _Tree(*(np.concatenate(parts) for parts in (ids, pos, branch, at, targets, owners)))


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    shortest = min(map(len, seqs))
    for i in range(shortest):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return shortest


def _row_mask(tree, branch):
    """(B, T, T): query t sees key s iff both lie in one tree, s <= t, and s is in the prefix or t's branch."""
    T = tree.shape[1]
    causal = jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]
    same_tree = tree[:, :, None] == tree[:, None, :]
    seen = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
    return causal[None] & same_tree & seen


def _gathered_hidden(graphdef, params, ids, pos, tree, branch, rows, cols):
    model = nnx.merge(graphdef, params)
    return model, model.features(ids, pos, _row_mask(tree, branch))[rows, cols]  # (G, d)


def _head_chunk(count: int) -> int:
    """Targets per head chunk: small enough that a chunk's logits stay in cache (a 2× difference on CPU)."""
    return next((c for c in (256, 128) if count % c == 0 and count > c), count)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _target_scores(graphdef, params, ids, pos, tree, branch, rows, cols, targets):
    """Per gathered target: ``log p(target)`` and whether the target's logit is the largest (a tie counts).

    The logits are softcapped (|logit| <= 15), so their exponentials sum without overflow and the log-sum-exp
    needs no max pass; comparing with the largest logit is one plain reduction, where an argmax is a slow one on
    CPU. The head runs over the targets in chunks (``lax.map``)."""
    model, hidden = _gathered_hidden(graphdef, params, ids, pos, tree, branch, rows, cols)

    def chunk(part):
        logits = model.head(part[0])
        target = jnp.take_along_axis(logits, part[1][:, None], axis=-1)[:, 0]
        return target - jnp.log(jnp.sum(jnp.exp(logits), axis=-1)), jnp.max(logits, axis=-1) <= target

    size = _head_chunk(len(targets))
    parts = (hidden.reshape(-1, size, hidden.shape[-1]), targets.reshape(-1, size))
    return jax.tree.map(lambda x: x.reshape(-1), jax.lax.map(chunk, parts))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _candidate_logits(graphdef, params, ids, pos, tree, branch, rows, cols, candidates):
    """Per gathered position: the logits of ``candidates`` (G, K) for the next token."""
    model, hidden = _gathered_hidden(graphdef, params, ids, pos, tree, branch, rows, cols)
    return jnp.take_along_axis(model.head(hidden), candidates, axis=-1)


class Scorer:
    """Scores requests for one model (``graphdef`` and ``params`` as from ``nnx.split``).

    ``tokens_per_call`` bounds the row tokens of one call; ``pad_id`` fills padding (any valid id; padding is never
    scored); a group shares its prefix when the prefix has at least ``share_min`` tokens; ``max_tree`` bounds a
    shared tree's length (a longer group is split).
    """

    def __init__(self, graphdef: nnx.GraphDef, params: Any, *, pad_id: int = 0,
                 tokens_per_call: int = 8192, min_len: int = MIN_LEN, share_min: int = 1,
                 max_tree: int = MAX_TREE):
        self.graphdef, self.params, self.pad_id, self.min_len = graphdef, params, int(pad_id), min_len
        self.share_min, self.max_tree = share_min, max_tree
        self.tokens_per_call = max(min_len, tokens_per_call)
        self.calls = 0  # model calls so far, the row positions they ran (padding included), their shapes
        self.positions = 0  # (rows, length, targets) and the groups whose prefix was computed once
        self.shapes: set[tuple[int, int, int]] = set()
        self.shared = 0

    def score(self, requests: Sequence[Request],
              groups: Sequence[Sequence[int]] = ()) -> tuple[np.ndarray, np.ndarray]:
        """``(log-prob sums float64 (N,), greedy matches bool (N,))`` of ``requests``, in their order.

        ``groups`` lists indices of requests that may share a prefix (e.g. one question's options): the tokens
        all of them have in common before any of their spans starts, computed once when there are at least
        ``share_min`` of them. Everything else is scored on its own.
        """
        for r in requests:
            if not 1 <= r.first <= r.last <= len(r.ids):
                raise ValueError(f"a request's span [{r.first}, {r.last}) does not fit its {len(r.ids)} ids")
        trees, taken = [], set()
        for group in groups:
            members = [i for i in dict.fromkeys(group) if i not in taken]
            if len(members) < 2:
                continue
            prefix = min(_common_prefix([requests[i].ids for i in members]), min(requests[i].first for i in members))
            if prefix < max(1, self.share_min):
                continue
            taken.update(members)
            self.shared += 1
            part, length = [], prefix
            for i in members:  # split where the tree would outgrow max_tree
                extra = len(requests[i].ids) - prefix
                if part and length + extra > self.max_tree:
                    trees.append(_tree(requests, part, prefix))
                    part, length = [], prefix
                part.append(i)
                length += extra
            trees.append(_tree(requests, part, prefix))
        trees += [_tree(requests, [i], r.last - 1) for i, r in enumerate(requests)
                  if i not in taken and r.last > r.first]  # an empty span scores 0, matched
        sums, matched = np.zeros(len(requests)), np.ones(len(requests), bool)
        pending = [(owners, _target_scores(self.graphdef, self.params, *arrays, targets))
                   for arrays, targets, owners in self._calls(trees)]
        for owners, (logp, greedy) in pending:
            valid = owners >= 0
            np.add.at(sums, owners[valid], np.asarray(logp, np.float64)[valid])
            np.logical_and.at(matched, owners[valid], np.asarray(greedy)[valid])
        return sums, matched

    def logits_at(self, sequences: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """For each sequence, the logits (fp32) of its candidate ids for the token after its last one."""
        requests = [Request(tuple(int(t) for t in s), len(s), len(s)) for s in sequences]
        trees = []
        for i, r in enumerate(requests):  # one gathered position per sequence: its last
            tree = _tree(requests, [i], len(r.ids))
            tree.at, tree.targets, tree.owners = np.array([len(r.ids) - 1]), np.zeros(1, np.int32), np.array([i])
            trees.append(tree)
        width = _pow2(max((len(c) for c in candidates), default=1))
        out: list[np.ndarray | None] = [None] * len(requests)
        pending = []
        for arrays, _, owners in self._calls(trees):
            cands = np.zeros((len(owners), width), np.int32)
            for g in np.flatnonzero(owners >= 0):
                cands[g, : len(candidates[owners[g]])] = candidates[owners[g]]
            pending.append((owners, _candidate_logits(self.graphdef, self.params, *arrays, cands)))
        for owners, result in pending:
            result = np.asarray(result)
            for g in np.flatnonzero(owners >= 0):
                out[owners[g]] = result[g, : len(candidates[owners[g]])]
        return out  # type: ignore[return-value]

    def _rows(self, trees: list[_Tree]) -> dict[int, list[list[int]]]:
        """Per row length, the rows as lists of tree indices (:meth:`_pack_rows`). A length whose rows would not
        fill half a call is not used: its trees go in longer rows instead (fewer programs to compile)."""
        least = self.min_len
        while True:
            by_length = self._pack_rows(trees, least)
            lengths = sorted(by_length)
            short = lengths[0] if lengths else 0
            if len(lengths) <= 1 or len(by_length[short]) * short * 2 >= self.tokens_per_call:
                return by_length
            least = _row_length(short + 1, least)

    @staticmethod
    def _pack_rows(trees: list[_Tree], least: int) -> dict[int, list[list[int]]]:
        """Best-fit decreasing: a tree goes in the fullest row that has room for it, or opens the shortest row
        (``2^k`` or ``3·2^(k-1)`` tokens, at least ``least``) that holds it."""
        rows: list[tuple[int, list[int]]] = []
        free: list[tuple[int, int]] = []  # (room left, row index), sorted
        for j in sorted(range(len(trees)), key=lambda j: -len(trees[j].ids)):
            n = len(trees[j].ids)
            k = bisect.bisect_left(free, (n, -1))
            if k < len(free):
                room, r = free.pop(k)
            else:
                r, room = len(rows), _row_length(n, least)
                rows.append((room, []))
            rows[r][1].append(j)
            if room > n:
                bisect.insort(free, (room - n, r))
        by_length: dict[int, list[list[int]]] = {}
        for length, members in rows:
            by_length.setdefault(length, []).append(members)
        return by_length

    def _calls(self, trees: list[_Tree]):
        """Yield ``((ids, pos, tree, branch, rows, cols), targets, owners)`` per call; owners is −1 on padding."""
        for length, rows in sorted(self._rows(trees).items()):
            most = _floor_pow2(max(1, self.tokens_per_call // length))
            for chunk in self._split(rows, most):
                count = sum(len(trees[j].at) for row in chunk for j in row)
                yield self._pack(trees, chunk, (_pow2(len(chunk)), length), _target_count(count))

    @staticmethod
    def _split(rows: list[list[int]], most: int) -> list[list[list[int]]]:
        """Calls of ``most`` rows, then what is left in at most two calls (the largest power of two that fits, then
        the rest, padded to a power of two)."""
        full = len(rows) - len(rows) % most
        chunks = [rows[at: at + most] for at in range(0, full, most)]
        left = rows[full:]
        if left:
            head = _floor_pow2(len(left))
            chunks += [left[:head], left[head:]] if len(left) > head else [left]
        return chunks

    def _pack(self, trees: list[_Tree], chunk: list[list[int]], shape: tuple[int, int], width: int):
        ids = np.full(shape, self.pad_id, np.int32)
        pos, branch = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
        tree_id = np.full(shape, -1, np.int32)
        rows, cols = np.zeros(width, np.int32), np.zeros(width, np.int32)
        targets, owners = np.zeros(width, np.int32), np.full(width, -1)
        g = 0
        for r, row in enumerate(chunk):
            offset = 0
            for j in row:
                t, n, m = trees[j], len(trees[j].ids), len(trees[j].at)
                ids[r, offset: offset + n], pos[r, offset: offset + n] = t.ids, t.pos
                branch[r, offset: offset + n], tree_id[r, offset: offset + n] = t.branch, j
                rows[g: g + m], cols[g: g + m] = r, offset + t.at
                targets[g: g + m], owners[g: g + m] = t.targets, t.owners
                offset, g = offset + n, g + m
        self.calls += 1
        self.positions += shape[0] * shape[1]
        self.shapes.add((*shape, width))
        return (ids, pos, tree_id, branch, rows, cols), targets, owners
