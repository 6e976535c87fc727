"""The small word-salad corpus (two parquet shards) and 320-token tokenizer that the training-run tests share."""

from pathlib import Path

from revjax.data.shards import write_shards
from revjax.tokenizer import train_tokenizer

WORDS = ("in the beginning god created heaven and earth and the earth was without form and void and darkness was "
         "upon the face of the deep to be or not to be that is the question whether tis nobler").split()
VOCAB = 320


def write_tiny_corpus(base: Path) -> Path:
    """400 documents of 30–46 words in ``base/corpus`` and a tokenizer trained on them in ``base/tokenizer``."""
    docs = [" ".join(WORDS[(i * 5 + 3 * j) % len(WORDS)] for j in range(30 + i % 17)) for i in range(400)]
    write_shards(docs, base / "corpus", docs_per_shard=200, row_group_size=16)
    train_tokenizer(docs, base / "tokenizer", VOCAB, progress=False)
    return base
