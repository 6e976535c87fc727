"""``revjax compare RUN_DIR…``: forward, backward and bidirectional models side by side, on the same bytes.

For each model and each direction it reads (:func:`revjax.direction.known_directions`):

* validation bits per byte and loss on the *same documents* for every model (the first run's validation split, or
  ``data``): each document is cut, in reading order, into pieces of ``window`` tokens (the shortest model's
  ``sequence_len − 1``), and each piece is read from its own BOS in the model's order, so every token is a target
  exactly once in every direction and every model counts the same bytes (special tokens have none); a backward
  model of a word or entity unit reads each piece's reversed text (:mod:`revjax.eval.positions`);
* the mean loss at each context position ``0 … window−1`` of those pieces (the arrow-of-time curve: position
  ``k`` is the loss of the token read after ``k`` others of its piece);
* the chosen suites — by default (``--suite default``) the OLMo-offline suite, at most 50 examples per task; with
  ``all`` (``--full``: no cap) the in-context suite — CORE when its bundle is there (``bundle``, or
  ``<base dir>/eval_bundle``), else the OLMo-offline suite — and ChatCORE — taken from ``revjax eval`` results
  already in the run folder when they were measured at the same step with the same per-task cap, else computed
  (and saved there as ``revjax eval`` does).

Derived numbers: *gap* (a backward model's number − a forward model's), *balance* (a bidirectional model's
backward − forward) and *native vs cross* (a bidirectional model in each mode − the dedicated model of that
direction). Output: ``compare.json``, ``compare.md`` and two PNG plots in ``out``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from revjax.direction import known_directions
from revjax.errors import run_command
from revjax.eval.bpb import validation_documents
from revjax.eval.icl import EvalError
from revjax.eval.positions import pieces, position_losses
from revjax.eval.suites import DEFAULT_MAX_PER_TASK, SUITES, SuiteChoices, compare_suites, default_suite_names


# bpb (compare's own measure only), each compare or in-context suite, default and all
COMPARE_CHOICES = SuiteChoices(lambda row: row.compare or row.in_context, first=("bpb",))


def _direction_cell(model: dict) -> str:
    """A model's direction as the table shows it, with its reversal unit unless that is ``token``."""
    unit = model.get("unit", "token")
    return model["direction"] if unit == "token" else f"{model['direction']} ({unit})"


# ------------------------------------------------------------------------------------------------ suites


def _saved_suite(run_dir: Path, step: int, name: str, max_per_task: int | None, ways: Sequence[str]) -> dict | None:
    """A ``revjax eval`` result of suite ``name`` at ``step`` with the same per-task cap and every way, if any."""
    found = []
    for path in (run_dir / "eval").glob(f"*-step{step}.json"):
        try:
            data = json.loads(path.read_text())
            out = data["suites"][name]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if data.get("step") == step and "error" not in out and out.get("max_per_task") == max_per_task \
                and set(ways) <= set(out.get("ways", {})):
            found.append((path.stat().st_mtime, out))
    return max(found, key=lambda x: x[0])[1] if found else None


def suite_results(run_dir: Path, step: int, name: str, ways: Sequence[str], *, max_per_task: int | None,
                  evaluate: Callable[..., dict], **options) -> tuple[dict, bool]:
    """``(result, reused)``: suite ``name`` of the run, reused from its eval folder or computed by ``evaluate``."""
    saved = _saved_suite(run_dir, step, name, max_per_task, ways)
    if saved is not None:
        return saved, True
    results = evaluate(run_dir, name, list(ways), max_per_task, step, **options)
    return results["suites"][name], False


# ------------------------------------------------------------------------------------------------ comparison


