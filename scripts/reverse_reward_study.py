"""The reverse-reward study: best-of-N on ``sums`` with a forward SFT model as generator and a backward SFT model as
reranker (:mod:`revjax.eval.rerank`), plus a GSM8K smoke check.

    revjax sweep reverse_reward      # configs/experiments/reverse_reward.yaml: base → mid → SFT, both directions
    python scripts/reverse_reward_study.py score EXPERIMENT_DIR [--questions 1000] [--gsm8k 50] [--json OUT]
                                                                [--plot PNG]
    python scripts/reverse_reward_study.py score --generator RUN --reranker RUN [...]    # any two run folders
    python scripts/reverse_reward_study.py plot OUT.json --plot PNG                      # the plot again from the JSON

``EXPERIMENT_DIR`` is the sweep's folder (``<base_dir>/experiments/reverse_reward``): the generator is the last
phase of its forward chain, the reranker the last phase of its backward chain (both SFT: a sequence-mode backward
model writes questions, so the sweep has no RL phase), and both must have finished. The study then measures:

1. ``sums`` (test split): ``--questions`` questions, 16 samples each at temperature 1, scored by both models once;
   pass@1, best-of-N by forward log-probability, by reverse reward and by the combination (``reverse + weight ×
   forward``) at N = 1, 4, 16 with 95 % Wilson intervals, plus the oracle (any of the N right) and the combination's
   accuracy at N = 16 for several weights and paired counts with McNemar's exact test at N = 16 (the rules choose
   among the same samples of the same questions), all from the same samples.
2. GSM8K's offline test copy, ``--gsm8k`` questions at N = 1, 4: a smoke check (the default models score about 0).

It writes the JSON (the run folders, the tables, timings and every candidate's scores) and a plot: accuracy against
N per rule, with the intervals. Measured wall times are in the README section "Study: the reverse reward".
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from revjax.config import load_config
from revjax.analysis.plots import _pyplot, save_figure
from revjax.errors import RevjaxError, run_command
from revjax.eval.run import write_json
from revjax.eval.rerank import RULES, RankModel, Reranker, accuracy_table, choose, evaluate_task
from revjax.eval.rerank_cli import load_task
from revjax.experiments.lineage import CONFIG_FILE, read_plan, read_status

SAMPLES = (1, 4, 16)
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
PAIRS = (("reverse", "pass@1"), ("forward", "pass@1"), ("combined", "forward"), ("reverse", "forward"))
LABELS = {"pass@1": "pass@1 (first sample)", "forward": "best by forward log P(a|q)",
          "reverse": "best by reverse reward log P(q|a)", "combined": "best by reverse + w·forward",
          "oracle": "oracle (any of N right)"}


class StudyError(RevjaxError):
    """An experiment folder or run folder the study cannot score."""

    exit_code = 2


def sweep_runs(experiment_dir: Path) -> tuple[Path, Path]:
    """The generator (the forward chain's last run) and the reranker (the backward chain's last run) of the sweep's
    experiment folder; both must have finished."""
    found: dict[str, list[Path]] = {}
    for chain in read_plan(experiment_dir):
        last = chain[-1]
        config = last / CONFIG_FILE
        if not config.is_file():
            raise StudyError(f"{config} is missing; run `revjax sweep reverse_reward` to write and train {last.name}")
        found.setdefault(load_config([config], []).direction.direction, []).append(last)
    for direction in ("forward", "backward"):
        if len(found.get(direction, [])) != 1:
            raise StudyError(f"{experiment_dir} holds {len(found.get(direction, []))} {direction} chains, not one; "
                             "score a folder of configs/experiments/reverse_reward.yaml or give --generator and "
                             "--reranker")
    generator, reranker = found["forward"][0], found["backward"][0]
    for run in (generator, reranker):
        state = read_status(run)["state"]
        if state != "finished":
            raise StudyError(f"the run {run} is {state}, not finished; run `revjax sweep reverse_reward` until it "
                             "finishes")
    return generator, reranker


def training_seconds(experiment_dir: Path) -> dict:
    """Each run folder's training wall time in seconds (its status's start to end, whole seconds), in plan order."""
    out = {}
    for run in (run for chain in read_plan(experiment_dir) for run in chain):
        status = read_status(run)
        if status.get("started") and status.get("ended"):
            start, end = (datetime.fromisoformat(status[k]) for k in ("started", "ended"))
            out[run.name] = (end - start).total_seconds()
    return out


def oracle(detail: list[dict], ns) -> dict:
    """Share of questions with a right answer among the first n samples, per n."""
    right = np.array([[c["correct"] for c in d["candidates"]] for d in detail], bool)
    return {str(n): float(right[:, :n].any(axis=1).mean()) for n in ns}


def weight_sweep(detail: list[dict], weights, n: int) -> dict:
    """The combination's accuracy at N = ``n`` for each weight, from the same samples and scores."""
    forward = np.array([[c["forward"] for c in d["candidates"]] for d in detail])
    reverse = np.array([[c["reverse"] for c in d["candidates"]] for d in detail])
    right = np.array([[c["correct"] for c in d["candidates"]] for d in detail], bool)
    return {str(w): accuracy_table(right, [n], forward, reverse, w)[str(n)]["combined"] for w in weights}


