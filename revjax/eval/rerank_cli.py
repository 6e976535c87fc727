"""``revjax rerank GENERATOR_RUN --reranker RUN``: best-of-N answers chosen by a backward model's reverse reward.

With ``--prompt TEXT`` it samples N answers to one question and prints each with its forward log-probability
(``log P(answer | question)`` under the generator), its reverse reward (``log P(question | answer)`` under the
reranker) and the combined score, and marks the answer each rule picks. With ``--task sums`` or ``--task gsm8k``
(the offline GSM8K test copy) it reports the accuracy of the four rules (:data:`revjax.eval.rerank.RULES`) with 95 %
Wilson intervals at each N of ``--best-of``, all from the same ``max(N)`` samples per question. ``--json OUT``
writes the results. The methods are in :mod:`revjax.eval.rerank`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from revjax.errors import run_command
from revjax.eval.rerank import RULES, RankModel, Reranker, RerankError, evaluate_task

DESCRIPTION = __doc__.splitlines()[0]
TASKS = ("sums", "gsm8k")
DEFAULT_QUESTIONS = {"sums": 200, "gsm8k": 50}
MAX_NEW_TOKENS = {"sums": 32, "gsm8k": 256}  # longest answer per task (a sum's answer is about 15 tokens)


def load_task(name: str, count: int, tasks_dir: Any = None) -> Any:
    """The task ``--task`` names: ``sums`` (its test split, ``count`` questions) or GSM8K's offline test copy."""
    from revjax.eval.chat import CHAT_TASKS, OFFLINE_OPTIONS
    from revjax.tasks import TaskError, get_task

    try:
        if name == "sums":
            return get_task("sums", split="test", size=count)
        task_name, options = CHAT_TASKS["GSM8K"][:2]  # ChatCORE's GSM8K, read from its offline copy
        return get_task(task_name, **options, **OFFLINE_OPTIONS["GSM8K"], cache_dir=tasks_dir)
    except TaskError as err:
        raise RerankError(str(err)) from None


def format_table(out: dict) -> str:
    """A markdown table: one row per N, the four rules' accuracy and interval."""
    lines = [f"{out['task']}: {out['questions']} questions, generator {out['generator']}, reranker "
             f"{out['reranker']}, weight {out['weight']:g}, temperature {out['temperature']:g}", "",
             "| N | " + " | ".join(RULES) + " |", "|---:|" + "---:|" * len(RULES)]
    for n, row in out["results"].items():
        cells = [f"{row[r]['accuracy']:.3f} [{row[r]['low']:.3f}, {row[r]['high']:.3f}]" for r in RULES]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_prompt(prompt: str, ranking: Any) -> str:
    """Each candidate with its scores and the rules that chose it."""
    lines = [f"question: {prompt!r}", "", f"{'#':>3} {'forward':>9} {'reverse':>9} {'combined':>9}  chosen by  answer"]
    for i, c in enumerate(ranking.candidates):
        rules = ",".join(r for r in RULES if ranking.chosen[r] == i) or "-"
        lines.append(f"{i:>3} {c.forward:>9.3f} {c.reverse:>9.3f} {c.combined:>9.3f}  {rules:<9}  {c.text!r}")
    lines += ["", f"chosen (combined): {ranking.best.text!r}"]
    return "\n".join(lines)


def evaluate_suite(job: Any) -> dict:
    """The ``rerank`` suite of ``revjax eval`` (``--reranker RUN --best-of N``): best-of-N on sums and the offline
    GSM8K copy for the evaluated run as generator, the four rules at N = 1 and N, each with its interval."""
    from revjax.direction import Direction

    if job.reranker is None:
        raise RerankError("the rerank suite needs a reranker; pass --reranker RUN (a backward run in sequence mode)")
    if not job.ways:
        raise RerankError("a backward model cannot write the answers to rerank; evaluate a forward or bidirectional run")
    run = job.run
    generator = RankModel.from_loaded(run, scorer=run.scorer)
    reranker = Reranker(generator, RankModel.from_run(job.reranker), weight=job.weight)
    part: dict = {"tasks": {}, "unavailable": {}}
    for name, label in (("sums", "sums"), ("gsm8k", "GSM8K")):
        count = job.max_per_task or DEFAULT_QUESTIONS[name]
        try:
            task = load_task(name, count, generator.tasks_dir)
        except RerankError as err:
            part["unavailable"][label] = str(err)
        else:
            part["tasks"][label] = evaluate_task(task, reranker, sorted({1, job.best_of}), limit=count,
                                                 max_new_tokens=MAX_NEW_TOKENS[name])
        job.tick(label)
    return {"suite": "rerank", "best_of": job.best_of, "weight": reranker.weight, "reranker": str(job.reranker),
            "ways": {Direction.FORWARD.value: part}}