def wanted_suites(suite: str, config: Any, bundle: str | os.PathLike[str] | None) -> list:
    """The suite rows ``--suite suite`` runs besides compare's own bits per byte."""
    if suite == "default":
        return [SUITES[n] for n in default_suite_names() if n != "bpb"]
    if suite in SUITES and not SUITES[suite].compare:
        return [SUITES[suite]]
    return compare_suites(suite, config, None if bundle is None else str(bundle))


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def derived(models: list[dict], metrics: Sequence[str]) -> dict[str, list[dict]]:
    """Gap, balance and native-vs-cross rows from ``models[i]["ways"][way]["metrics"]``."""
    def value(model: dict, way: str, metric: str) -> float | None:
        return model["ways"].get(way, {}).get("metrics", {}).get(metric)

    dedicated = {w: [m for m in models if m["direction"] == w] for w in ("forward", "backward")}
    both = [m for m in models if m["direction"] == "bidirectional"]
    gap = [{"metric": metric, "forward_model": f["name"], "backward_model": b["name"],
            "forward": value(f, "forward", metric), "backward": value(b, "backward", metric),
            "gap": _difference(value(b, "backward", metric), value(f, "forward", metric))}
           for metric in metrics for f in dedicated["forward"] for b in dedicated["backward"]]
    balance = [{"metric": metric, "model": m["name"], "forward": value(m, "forward", metric),
                "backward": value(m, "backward", metric),
                "balance": _difference(value(m, "backward", metric), value(m, "forward", metric))}
               for metric in metrics for m in both]
    cross = [{"metric": metric, "model": m["name"], "way": way, "dedicated_model": d["name"],
              "bidirectional": value(m, way, metric), "dedicated": value(d, way, metric),
              "difference": _difference(value(m, way, metric), value(d, way, metric))}
             for metric in metrics for m in both for way in ("forward", "backward") for d in dedicated[way]]
    return {"gap": gap, "balance": balance, "native_vs_cross": cross}


def _sequence_len(run_dir: Path) -> int:
    from revjax.runs import load_run

    if not run_dir.is_dir():
        raise EvalError(f"{run_dir} is not a folder; pass revjax run folders")
    return int(load_run(run_dir, weights=False).meta["model_config"]["sequence_len"])


def _names(run_dirs: Sequence[Path]) -> list[str]:
    names = [p.name for p in run_dirs]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def compare_runs(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None, *,
                 suite: str = "all", max_per_task: int | None = None, data: str | os.PathLike[str] | None = None,
                 max_chars: int = 1 << 18, bundle: str | os.PathLike[str] | None = None,
                 chat_source: str = "offline", tokens_per_call: int = 8192, progress: bool = True) -> dict:
    """Compare the newest intact step of each run; writes ``compare.json``, ``compare.md`` and the plots into
    ``out`` (default: ``<first run's base dir>/compare/<model names>``) and returns the JSON's content."""
    from revjax.eval.run import LoadedRun, evaluate_run

    if suite not in COMPARE_CHOICES:
        raise EvalError(f"unknown suite {suite!r}; choose one of {', '.join(COMPARE_CHOICES)}")
    if not run_dirs:
        raise EvalError("revjax compare needs at least one run folder")
    dirs = [Path(p).expanduser() for p in run_dirs]
    names = _names(dirs)
    window = min(_sequence_len(p) for p in dirs) - 1
    from tqdm.auto import tqdm

    models, bar = [], None
    try:
        for index, (name, run_dir) in enumerate(zip(names, dirs)):
            run = LoadedRun(run_dir, tokens_per_call=tokens_per_call)  # one model in memory at a time
            if index == 0:
                first = run.config
                source = Path(data).expanduser() if data else first.data_path()
                texts = validation_documents(source, max_chars)
                wanted = wanted_suites(suite, first, bundle)
                metrics = ["bpb"]  # compare's own measurement, then each suite's headline scores
                bar = tqdm(total=len(dirs) * (1 + len(wanted)), desc="compare", unit="model·suite",
                           disable=not progress)
            ways = [w.value for w in known_directions(run.direction)]
            bar.set_postfix_str(f"{name}: bits per byte")
            chunks = pieces(texts, run.tokenizer, window)
            entry = {"name": name, "run_dir": str(run.run_dir), "step": run.step, "direction": run.direction.value,
                     "unit": run.unit.value, "mode": run.mode,
                     "phase": run.meta.get("phase"), "ways": {}, "suites": {}}
            for way in ways:
                measured = position_losses(run.graphdef, run.params, run.tokenizer, run.direction, way, chunks,
                                           window, vocab_size=run.config.model.vocab_size,
                                           tokens_per_call=tokens_per_call,
                                           token_bytes_method=run.config.tokenizer.token_bytes, unit=run.unit)
                entry["ways"][way] = {**measured, "metrics": {"bpb": measured["bpb"]}}
            bar.update(1)
            del run
            for row in wanted:
                bar.set_postfix_str(f"{name}: {row.name}")
                result, reused = suite_results(run_dir, entry["step"], row.name, ways, max_per_task=max_per_task,
                                               evaluate=evaluate_run, bundle=bundle, chat_source=chat_source,
                                               tokens_per_call=tokens_per_call, progress=False)
                entry["suites"][row.name] = {"suite": result["suite"], "reused": reused,
                                             "max_per_task": result.get("max_per_task")}
                for way in ways:
                    scores = row.scores(result, way)
                    entry["ways"][way]["metrics"].update(scores)
                    metrics += [m for m in scores if m not in metrics]
                bar.update(1)
            models.append(entry)
    finally:
        if bar is not None:
            bar.close()
    results = {
        "documents": {"count": len(texts), "chars": sum(map(len, texts)), "window": window, "source": str(source),
                      "split": "val"},
        "suite": suite, "in_context_suite": next((s["suite"] for m in models[:1] for name, s in m["suites"].items()
                                                  if SUITES[name].in_context), None),
        "max_per_task": max_per_task, "metrics": metrics, "models": models, **derived(models, metrics),
    }
    target = Path(out).expanduser() if out else first.base_path() / "compare" / "+".join(names)
    results["out"] = str(target)
    write_outputs(results, target)
    return results


