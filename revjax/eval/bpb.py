"""Validation bits per byte for each reading direction a model knows, on the same documents and bytes, plus
greedy samples in reading order.

Documents of the run's validation split are tokenized, oriented for the direction being measured (through
:func:`revjax.eval.choice.model_order`: a bidirectional model gets the direction token after BOS), concatenated
and cut into rows of ``T+1`` tokens exactly as the training pipeline packs them (consecutive rows share one
token, so every token after the first is a target once). The direction token is never a target, and special
tokens have no bytes, so every direction is measured on the same bytes. Sums go through
:func:`revjax.evaluate.evaluate_loss`.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from revjax.config import MeshConfig
from revjax.direction import Direction, Specials, inputs_and_targets, join_generation, orient_prompt
from revjax.engine import generate
from revjax.eval.choice import model_order
from revjax.evaluate import build_eval_step, evaluate_loss
from revjax.sharding import make_mesh

SAMPLE_PROMPTS = {
    Direction.FORWARD: ["The capital of France is", "And God said,", "To be, or not to be:"],
    Direction.BACKWARD: ["is the capital of France.", "and it was so.", "that is the question."],
}


def document_rows(texts: Iterable[str], tokenizer: Any, direction: Direction | str, way: Direction | str,
                  rows: int, seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(inputs (rows, T), targets (rows, T))`` batches of ``texts`` read ``way``; the last partial batch is
    dropped unless it is the only one (then it is padded with untargeted rows)."""
    specials = Specials.from_tokenizer(tokenizer)
    ids_buf: list[np.ndarray] = []
    tgt_buf: list[np.ndarray] = []
    size, need, yielded = 0, rows * seq_len + 1, False
    for text in texts:
        ids, first = model_order(tokenizer.encode(text), direction, way, specials)
        is_target = np.ones(len(ids), bool)
        is_target[1:first] = False  # the direction token is never a target
        ids_buf.append(ids)
        tgt_buf.append(is_target)
        size += len(ids)
        while size >= need:
            stream, mask = np.concatenate(ids_buf), np.concatenate(tgt_buf)
            yield _rows(stream[:need], mask[:need], rows, seq_len)
            yielded = True
            ids_buf, tgt_buf, size = [stream[need - 1:]], [mask[need - 1:]], len(stream) - need + 1
    if not yielded and size > 1:
        stream, mask = np.concatenate(ids_buf), np.concatenate(tgt_buf)
        pad = need - len(stream)
        stream = np.concatenate([stream, np.full(pad, specials.bos, np.int32)])
        mask = np.concatenate([mask, np.zeros(pad, bool)])
        yield _rows(stream, mask, rows, seq_len)


def _rows(stream: np.ndarray, mask: np.ndarray, rows: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return inputs_and_targets(stream[starts], mask[starts])


def evaluate_bpb(graphdef: Any, params: Any, tokenizer: Any, direction: Direction | str, texts: Sequence[str], *,
                 ways: Sequence[Direction | str], seq_len: int, rows: int = 8, max_tokens: int = 1 << 20,
                 token_bytes_method: str = "decode") -> dict:
    """``{way: {"bpb", "loss", "batches", "positions"}}`` on ``texts`` (about ``max_tokens`` positions per way)."""
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), params)
    step = build_eval_step(graphdef, mesh, shardings, tokenizer.token_bytes(token_bytes_method))
    out = {}
    for way in ways:
        way = Direction.parse(way)
        used = [0]

        def counted(batches):
            for batch in batches:
                used[0] += 1
                yield batch

        rows_iter = counted(document_rows(texts, tokenizer, direction, way, rows, seq_len))
        measured = evaluate_loss(step, params, rows_iter, max(1, max_tokens // (rows * seq_len)))
        out[way.value] = {**measured, "batches": used[0], "positions": used[0] * rows * seq_len}
    return out


def greedy_samples(graphdef: Any, params: Any, tokenizer: Any, direction: Direction | str,
                   ways: Sequence[Direction | str], max_len: int, max_new_tokens: int = 32) -> dict[str, list[str]]:
    """Greedy continuations of fixed prompts for each way, in reading order (backward text grows to the left)."""
    specials = Specials.from_tokenizer(tokenizer)
    out = {}
    for way in ways:
        way = Direction.parse(way)
        prompts = [tokenizer.encode(t, prepend=tokenizer.bos_id) for t in SAMPLE_PROMPTS[way]]
        generate_way = way if Direction.parse(direction) is Direction.BIDIRECTIONAL else None
        oriented = [orient_prompt(p, direction, specials, generate=generate_way) for p in prompts]
        room = min(max_len, max(map(len, oriented)) + max_new_tokens)
        generated = generate(graphdef, params, oriented, max_new_tokens, stop_ids=[tokenizer.bos_id], max_len=room)
        out[way.value] = [tokenizer.decode(join_generation(p, g, way)[1:]) for p, g in zip(prompts, generated)]
    return out
