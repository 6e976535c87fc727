"""Measure the base-training data pipeline's throughput (tokens/s, tokenization included).

Usage: python scripts/bench_pipeline.py [--data-dir DIR] [--tokenizer-dir DIR] [-B 32] [-T 2048]

The corpus is ``--data-dir``, else the default corpus (``python -m revjax.data.corpus``) if it has been
prepared, else about 50 MB of synthetic English-like text written once to the cache folder. The
tokenizer is ``--tokenizer-dir``, else one of ``--vocab-size`` ids trained on the corpus's train split
and cached. Every direction (and ``--layouts``) is timed over ``--batches`` batches after one warm-up
batch, reading through the same prefetching iterator that training uses.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from revjax.config import Config, DataConfig
from revjax.data.corpus import default_data_dir
from revjax.data.batches import build_pipeline
from revjax.data.shards import iter_documents, list_shards, write_shards
from revjax.tokenizer import Tokenizer

DIRECTIONS = ("forward", "backward", "bidirectional")
SYNTHETIC_MB = 50


def synthesize_corpus(out_dir: Path, megabytes: int, seed: int = 0) -> None:
    """Write about ``megabytes`` MB of pseudo-English documents (Zipf word frequencies, short words frequent)."""
    rng = np.random.default_rng(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "w", "th", "st", "ch", "sh", "pr"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "y"]
    codas = ["", "", "n", "r", "s", "t", "d", "l", "ng", "nd", "st", "ck"]
    syllables = [o + v + c for o in onsets for v in vowels for c in codas]
    counts = rng.choice([1, 2, 3], size=20_000, p=[0.45, 0.4, 0.15])
    parts = rng.integers(len(syllables), size=(len(counts), 3))
    words = sorted({"".join(syllables[j] for j in row[:k]) for row, k in zip(parts, counts)}, key=len)
    lower = np.array(words, dtype=object)
    upper = np.array([w.capitalize() for w in words], dtype=object)
    cdf = np.cumsum(1.0 / np.arange(1, len(words) + 1) ** 1.1)
    n = megabytes * 1_000_000 // 6
    ids = np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n)), len(words) - 1)
    ends = rng.random(n) < 0.07
    starts = np.concatenate([[True], ends[:-1]])
    suffix = np.where(ends, np.where(rng.random(n) < 0.15, ".\n\n", "."), np.where(rng.random(n) < 0.06, ",", ""))
    tokens = np.where(starts, upper[ids], lower[ids]) + suffix.astype(object)
    bounds = np.cumsum(rng.integers(150, 1500, size=n // 150))
    bounds = bounds[bounds < n]
    docs = [" ".join(chunk) for chunk in np.split(tokens, bounds)]
    write_shards(docs, out_dir, docs_per_shard=2048, row_group_size=256)


def find_corpus(args: argparse.Namespace) -> Path:
    if args.data_dir:
        return Path(args.data_dir)
    default = default_data_dir() / "default"
    if len(list_shards(default)) >= 2:
        return default
    synthetic = Path(args.cache_dir) / f"synthetic_{SYNTHETIC_MB}mb"
    if len(list_shards(synthetic)) < 2:
        print(f"writing {SYNTHETIC_MB} MB of synthetic text to {synthetic} ...", flush=True)
        synthesize_corpus(synthetic, SYNTHETIC_MB)
    return synthetic


def find_tokenizer(args: argparse.Namespace, data_dir: Path) -> tuple[Tokenizer, str]:
    if args.tokenizer_dir:
        return Tokenizer.load(args.tokenizer_dir), args.tokenizer_dir
    cached = Path(args.cache_dir) / f"tokenizer_{args.vocab_size}_{data_dir.resolve().name}"
    if not (cached / "tokenizer.pkl").exists():
        print(f"training a {args.vocab_size}-token tokenizer on {data_dir} ...", flush=True)
        docs = iter_documents(data_dir, "train", max_chars=50_000_000, doc_cap=10_000)
        Tokenizer.train(docs, args.vocab_size, progress=False).save(cached)
    return Tokenizer.load(cached), str(cached)


def measure(config: Config, tokenizer: Tokenizer, args: argparse.Namespace) -> float:
    """Return tokens/s over ``args.batches`` batches after one warm-up batch."""
    it = build_pipeline(
        config, tokenizer, "train", batch_size=args.batch_size, seq_len=args.seq_len, prefetch=args.prefetch
    )
    try:
        next(it)
        start = time.perf_counter()
        for _ in range(args.batches):
            inputs, targets = next(it)
        elapsed = time.perf_counter() - start
    finally:
        it.close()
    assert inputs.shape == targets.shape == (args.batch_size, args.seq_len)
    return args.batches * args.batch_size * args.seq_len / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder of shard_*.parquet files (default: see above)")
    parser.add_argument("--tokenizer-dir", help="folder holding tokenizer.pkl (default: train one)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "revjax" / "bench"))
    parser.add_argument("-B", "--batch-size", type=int, default=32)
    parser.add_argument("-T", "--seq-len", type=int, default=2048)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--threads", type=int, default=DataConfig().tokenizer_threads,
                        help="tokenizer threads (the pipeline caps them at the core count)")
    parser.add_argument("--tokenizer-batch-size", type=int, default=DataConfig().tokenizer_batch_size)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--layouts", default="document", help="comma-separated: document,compat")
    args = parser.parse_args()

    data_dir = find_corpus(args)
    tokenizer, tokenizer_dir = find_tokenizer(args, data_dir)
    print(
        f"corpus {data_dir} | tokenizer {tokenizer_dir} ({tokenizer.vocab_size} ids) | "
        f"B={args.batch_size} T={args.seq_len} | {min(args.threads, os.cpu_count() or 1)} tokenizer threads, "
        f"batches of {args.tokenizer_batch_size} docs | prefetch {args.prefetch} | "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    )
    rates = []
    for layout in args.layouts.split(","):
        for direction in DIRECTIONS:
            config = Config.from_dict(
                {
                    "data": {
                        "corpus": "parquet",
                        "dir": str(data_dir),
                        "tokenizer_threads": args.threads,
                        "tokenizer_batch_size": args.tokenizer_batch_size,
                    },
                    "direction": {"direction": direction, "layout": layout},
                }
            )
            rate = measure(config, tokenizer, args)
            rates.append(rate)
            print(f"{layout:>8} {direction:>13}: {rate / 1e3:8.0f} k tokens/s", flush=True)
    print(f"slowest: {min(rates) / 1e3:.0f} k tokens/s")


if __name__ == "__main__":
    main()