def write_outputs(results: dict, out: Path) -> None:
    """``compare.json``, ``compare.md``, ``position_loss.png`` and ``scores.png`` in ``out``."""
    from revjax.analysis.plots import plot_bars, plot_position_losses

    out.mkdir(parents=True, exist_ok=True)
    curves = {(m["name"], way): v["per_position"] for m in results["models"] for way, v in m["ways"].items()}
    differences = {}
    for m in results["models"]:
        if set(m["ways"]) == {"forward", "backward"}:
            differences[f"{m['name']}: its backward − forward mode"] = _curve_difference(m["ways"]["backward"],
                                                                                          m["ways"]["forward"])
    for row in results["gap"]:
        if row["metric"] == "bpb":
            f, b = (next(m for m in results["models"] if m["name"] == row[k]) for k in ("forward_model",
                                                                                       "backward_model"))
            differences[f"{b['name']} − {f['name']}"] = _curve_difference(b["ways"]["backward"], f["ways"]["forward"])
    results["plots"] = {"position_loss": "position_loss.png", "scores": "scores.png"}
    plot_position_losses(curves, out / "position_loss.png", differences=differences or None)
    titles = {"bpb": "bits per byte (lower is better)"}
    bars = {titles.get(metric, f"{metric} (higher is better)"): {(m["name"], way): v["metrics"].get(metric)
                                                                  for m in results["models"]
                                                                  for way, v in m["ways"].items()}
            for metric in results["metrics"]}
    plot_bars(bars, out / "scores.png")
    from revjax.eval.run import write_json

    write_json(out / "compare.json", results)  # atomic: an interrupted compare leaves no torn results
    (out / "compare.md").write_text(format_markdown(results), encoding="utf-8")


