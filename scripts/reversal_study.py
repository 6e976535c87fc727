"""The reversal-curse study (revjax.tasks.facts): write the fact corpus, then score trained runs.

    python scripts/reversal_study.py prepare [--size 300] [--seed 0] [--out DIR]   # parquet shards of the facts
    revjax sweep configs/experiments/reversal.yaml                                  # forward, backward, bidirectional
    python scripts/reversal_study.py score RUN_DIR [RUN_DIR ...] [--json OUT]       # exact match per query order

The train shards hold one statement per document (every fact's trained statement, every third fact's reversed one
too), shuffled by the seed; the val shard holds the reversed statements of the tested facts, so the runs' val bpb
is measured on sentences they never saw. ``score`` reads each run's newest checkpoint and asks every tested fact
in both orders, in each direction the run generates.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from revjax.config import Config
from revjax.data.shards import write_shards
from revjax.tasks.facts import ORDERS, engine_generate, fact_documents, make_facts, score_queries, probe_facts


def prepare(size: int, seed: int, out: Path, demo_every: int) -> None:
    facts = make_facts(size, seed)
    docs = fact_documents(facts, demo_every)
    random.Random(seed).shuffle(docs)
    val = [f.statement("reversed") for f in probe_facts(facts, demo_every)]
    out.mkdir(parents=True, exist_ok=True)
    per_shard = max(1, len(docs) // 2)
    train = write_shards(docs, out, docs_per_shard=per_shard, row_group_size=64)
    write_shards(val, out, docs_per_shard=len(val), row_group_size=64, start_index=len(train))
    print(f"{len(docs)} training documents ({len(facts)} facts, {len(val)} tested) and {len(val)} val documents "
          f"in {out}; train with data.corpus=parquet data.dir={out}")


def score(run_dirs: list[str], size: int, seed: int, demo_every: int, json_out: str | None) -> None:
    from revjax.direction import known_directions
    from revjax.eval.run import LoadedRun

    facts = probe_facts(make_facts(size, seed), demo_every)
    results = {}
    print(f"| run | direction | generates | {' | '.join(f'{o} order' for o in ORDERS)} |")
    print("|---|---|---|" + "---|" * len(ORDERS))
    for run_dir in run_dirs:
        run = LoadedRun(run_dir)
        ways = [w.value for w in known_directions(run.direction)]
        generate = engine_generate(run.graphdef, run.params, run.tokenizer, run.direction.value,
                                   max_len=run.config.model.sequence_len)
        measured = score_queries(generate, facts, ways)
        results[run_dir] = {"direction": run.direction.value, "step": run.step, "scores": measured}
        for way in ways:
            cells = " | ".join(f"{measured[way][o]['accuracy']:.3f} ({measured[way][o]['correct']}/"
                               f"{measured[way][o]['total']})" for o in ORDERS)
            print(f"| {Path(run_dir).name} | {run.direction.value} | {way} | {cells} |")
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "score"):
        p = sub.add_parser(name)
        p.add_argument("--size", type=int, default=300)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--demo-every", type=int, default=3)
    sub.choices["prepare"].add_argument("--out", type=Path, default=Config().base_path() / "data" / "reversal")
    sub.choices["score"].add_argument("runs", nargs="+")
    sub.choices["score"].add_argument("--json")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.size, args.seed, args.out, args.demo_every)
    else:
        score(args.runs, args.size, args.seed, args.demo_every, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