def render_suite(out: dict) -> list[str]:
    """Markdown of :func:`evaluate_suite`'s result: a table per task."""
    lines = [f"### best-of-{out['best_of']} reranked by {out['reranker']}", ""]
    for part in out["ways"].values():
        for task in part["tasks"].values():
            lines += [format_table(task), ""]
        lines += [f"unavailable: {label}: {why}" for label, why in part["unavailable"].items()]
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``GENERATOR_RUN --reranker RUN [--task sums|gsm8k | --prompt TEXT] [--best-of N …] [--weight W] …``."""
    parser.add_argument("run_dir", help="the generator: a forward or bidirectional revjax run")
    parser.add_argument("--reranker", required=True, metavar="RUN",
                        help="a backward or bidirectional run in sequence conversation mode")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", choices=TASKS, help="report accuracy on sums or the offline GSM8K test copy")
    what.add_argument("--prompt", metavar="TEXT", help="rerank the answers to one question")
    parser.add_argument("--best-of", type=int, nargs="+", default=[1, 4, 16], metavar="N",
                        help="samples per question (several: a row each, from the same samples)")
    parser.add_argument("--weight", type=float, default=1.0,
                        help="combined score = reverse + weight × forward (0: the reverse reward alone)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--limit", type=int, default=None, metavar="K",
                        help=f"questions of --task (default: {DEFAULT_QUESTIONS['sums']} sums, "
                             f"{DEFAULT_QUESTIONS['gsm8k']} GSM8K)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"longest answer (default: {MAX_NEW_TOKENS['sums']} for sums, "
                             f"{MAX_NEW_TOKENS['gsm8k']} for GSM8K, 64 for --prompt)")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per batch")
    parser.add_argument("--step", type=int, default=None, help="generator checkpoint step (default: newest)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON here")


def rerank(args: argparse.Namespace) -> dict:
    """Run what ``args`` ask for, print it, and return the results."""
    if any(n < 1 for n in args.best_of):
        raise RerankError(f"--best-of takes positive sample counts, got {args.best_of}")
    generator = RankModel.from_run(args.run_dir, args.step)
    reranker = Reranker(generator, RankModel.from_run(args.reranker), weight=args.weight)
    n = max(args.best_of)
    if args.prompt is not None:
        question = [generator.tokenizer.encode(args.prompt)]
        ranking = reranker.best_of([question], n, temperature=args.temperature, seed=args.seed,
                                   max_new_tokens=args.max_new_tokens or 64)[0]
        print(format_prompt(args.prompt, ranking))
        return {"prompt": args.prompt, "weight": reranker.weight, "chosen": ranking.chosen,
                "candidates": [c.as_dict() for c in ranking.candidates]}
    count = args.limit or DEFAULT_QUESTIONS[args.task]
    task = load_task(args.task, count, generator.tasks_dir)
    from tqdm.auto import tqdm

    with tqdm(total=min(count, len(task)), desc="rerank", unit="question") as bar:
        out = evaluate_task(task, reranker, args.best_of, limit=count, temperature=args.temperature, seed=args.seed,
                            max_new_tokens=args.max_new_tokens or MAX_NEW_TOKENS[args.task],
                            batch_size=args.batch_size, progress=bar.update)
    print(format_table(out))
    return out


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        out = rerank(args)
        if args.json:
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=2), encoding="utf-8")
            print(f"wrote {args.json}")
        return 0

    return run_command("revjax rerank", body)


def main(argv: Sequence[str] | None = None) -> int:
    """``revjax rerank GENERATOR_RUN --reranker RUN …``."""
    parser = argparse.ArgumentParser(prog="revjax rerank", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
