"""The reversal-curse study (revjax.tasks.facts): write the fact corpus, then score trained runs.

    python scripts/reversal_study.py prepare [--size 300] [--seed 0] [--out DIR]   # parquet shards of the facts
    revjax sweep configs/experiments/reversal.yaml                                  # forward, backward, bidirectional
    revjax sweep configs/experiments/reversal_units.yaml          # backward, bidirectional × word, entity units
    python scripts/reversal_study.py score RUN_DIR [RUN_DIR ...] [--json OUT] [--plot PNG]   # exact match per order
    python scripts/reversal_study.py plot OUT.json --plot PNG                       # the bars again from the JSON

The train shards hold one statement per document (every fact's trained statement, every third fact's reversed one
too), shuffled by the seed; the val shard holds the reversed statements of the tested facts, so the runs' val bpb
is measured on sentences they never saw. ``score`` reads each run's newest checkpoint and asks every tested fact
in both orders, in each direction the run generates, and gives each exact-match accuracy with its Wilson score
interval (95% by default, ``--level``); ``--plot`` draws trained vs reversed order per model and generation
direction with the intervals as error bars. A run of a text reversal unit (``direction.unit`` word or entity) is
asked the queries of its unit (:mod:`revjax.tasks.facts`); the table then has a unit column and the rows go
forward, backward, bidirectional, each by unit token, word, entity.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from revjax.config import Config
from revjax.data.shards import write_shards
from revjax.tasks.facts import ORDERS, engine_generate, fact_documents, make_facts, probe_facts, score_queries


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


def cell(score: dict) -> str:
    """``accuracy (correct/total) [low, high]`` of one query order."""
    return (f"{score['accuracy']:.3f} ({score['correct']}/{score['total']}) "
            f"[{score['low']:.3f}, {score['high']:.3f}]")


DIRECTIONS = ("forward", "backward", "bidirectional")
UNITS = ("token", "word", "entity")


def ordered(results: dict) -> list[tuple[str, dict]]:
    """The scored runs by direction (forward, backward, bidirectional), then by unit (token, word, entity)."""
    def rank(item: tuple[str, dict]) -> tuple[int, int]:
        result = item[1]
        direction, unit = result["direction"], result.get("unit", "token")
        return (DIRECTIONS.index(direction) if direction in DIRECTIONS else len(DIRECTIONS),
                UNITS.index(unit) if unit in UNITS else len(UNITS))
    return sorted(results.items(), key=rank)


def table(results: dict) -> list[str]:
    """The markdown table of scored runs: one row per run and generation direction, one column per query order
    (a unit column where the scores name their runs' reversal units)."""
    level = next(iter(results.values()), {}).get("level", 0.95)
    units = any("unit" in result for result in results.values())
    lines = [f"| run | direction | {'unit | ' if units else ''}generates | "
             f"{' | '.join(f'{o} order [{level:.0%} interval]' for o in ORDERS)} |",
             "|---|---|---|" + "---|" * (len(ORDERS) + units)]
    for run_dir, result in ordered(results):
        for way, measured in result["scores"].items():
            cells = " | ".join(cell(measured[o]) for o in ORDERS)
            unit = f"{result.get('unit', 'token')} | " if units else ""
            lines.append(f"| {Path(run_dir).name} | {result['direction']} | {unit}{way} | {cells} |")
    return lines


def plot(results: dict, path: str | Path) -> Path:
    """Bars of exact-match accuracy, trained vs reversed order, per model and generation direction, with the
    Wilson intervals as error bars."""
    from revjax.analysis.plots import plot_bars

    values, errors = {}, {}
    for _, result in ordered(results):
        for way, measured in result["scores"].items():
            model = result["direction"] + (f"\n{result['unit']} unit" if "unit" in result else "")
            model += "" if way == result["direction"] else f"\ngenerating {way}"
            for order in ORDERS:
                values[(model, f"{order} order")] = measured[order]["accuracy"]
                errors[(model, f"{order} order")] = (measured[order]["low"], measured[order]["high"])
    level = next(iter(results.values()), {}).get("level", 0.95)
    name = f"facts asked in the trained and the reversed order ({level:.0%} Wilson intervals)"
    return plot_bars({name: values}, path, errors={name: errors}, ylabel="exact-match accuracy",
                     colours={"trained order": "#1f77b4", "reversed order": "#ff7f0e"},
                     title="Reversal curse: exact match of the name asked for")


def score(run_dirs: list[str], size: int, seed: int, demo_every: int, json_out: str | None,
          plot_out: str | None = None, level: float = 0.95) -> dict:
    from revjax.direction import known_directions
    from revjax.eval.run import LoadedRun

    facts = probe_facts(make_facts(size, seed), demo_every)
    results = {}
    for run_dir in run_dirs:
        run = LoadedRun(run_dir)
        ways = [w.value for w in known_directions(run.direction)]
        unit = run.unit.value
        generate = engine_generate(run.graphdef, run.params, run.tokenizer, run.direction.value, unit=unit,
                                   max_len=run.config.model.sequence_len)
        measured = score_queries(generate, facts, ways, level, unit)
        results[run_dir] = {"direction": run.direction.value, "unit": unit, "step": run.step, "level": level,
                            "scores": measured}
    print("\n".join(table(results)))
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2))
    if plot_out:
        print(f"plot: {plot(results, plot_out)}")
    return results


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
    sub.choices["score"].add_argument("--json", help="write the scores, intervals included, to this file")
    sub.choices["score"].add_argument("--plot", help="draw the bars to this PNG")
    sub.choices["score"].add_argument("--level", type=float, default=0.95, help="interval confidence level")
    redraw = sub.add_parser("plot")
    redraw.add_argument("json", help="a file written by score --json")
    redraw.add_argument("--plot", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.size, args.seed, args.out, args.demo_every)
    elif args.command == "score":
        score(args.runs, args.size, args.seed, args.demo_every, args.json, args.plot, args.level)
    else:
        results = json.loads(Path(args.json).read_text())
        print("\n".join(table(results)))
        print(f"plot: {plot(results, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
