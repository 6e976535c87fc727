"""BPE training with rustbpe: the mergeable ranks of a corpus, as a ``tiktoken.Encoding`` with onanchat's specials."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import rustbpe
import tiktoken
from tqdm.auto import tqdm

from revjax.tokenizer.vocab import _MIN_VOCAB_SIZE, SPECIAL_TOKENS, SPLIT_PATTERN


def _iter_training_docs(
    texts: Iterable[str], doc_cap: int, max_chars: int | None, progress: tqdm
) -> Iterator[str]:
    """Yield documents cropped to ``doc_cap`` characters, stopping once ``max_chars`` have been yielded."""
    nchars = 0
    for text in texts:
        doc = text[:doc_cap]
        nchars += len(doc)
        progress.update(len(doc))
        yield doc
        if max_chars is not None and nchars >= max_chars:
            return


def train_encoding(
    texts: Iterable[str],
    vocab_size: int,
    *,
    doc_cap: int = 10_000,
    max_chars: int | None = None,
    progress: bool = True,
) -> tiktoken.Encoding:
    """The encoding :meth:`revjax.tokenizer.Tokenizer.train` wraps (its arguments, its checks and its warning)."""
    if vocab_size < _MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be at least {_MIN_VOCAB_SIZE} (256 byte tokens + {len(SPECIAL_TOKENS)} "
            f"special tokens), got {vocab_size}."
        )
    if doc_cap < 1:
        raise ValueError(f"doc_cap must be a positive number of characters, got {doc_cap}.")
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be a positive number of characters or None, got {max_chars}.")
    num_mergeable = vocab_size - len(SPECIAL_TOKENS)
    trainer = rustbpe.Tokenizer()
    with tqdm(
        total=max_chars, unit="char", unit_scale=True, desc="training tokenizer", disable=not progress
    ) as bar:
        trainer.train_from_iterator(
            _iter_training_docs(texts, doc_cap, max_chars, bar), num_mergeable, pattern=SPLIT_PATTERN
        )
    ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
    if len(ranks) < num_mergeable:
        warnings.warn(
            f"the corpus only supported {len(ranks)} of {num_mergeable} mergeable tokens, so the vocabulary "
            f"has {len(ranks) + len(SPECIAL_TOKENS)} ids instead of {vocab_size}; "
            "train on more text for the full size.",
            stacklevel=3,  # the caller of Tokenizer.train
        )
    return tiktoken.Encoding(
        name="rustbpe",
        pat_str=SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)},
    )
