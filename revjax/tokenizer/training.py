"""``train_tokenizer``: train a tokenizer, save it and print what it compresses to."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from revjax.tokenizer.encoding import Tokenizer
from revjax.tokenizer.vocab import TOKEN_BYTES_FILE, TOKENIZER_FILE, TokenBytesMethod


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike[str],
    vocab_size: int,
    *,
    doc_cap: int = 10_000,
    max_chars: int | None = None,
    total_chars: int | None = None,
    token_bytes_method: TokenBytesMethod = "decode",
    eval_texts: Iterable[str] | None = None,
    progress: bool = True,
) -> Tokenizer:
    """Train a tokenizer, save it to ``out_dir`` and print a summary with compression stats.

    Compression is measured on ``eval_texts`` when given, else on the first ~1M cropped training characters. The
    progress bar counts the characters read (each document cropped to ``doc_cap``) out of ``min(max_chars,
    total_chars)`` (``total_chars``: the corpus's characters, when known; ``len`` of a list of texts is counted) and
    ends full whatever the corpus held.
    """
    from tqdm.auto import tqdm

    if total_chars is None and isinstance(texts, (list, tuple)):
        total_chars = sum(min(len(t), doc_cap) for t in texts)
    known = [n for n in (max_chars, total_chars) if n is not None]
    if token_bytes_method not in ("decode", "raw"):
        raise ValueError(f"token_bytes_method must be 'decode' or 'raw', got {token_bytes_method!r}.")
    sample: list[str] = []
    sample_budget = 1_000_000

    def recording(docs: Iterable[str], bar) -> Iterator[str]:
        nonlocal sample_budget
        for doc in docs:
            if eval_texts is None and sample_budget > 0:
                sample.append(doc[:doc_cap])
                sample_budget -= len(sample[-1])
            bar.update(min(len(doc), doc_cap))
            yield doc

    start = time.perf_counter()
    with tqdm(total=min(known) if known else None, unit="char", unit_scale=True, desc="training tokenizer",
              disable=not progress) as bar:
        tok = Tokenizer.train(recording(texts, bar), vocab_size, doc_cap=doc_cap, max_chars=max_chars,
                              progress=False)
        bar.total = bar.n  # read to the end: the bar ends full
        bar.refresh()
    elapsed = time.perf_counter() - start
    tok.save(out_dir, token_bytes_method=token_bytes_method)
    stats = tok.compression_stats(sample if eval_texts is None else eval_texts)
    source = "eval texts" if eval_texts is not None else "training sample"
    print(f"trained tokenizer in {elapsed:.1f}s: vocab_size={tok.vocab_size} identity={tok.identity()}")
    print(f"saved {TOKENIZER_FILE} and {TOKEN_BYTES_FILE} ({token_bytes_method}) to {Path(out_dir)}")
    print(
        f"compression on {source}: {stats['bytes']:,} bytes, {stats['chars']:,} chars -> {stats['tokens']:,} tokens "
        f"({stats['bytes_per_token']:.3f} bytes/token, {stats['chars_per_token']:.3f} chars/token)"
    )
    return tok
