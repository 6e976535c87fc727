"""``revjax eval RUN_DIR``: evaluate one checkpoint of a revjax run in every direction it knows.

:func:`evaluate_run` loads the parameters (not the optimizer state) of a run's checkpoint, its config and
tokenizer, runs the chosen suites — ``bpb`` (validation bits per byte and greedy samples), ``core`` (nanochat's
CORE), ``offline`` (the OLMo-offline in-context suite), ``chat`` (ChatCORE and the joint-likelihood score),
``default`` (bits per byte and the offline suite, the command's default with at most :data:`DEFAULT_MAX_PER_TASK`
examples per task: about two minutes on the default models on 2 cores) or ``all`` (``--full``: every suite, no cap) —
for each reading direction, writes the results as JSON into ``<run_dir>/eval/`` and returns them.
:func:`format_markdown` renders them as tables; :func:`main` is the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Sequence


from revjax.direction import Direction, known_directions
from revjax.errors import RevjaxError, run_command
from revjax.eval.icl import EvalError
from revjax.eval.scorer import MIN_LEN, Scorer
from revjax.eval.suites import (DEFAULT_MAX_PER_TASK, DEFAULT_SUITES, SUITES, SuiteChoices, SuiteRun,
                                default_suite_names, directions_of)


CHOICES = SuiteChoices()  # every registered suite, default and all


class LoadedRun:
    """A run's model (graphdef, params), config, metadata, tokenizer, direction and reversal unit
    (:func:`revjax.runs.load_run`), with a scorer, ready to evaluate."""

    def __init__(self, run_dir: str | os.PathLike[str], step: int | None = None, *, tokens_per_call: int = 8192,
                 min_len: int = MIN_LEN):
        from revjax.runs import load_run

        run = load_run(run_dir, step, command="eval")
        self.run_dir, self.step, self.meta, self.config = run.run_dir, run.step, run.meta, run.config
        self.tokenizer, self.direction, self.mode, self.unit = run.tokenizer, run.direction, run.mode, run.unit
        self.graphdef, self.params = run.graphdef, run.params
        self.scorer = Scorer(self.graphdef, self.params, pad_id=self.tokenizer.bos_id, tokens_per_call=tokens_per_call,
                             min_len=min_len)


def _ways(direction: Direction, directions: Sequence[str] | None) -> list[Direction]:
    known = known_directions(direction)
    if not directions:
        return known
    try:
        ways = [Direction.parse(d) for d in directions]
    except ValueError as err:
        raise EvalError(str(err)) from None
    foreign = [w.value for w in ways if w not in known]
    if foreign:
        raise EvalError(f"a {direction.value} model reads {', '.join(w.value for w in known)}, not "
                        f"{', '.join(foreign)}")
    return ways


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON at ``path`` atomically (a temporary file beside it, then a rename), the file's mode
    0666 less the umask like any file a command creates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def suite_names(suite: str, reranker: str | None = None) -> list[str]:
    """The suites ``--suite`` names: ``all`` every registered one that needs no reranker, ``default``
    :data:`DEFAULT_SUITES`; a reranker adds the suites that need one (``rerank``)."""
    names = [n for n, row in SUITES.items() if not row.needs_reranker] if suite == "all" else (
        default_suite_names() if suite == "default" else [suite])
    extra = [n for n, row in SUITES.items() if row.needs_reranker and n not in names] if reranker is not None else []
    return names + extra


def evaluate_run(run_dir: str | os.PathLike[str], suite: str = "all", directions: Sequence[str] | None = None,
                 max_per_task: int | None = None, step: int | None = None, *, bpb_tokens: int = 1 << 18,
                 bundle: str | None = None, chat_source: str = "offline", tokens_per_call: int = 8192,
                 min_len: int = MIN_LEN, progress: bool = True, reranker: str | None = None, best_of: int = 4,
                 weight: float = 1.0) -> dict:
    """Evaluate step ``step`` (default: newest intact) of the run in ``run_dir`` on ``suite`` for ``directions``
    (default: every direction the model knows); writes ``<run_dir>/eval/<suite>-step<N>.json`` and returns it.

    With ``suite="all"`` or ``"default"`` a suite that cannot run (no validation shards, the CORE bundle offline) is recorded with
    its error and the others still run; a single suite that cannot run raises. ``tokens_per_call`` and ``min_len``
    shape the scorer's batches (:class:`revjax.eval.scorer.Scorer`). ``reranker`` (a backward run) adds the
    ``rerank`` suite: best-of-``best_of`` answers to the generative tasks, chosen by :mod:`revjax.eval.rerank`.
    """
    if suite not in CHOICES:
        raise EvalError(f"unknown suite {suite!r}; choose one of {', '.join(CHOICES)}")
    start = time.perf_counter()
    run = LoadedRun(run_dir, step, tokens_per_call=tokens_per_call, min_len=min_len)
    ways = _ways(run.direction, directions)
    names = suite_names(suite, reranker)
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(SUITES[n].steps(len(ways)) for n in names), desc="eval", unit="task",
               disable=not progress)
    results: dict[str, Any] = {
        "run_dir": str(run.run_dir), "step": run.step, "direction": run.direction.value, "mode": run.mode,
        "phase": run.meta.get("phase"), "ways": [w.value for w in ways], "max_per_task": max_per_task,
        "suites": {},
    }
    try:
        for name in names:
            def tick(label: str, name: str = name) -> None:
                bar.set_postfix_str(f"{run.run_dir.name} {name}:{label}", refresh=False)
                bar.update(1)

            bar.set_postfix_str(f"{run.run_dir.name} {name}")
            suite_start = time.perf_counter()
            try:
                row = SUITES[name]
                job = SuiteRun(run, directions_of(row, run.direction, ways), max_per_task, bpb_tokens, bundle,
                               chat_source, tick, reranker=reranker, best_of=best_of, weight=weight)
                out = row.evaluate(job)
            except RevjaxError as err:
                if suite not in ("all", "default"):
                    raise
                out = {"suite": name, "error": str(err)}
            out["seconds"] = time.perf_counter() - suite_start
            results["suites"][name] = out
    finally:
        bar.close()
    results["seconds"] = time.perf_counter() - start
    write_json(results_path(run.run_dir, suite, run.step), results)
    return results


def results_path(run_dir: str | os.PathLike[str], suite: str, step: int) -> Path:
    """Where :func:`evaluate_run` writes suite ``suite``'s results at ``step``: ``<run_dir>/eval/``."""
    return Path(run_dir) / "eval" / f"{suite}-step{step}.json"


