"""The reverse-reward study: best-of-N on ``sums`` with the default chain's forward model as generator and its
backward model as reranker (:mod:`revjax.eval.rerank`), plus a GSM8K smoke check.

    python scripts/reverse_reward_study.py [--questions 1000] [--gsm8k 50] [--json OUT] [--plot PNG]

Steps, all under ``$REVJAX_BASE_DIR`` (else ~/.cache/revjax):

1. ``revjax chain`` and ``revjax chain direction.direction=backward`` (the corpus, the tokenizer, then base → mid →
   SFT → RL; finished phases are reused, so a second run of the study trains nothing). The generator is the forward
   chain's last phase (``default-forward-rl``); the reranker is the backward chain's last one (``default-backward-sft``:
   a sequence-mode backward model writes questions, so its chain has no RL phase).
2. ``sums`` (test split): ``--questions`` questions, 16 samples each at temperature 1, scored by both models once;
   pass@1, best-of-N by forward log-probability, by reverse reward and by the combination (``reverse + weight ×
   forward``) at N = 1, 4, 16 with 95 % Wilson intervals, plus the oracle (any of the N right) and the combination's
   accuracy at N = 16 for several weights and paired counts with McNemar's exact test at N = 16 (the rules choose
   among the same samples of the same questions), all from the same samples.
3. GSM8K's offline test copy, ``--gsm8k`` questions at N = 1, 4: a smoke check (the default models score about 0).

It writes the JSON (the tables, timings and every candidate's scores) and a plot: accuracy against N per rule, with
the intervals. The study is a script rather than a sweep config: it trains no grid of runs, it scores two runs of
the default chain. Measured wall times are in the README section "Study: the reverse reward".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from revjax.eval.rerank import RULES, RankModel, Reranker, accuracy_table, choose, evaluate_task
from revjax.eval.rerank_cli import load_task

SAMPLES = (1, 4, 16)
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
PAIRS = (("reverse", "pass@1"), ("forward", "pass@1"), ("combined", "forward"), ("reverse", "forward"))
LABELS = {"pass@1": "pass@1 (first sample)", "forward": "best by forward log P(a|q)",
          "reverse": "best by reverse reward log P(q|a)", "combined": "best by reverse + w·forward",
          "oracle": "oracle (any of N right)"}


def base_dir() -> Path:
    return Path(os.environ.get("REVJAX_BASE_DIR", "~/.cache/revjax")).expanduser()


def chain(direction: str) -> float:
    """Run (or resume, or find finished) the default chain in ``direction``; returns its wall time in seconds."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "revjax.cli", "chain", f"direction.direction={direction}"]
    subprocess.run(command, check=True)
    return time.perf_counter() - start


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def study(args: argparse.Namespace) -> dict:
    times = {}
    if not args.no_train:
        times["chain_forward_s"] = chain("forward")
        times["chain_backward_s"] = chain("backward")
    runs = base_dir() / "checkpoints"
    generator = RankModel.from_run(runs / "default-forward-rl")
    reranker = Reranker(generator, RankModel.from_run(runs / "default-backward-sft"), weight=args.weight)
    start = time.perf_counter()
    sums = evaluate_task(load_task("sums", args.questions), reranker, SAMPLES, limit=args.questions,
                         temperature=args.temperature, seed=args.seed, max_new_tokens=32,
                         progress=lambda k: print(".", end="", flush=True))
    times["sums_s"] = time.perf_counter() - start
    sums["oracle"] = oracle(sums["questions_detail"], SAMPLES)
    sums["weights"] = weight_sweep(sums["questions_detail"], WEIGHTS, SAMPLES[-1])
    sums["paired"] = paired(sums["questions_detail"], SAMPLES[-1], args.weight, PAIRS)
    out = {"sums": sums, "times": times}
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=1000, help="sums questions")
    parser.add_argument("--gsm8k", type=int, default=50, help="GSM8K questions (0: skip the smoke check)")
    parser.add_argument("--weight", type=float, default=1.0, help="the combination's forward weight")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-train", action="store_true", help="use the chains' runs as they are")
    parser.add_argument("--json", type=Path, default=Path("reverse_reward.json"))
    parser.add_argument("--plot", type=Path, default=Path("reverse_reward.png"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = study(args)
    out["times"]["total_s"] = time.perf_counter() - start
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")
    plot(out, args.plot)
    print(f"sums ({out['sums']['questions']} questions, weight {out['sums']['weight']:g}):\n{table(out['sums'])}")
    print("combined at N=16 by weight: " + ", ".join(f"{w}: {r['accuracy']:.3f}"
                                                      for w, r in out["sums"]["weights"].items()))
    print("paired at N=16: " + "; ".join(f"{k}: {v['only_first']} vs {v['only_second']} (p {v['p']:.3g})"
                                          for k, v in out["sums"]["paired"].items()))
    if "gsm8k" in out:
        print(f"\nGSM8K smoke ({out['gsm8k']['questions']} questions):\n{table(out['gsm8k'])}")
    print("\n" + ", ".join(f"{k} {v:.0f} s" for k, v in out["times"].items()))
    print(f"wrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