def paired(detail: list[dict], n: int, weight: float, pairs) -> dict:
    """For each pair of rules at N = ``n``, on the same questions: how many questions only the first answers right,
    how many only the second, and McNemar's exact two-sided p-value (a binomial test on those discordant ones)."""
    forward = np.array([[c["forward"] for c in d["candidates"]] for d in detail])
    reverse = np.array([[c["reverse"] for c in d["candidates"]] for d in detail])
    right = np.array([[c["correct"] for c in d["candidates"]] for d in detail], bool)
    picks = choose(forward, reverse, weight, n)
    rows = np.arange(len(right))
    out = {}
    for a, b in pairs:
        ra, rb = right[rows, picks[a]], right[rows, picks[b]]
        only_a, only_b = int((ra & ~rb).sum()), int((rb & ~ra).sum())
        k, m = min(only_a, only_b), only_a + only_b
        p = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m) if m else 1.0
        out[f"{a} vs {b}"] = {"only_first": only_a, "only_second": only_b, "p": p}
    return out


def plot(results: dict, path: Path) -> None:
    plt = _pyplot()
    sums = results["sums"]
    ns = sums["best_of"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, rule in enumerate(RULES):
        rows = [sums["results"][str(n)][rule] for n in ns]
        acc = np.array([r["accuracy"] for r in rows])
        err = np.array([[r["accuracy"] - r["low"] for r in rows], [r["high"] - r["accuracy"] for r in rows]])
        x = np.array(ns, float) * (1 + 0.04 * (k - 1.5))  # side by side, so the bars do not hide each other
        ax.errorbar(x, acc, yerr=err, marker="o", capsize=3, label=LABELS[rule])
    ax.plot(ns, [sums["oracle"][str(n)] for n in ns], "k:", label=LABELS["oracle"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (samples per question)")
    ax.set_ylabel("sums accuracy (95% Wilson interval)")
    ax.set_title(f"best-of-N on sums, {sums['questions']} questions, weight {sums['weight']:g}")
    ax.legend(fontsize=8)
    save_figure(fig, plt, path)


def study(generator_dir: Path, reranker_dir: Path, args: argparse.Namespace) -> dict:
    times = {}
    generator = RankModel.from_run(generator_dir)
    reranker = Reranker(generator, RankModel.from_run(reranker_dir), weight=args.weight)
    start = time.perf_counter()
    sums = evaluate_task(load_task("sums", args.questions), reranker, SAMPLES, limit=args.questions,
                         temperature=args.temperature, seed=args.seed, max_new_tokens=32,
                         progress=lambda k: print(".", end="", flush=True))
    times["sums_s"] = time.perf_counter() - start
    sums["oracle"] = oracle(sums["questions_detail"], SAMPLES)
    sums["weights"] = weight_sweep(sums["questions_detail"], WEIGHTS, SAMPLES[-1])
    sums["paired"] = paired(sums["questions_detail"], SAMPLES[-1], args.weight, PAIRS)
    out = {"runs": {"generator": str(generator_dir), "reranker": str(reranker_dir)}, "sums": sums,
           "times": times}
    if args.gsm8k:
        start = time.perf_counter()
        gsm = evaluate_task(load_task("gsm8k", args.gsm8k, generator.tasks_dir), reranker, (1, 4), limit=args.gsm8k,
                            temperature=args.temperature, seed=args.seed, max_new_tokens=96)
        times["gsm8k_s"] = time.perf_counter() - start
        gsm["oracle"] = oracle(gsm["questions_detail"], (1, 4))
        out["gsm8k"] = gsm
    print()
    return out


def table(part: dict) -> str:
    ns = part["best_of"]
    lines = ["| N | " + " | ".join(RULES) + " | oracle |", "|---:|" + "---:|" * (len(RULES) + 1)]
    for n in ns:
        row = part["results"][str(n)]
        cells = [f"{row[r]['accuracy']:.3f} [{row[r]['low']:.3f}, {row[r]['high']:.3f}]" for r in RULES]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {part['oracle'][str(n)]:.3f} |")
    return "\n".join(lines)


def report(out: dict) -> str:
    """The study's results as text: the sums table, the weights, the paired tests, the GSM8K table, the times."""
    sums = out["sums"]
    lines = [f"sums ({sums['questions']} questions, weight {sums['weight']:g}):", table(sums),
             "combined at N=16 by weight: "
             + ", ".join(f"{w}: {r['accuracy']:.3f}" for w, r in sums["weights"].items()),
             "paired at N=16: " + "; ".join(f"{k}: {v['only_first']} vs {v['only_second']} (p {v['p']:.3g})"
                                             for k, v in sums["paired"].items())]
    if "gsm8k" in out:
        lines += ["", f"GSM8K smoke ({out['gsm8k']['questions']} questions):", table(out["gsm8k"])]
    if out.get("training_s"):
        lines += ["", "training: " + ", ".join(f"{k} {v:.0f} s" for k, v in out["training_s"].items())]
    return "\n".join([*lines, "", ", ".join(f"{k} {v:.0f} s" for k, v in out["times"].items())])


def score(args: argparse.Namespace) -> dict:
    """The runs to score (from the experiment folder, or as given), the study, then the JSON and the plot."""
    if args.experiment is not None:
        if args.generator is not None or args.reranker is not None:
            raise StudyError("give either an experiment folder or --generator and --reranker, not both")
        generator, reranker = sweep_runs(args.experiment)
        trained = training_seconds(args.experiment)
    elif args.generator is None or args.reranker is None:
        raise StudyError("give the sweep's experiment folder, or both --generator RUN and --reranker RUN")
    else:
        generator, reranker, trained = args.generator, args.reranker, {}
    start = time.perf_counter()
    out = study(generator, reranker, args)
    out["times"]["total_s"] = time.perf_counter() - start
    out["training_s"] = trained
    write_json(args.json, out)
    plot(out, args.plot)
    print(f"generator {generator}, reranker {reranker}\n{report(out)}\nwrote {args.json} and {args.plot}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    scoring = sub.add_parser("score", help="score the sweep's generator and reranker")
    scoring.add_argument("experiment", type=Path, nargs="?", help="the sweep's experiment folder")
    scoring.add_argument("--generator", type=Path, help="a forward (or bidirectional) run folder")
    scoring.add_argument("--reranker", type=Path, help="a sequence-mode backward (or bidirectional) run folder")
    scoring.add_argument("--questions", type=int, default=1000, help="sums questions")
    scoring.add_argument("--gsm8k", type=int, default=50, help="GSM8K questions (0: skip the smoke check)")
    scoring.add_argument("--weight", type=float, default=1.0, help="the combination's forward weight")
    scoring.add_argument("--temperature", type=float, default=1.0)
    scoring.add_argument("--seed", type=int, default=0)
    scoring.add_argument("--json", type=Path, default=Path("reverse_reward.json"))
    scoring.add_argument("--plot", type=Path, default=Path("reverse_reward.png"))
    redraw = sub.add_parser("plot", help="draw the plot again from a JSON that score wrote")
    redraw.add_argument("json", type=Path)
    redraw.add_argument("--plot", type=Path, required=True)
    args = parser.parse_args(argv)

    def body() -> None:
        if args.command == "score":
            score(args)
        else:
            out = json.loads(args.json.read_text(encoding="utf-8"))
            plot(out, args.plot)
            print(f"{report(out)}\nwrote {args.plot}")

    return run_command("reverse_reward_study", body)


if __name__ == "__main__":
    raise SystemExit(main())