def format_markdown(results: dict) -> str:
    """Markdown tables of :func:`evaluate_run`'s results, one section per suite, one column pair per direction."""
    cap = results.get("max_per_task")
    lines = [f"## Evaluation of {results['run_dir']} (step {results['step']}, {results['direction']})", ""]
    if "max_per_task" in results:
        lines += [f"examples per task: {'all' if cap is None else cap if isinstance(cap, str) else f'at most {cap}'}",
                  ""]
    for name, out in results["suites"].items():
        if "error" in out:
            lines += [f"### {name}", "", f"not run: {out['error']}", ""]
            continue
        lines += SUITES[name].render(out) if name in SUITES else [f"### {name}", "", "(no renderer)"]
        lines.append("")
    return "\n".join(lines)


DESCRIPTION = __doc__.splitlines()[0]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's default after its help (unless the help names its default already)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (action.option_strings and "default" not in text and action.default not in (None, False)
                and action.default is not argparse.SUPPRESS):
            text = f"{text} (default: %(default)s)".strip()
        return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``RUN_DIR [--suite …] [--full] [--directions …] [--max-per-task N] [--step N] [--bundle DIR]
    [--chat-source …] [--batch-tokens N]``."""
    parser.add_argument("run_dir", help="a revjax run's checkpoint folder")
    parser.add_argument("--suite", choices=CHOICES, default="default",
                        help=f"default (the default): {' and '.join(DEFAULT_SUITES)}, at most "
                             f"{DEFAULT_MAX_PER_TASK} examples per task (about two minutes on the default models); all: every suite")
    parser.add_argument("--full", action="store_true",
                        help="every suite, every example (--suite all, no per-task cap)")
    parser.add_argument("--directions", nargs="+", default=None, metavar="DIRECTION",
                        help="forward and/or backward (default: every direction the model knows)")
    parser.add_argument("--max-per-task", type=int, default=None, metavar="N",
                        help=f"examples per task; 0: all (default: {DEFAULT_MAX_PER_TASK}, all with --full)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest intact)")
    parser.add_argument("--bundle", default=None, help="an unpacked CORE eval bundle folder (default: download)")
    parser.add_argument("--chat-source", choices=("offline", "hub"), default="offline", help="ChatCORE's tasks")
    parser.add_argument("--batch-tokens", type=int, default=8192, metavar="N",
                        help="tokens per scoring call (rows × length; lower it if memory runs short)")
    parser.add_argument("--reranker", default=None, metavar="RUN",
                        help="a backward run (sequence mode): adds the rerank suite, best-of-N answers to sums and "
                             "GSM8K chosen by its reverse reward")
    parser.add_argument("--best-of", type=int, default=4, metavar="N", help="samples per question for --reranker")
    parser.add_argument("--weight", type=float, default=1.0,
                        help="--reranker's combined score: reverse + weight × forward log-probability")


def chosen(args: argparse.Namespace) -> tuple[str, int | None]:
    """``(suite, per-task cap)`` of ``--suite``, ``--full`` and ``--max-per-task`` (0: no cap)."""
    suite = "all" if args.full and args.suite == "default" else args.suite
    cap = args.max_per_task if args.max_per_task is not None else (None if args.full else DEFAULT_MAX_PER_TASK)
    return suite, (cap if cap and cap > 0 else None)


def run(args: argparse.Namespace) -> int:
    """Evaluate the run ``args`` name and print the tables; returns the exit code."""
    directions = [d for item in args.directions or [] for d in item.split(",") if d] or None
    suite, cap = chosen(args)

    def body() -> int:
        results = evaluate_run(args.run_dir, suite, directions, cap, args.step,
                               bundle=args.bundle, chat_source=args.chat_source, tokens_per_call=args.batch_tokens,
                               reranker=args.reranker, best_of=args.best_of, weight=args.weight)
        print(format_markdown(results))
        print(f"wrote {results_path(results['run_dir'], suite, results['step'])}")
        return 0

    return run_command("revjax eval", body)


def main(argv: Sequence[str] | None = None) -> int:
    """``revjax eval RUN_DIR [--suite …] [--full] [--directions …] [--max-per-task N] [--step N]``."""
    parser = argparse.ArgumentParser(prog="revjax eval", description=DESCRIPTION, formatter_class=DefaultsHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