def _curve_difference(a: dict, b: dict) -> list[float | None]:
    return [None if x is None or y is None else x - y for x, y in zip(a["per_position"], b["per_position"])]


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def format_markdown(results: dict) -> str:
    """The comparison as markdown tables (lower bits per byte is better; higher suite scores are better)."""
    docs, metrics = results["documents"], results["metrics"]
    lines = ["# Comparison", "",
             f"Validation documents: {docs['count']} from {docs['source']} ({docs['chars']:,} characters), read in "
             f"pieces of {docs['window']} tokens from BOS; bits per byte: lower is better; suite scores (centered "
             "accuracy): higher is better.", "",
             "Examples per task: " + ("all" if results.get("max_per_task") is None
                                      else f"at most {results['max_per_task']}") + ".", "",
             "| model | direction | phase | step | reads | " + " | ".join(metrics) + " | bytes |",
             "|---|---|---|---:|---|" + "---:|" * (len(metrics) + 1)]
    for m in results["models"]:
        for way, v in m["ways"].items():
            cells = [_fmt(v["metrics"].get(metric)) for metric in metrics]
            lines.append(f"| {m['name']} | {_direction_cell(m)} | {m['phase']} | {m['step']} | {way} | "
                         + " | ".join(cells) + f" | {v['bytes']:,} |")
    reused = [f"{m['name']}: {s['suite']}" for m in results["models"] for s in m["suites"].values() if s["reused"]]
    if reused:
        lines += ["", "Reused from `revjax eval` results: " + ", ".join(reused) + "."]
    sections = (("Gap (backward model − forward model)", "gap", ("forward_model", "backward_model"),
                 ("forward", "backward", "gap")),
                ("Balance (a bidirectional model: backward − forward)", "balance", ("model",),
                 ("forward", "backward", "balance")),
                ("Native vs cross (bidirectional mode − dedicated model)", "native_vs_cross",
                 ("model", "way", "dedicated_model"), ("bidirectional", "dedicated", "difference")))
    for title, key, labels, numbers in sections:
        if not results[key]:
            continue
        lines += ["", f"## {title}", "", "| metric | " + " | ".join(labels + numbers) + " |",
                  "|---|" + "---|" * len(labels) + "---:|" * len(numbers)]
        for row in results[key]:
            lines.append(f"| {row['metric']} | " + " | ".join(str(row[k]) for k in labels) + " | "
                         + " | ".join(_fmt(row[k]) if k != numbers[-1] else _signed(row[k]) for k in numbers) + " |")
    marks = [p for p in (0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 1023, 2047) if p < docs["window"]]
    lines += ["", "## Loss by context position (nats)", "",
              "| model | reads | " + " | ".join(f"pos {p}" for p in marks) + " |", "|---|---|" + "---:|" * len(marks)]
    for m in results["models"]:
        for way, v in m["ways"].items():
            lines.append(f"| {m['name']} | {way} | " + " | ".join(_fmt(v["per_position"][p], 3) for p in marks) + " |")
    if "plots" in results:
        lines += ["", f"![loss by context position]({results['plots']['position_loss']})", "",
                  f"![scores by model and direction]({results['plots']['scores']})"]
    return "\n".join(lines) + "\n"


DESCRIPTION = __doc__.splitlines()[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``RUN_DIR… [--out DIR] [--suite …] [--full] [--max-per-task N] [--data DIR] [--max-chars N] [--bundle DIR]
    [--chat-source …] [--batch-tokens N]``."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="revjax run folders (checkpoint folders)")
    parser.add_argument("--out", default=None, help="output folder (default: <base dir>/compare/<names>)")
    parser.add_argument("--suite", choices=COMPARE_CHOICES, default="default",
                        help="default (the default): bits per byte and the offline suite, at most "
                             f"{DEFAULT_MAX_PER_TASK} examples per task (about two minutes on the default models); "
                             "core: CORE when its bundle is there, else the OLMo-offline suite; all: every suite")
    parser.add_argument("--full", action="store_true", help="every suite, every example (--suite all, no cap)")
    parser.add_argument("--max-per-task", type=int, default=None, metavar="N",
                        help=f"examples per task; 0: all (default: {DEFAULT_MAX_PER_TASK}, all with --full)")
    parser.add_argument("--data", default=None, help="corpus folder whose val split is read (default: the first "
                                                     "run's)")
    parser.add_argument("--max-chars", type=int, default=1 << 18, metavar="N",
                        help="characters of validation text (default: 262144)")
    parser.add_argument("--bundle", default=None,
                        help="an unpacked CORE eval bundle folder (default: <base dir>/eval_bundle)")
    parser.add_argument("--chat-source", choices=("offline", "hub"), default="offline", help="ChatCORE's tasks")
    parser.add_argument("--batch-tokens", type=int, default=8192, metavar="N", help="tokens per model call")


def run(args: argparse.Namespace) -> int:
    """Compare the runs ``args`` name, write the outputs and print the tables; returns the exit code."""
    from revjax.eval.run import chosen

    suite, cap = chosen(args)

    def body() -> int:
        results = compare_runs(args.run_dirs, args.out, suite=suite, max_per_task=cap,
                               data=args.data, max_chars=args.max_chars, bundle=args.bundle,
                               chat_source=args.chat_source, tokens_per_call=args.batch_tokens)
        print(format_markdown(results))
        print(f"wrote compare.json, compare.md, position_loss.png and scores.png to {results['out']}")
        return 0

    return run_command("revjax compare", body)


def main(argv: Sequence[str] | None = None) -> int:
    """``revjax compare RUN_DIR… [--out DIR] [--suite …] [--full] [--max-per-task N]``."""
    from revjax.eval.run import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(prog="revjax compare", description=DESCRIPTION,
                                     formatter_class=DefaultsHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
