"""``revjax report RUN_DIR_OR_CHAIN_DIR…``: one report card for the phases of one or more chains.

Each argument is a run folder (its ancestors, through the ``parent`` recorded in its checkpoints, come along) or a
folder of run folders (every run in it). Runs are grouped into chains (a base run and the phases started from it)
and, per chain, the report gathers the tokenizer (vocabulary size; compression measured on validation text when
the corpus is there), each phase's training log (``metrics.jsonl``: steps, final training loss, val bpb and loss,
RL's pass@k and reward, scores logged by the in-training suite hook, an estimate of the training time) and the
``revjax eval`` results saved in the run at its newest step. The summary table has one row per direction and
metric and one column per phase, like nanochat's report card with a direction column. Output: ``report.md`` and
``report.html`` (markdown-it-py's rendering in a plain page) in ``<base dir>/reports/<chain names>`` (``--out``
chooses another folder).
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from revjax.errors import RevjaxError, run_command
from revjax.eval.suites import SUITES, way_result
from revjax.phases import PHASES, phase_order



class ReportError(RevjaxError):
    """A report cannot be made (no runs found, unreadable run folders)."""


@dataclass
class PhaseRun:
    """What one run folder recorded: newest checkpoint metadata, metrics rows and evaluation results."""

    run_dir: Path
    meta: dict
    rows: list[dict]
    evals: dict = field(default_factory=dict)  # suite name → the suite's result at the newest step

    @property
    def phase(self) -> str:
        return self.meta.get("phase") or "base"

    @property
    def direction(self) -> str:
        return self.meta.get("direction") or "forward"

    @property
    def parent(self) -> Path | None:
        run = (self.meta.get("parent") or {}).get("run")
        return Path(run).resolve() if run else None


def is_run(path: Path) -> bool:
    """A run folder: a metrics log or a numbered checkpoint step inside."""
    return path.is_dir() and ((path / "metrics.jsonl").is_file() or any(
        p.is_dir() and p.name.isdigit() for p in path.iterdir()))


def read_run(run_dir: Path) -> PhaseRun:
    from revjax.checkpoint import NoIntactCheckpoint
    from revjax.runs import load_run
    from revjax.tracking import read_metrics

    try:
        meta = load_run(run_dir, weights=False).meta  # the newest intact step's metadata, no weights
    except NoIntactCheckpoint as err:
        raise ReportError(f"{err}; train it first or leave it out") from None
    step = int(meta["step"])
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    evals: dict[str, tuple[float, dict]] = {}
    for path in (run_dir / "eval").glob(f"*-step{step}.json"):
        try:
            data = json.loads(path.read_text())
            suites = data["suites"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for name, out in suites.items():
            if isinstance(out, dict) and "max_per_task" not in out:
                out["max_per_task"] = data.get("max_per_task")
            if "error" not in out and path.stat().st_mtime >= evals.get(name, (-1.0, {}))[0]:
                evals[name] = (path.stat().st_mtime, out)
    return PhaseRun(run_dir.resolve(), meta, rows, {name: out for name, (_, out) in evals.items()})


def find_runs(paths: Sequence[str | Path]) -> list[PhaseRun]:
    """The runs named by ``paths`` (run folders and their ancestors, or every run in a folder of runs)."""
    found: dict[Path, PhaseRun] = {}
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if not path.is_dir():
            raise ReportError(f"{raw} is not a folder; pass run folders or a folder that holds them")
        todo = [path] if is_run(path) else sorted(p for p in path.iterdir() if is_run(p))
        if not todo:
            raise ReportError(f"{raw} is neither a run folder nor a folder of run folders")
        while todo:
            run_dir = todo.pop()
            if run_dir in found:
                continue
            found[run_dir] = run = read_run(run_dir)
            if run.parent is not None and is_run(run.parent):
                todo.append(run.parent)
    return list(found.values())


def chains(runs: Sequence[PhaseRun]) -> list[list[PhaseRun]]:
    """Runs grouped by the root of their parent links, each chain in phase order."""
    by_dir = {r.run_dir: r for r in runs}

    def root(run: PhaseRun) -> Path:
        seen = {run.run_dir}
        while run.parent in by_dir and run.parent not in seen:
            run = by_dir[run.parent]
            seen.add(run.run_dir)
        return run.run_dir

    groups: dict[Path, list[PhaseRun]] = {}
    for run in runs:
        groups.setdefault(root(run), []).append(run)
    return [sorted(g, key=lambda r: phase_order(r.phase)) for _, g in sorted(groups.items())]


# ------------------------------------------------------------------------------------------------ measurements


def last(rows: Sequence[dict], key: str) -> tuple[int, Any] | None:
    """``(step, value)`` of the last row holding ``key``."""
    for row in reversed(rows):
        if key in row:
            return row["step"], row[key]
    return None


def training_seconds(rows: Sequence[dict], steps: int) -> float | None:
    """Estimated training time: the first step (compilation included) plus the median logged step time for each
    other step (the log keeps every ``logging.log_every``-th step); the median leaves out the steps that also ran
    an evaluation hook."""
    times = [(r["step"], r["step_seconds"]) for r in rows if "step_seconds" in r]
    if not times:
        return None
    first = times[0][1]
    rest = [t for _, t in times[1:]]
    return first + (statistics.median(rest) * max(0, steps - 1) if rest else 0.0)


def phase_summary(run: PhaseRun) -> dict:
    """The numbers of one phase's training log and checkpoint."""
    step = int(run.meta["step"])
    out: dict[str, Any] = {"run_dir": str(run.run_dir), "phase": run.phase, "direction": run.direction,
                           "step": step, "finished": bool(run.meta.get("finished")), "time": run.meta.get("time")}
    for key in ("loss", "val_bpb", "val_loss", "val_reward"):
        found = last(run.rows, key)
        out[key] = None if found is None else found[1]
        out[f"{key}_step"] = None if found is None else found[0]
    passes = sorted({k for r in run.rows for k in r if k.startswith("val_pass@")})
    out["pass_at_k"] = {k[len("val_"):]: last(run.rows, k)[1] for k in passes}
    hooked = sorted({k for r in run.rows for k in r if k.count("/") == 1 and not k.startswith("val_bpb/")})
    out["hook_scores"] = {k: last(run.rows, k)[1] for k in hooked}  # "<suite>/<way>" from the suite hook
    out["hook_bpb"] = {k.split("/", 1)[1]: last(run.rows, k)[1] for r in run.rows for k in r if
                       k.startswith("val_bpb/")}
    out["seconds"] = training_seconds(run.rows, step)
    return out


def tokenizer_summary(run: PhaseRun, max_chars: int = 200_000) -> dict:
    """Vocabulary size, identity and (when the run's corpus is there) compression on validation text."""
    from revjax.tokenizer import Tokenizer

    path = run.meta.get("tokenizer_path")
    out: dict[str, Any] = {"path": path, "identity": run.meta.get("tokenizer_identity")}
    try:
        tok = Tokenizer.load(path)
    except (RevjaxError, OSError, TypeError):
        return {**out, "vocab_size": run.meta.get("model_config", {}).get("vocab_size"), "note": "not found"}
    out["vocab_size"] = tok.vocab_size
    from revjax.config import Config
    from revjax.eval.compare import validation_documents

    try:  # the corpus folder the run's config names (an older or foreign config may not load: then no compression)
        data = Config.from_dict(run.meta["config"], source=f"{run.run_dir}'s checkpoint").data_path()
        out["compression"] = tok.compression_stats(validation_documents(data, max_chars))
    except (RevjaxError, OSError, KeyError, TypeError, ValueError):
        pass
    return out


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        # a small non-zero number (RL's policy-gradient loss, whose advantages sum to about zero) keeps its digits
        return f"{value:.{digits}f}" if value == 0 or abs(value) >= 10 ** -(digits - 1) else f"{value:.2e}"
    return str(value)


def summary_rows(chain: Sequence[PhaseRun]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(direction, metric, {phase: value})`` rows of one chain's summary table."""
    from revjax.direction import known_directions

    phases = {run.phase: (run, phase_summary(run)) for run in chain}
    direction = chain[0].direction
    rows: list[tuple[str, str, dict[str, Any]]] = []

    def add(label: str, metric: str, pick) -> None:
        values = {p: pick(run, s) for p, (run, s) in phases.items()}
        if any(v is not None for v in values.values()):
            rows.append((label, metric, values))

    add(direction, "steps", lambda r, s: s["step"])
    add(direction, "train loss (last logged)", lambda r, s: s["loss"])
    add(direction, "val bpb (training)", lambda r, s: s["val_bpb"])
    add(direction, "val loss (training)", lambda r, s: s["val_loss"])
    ks = sorted({k for _, s in phases.values() for k in s["pass_at_k"]})
    for k in ks:
        add(direction, f"RL val {k}", lambda r, s, k=k: s["pass_at_k"].get(k))
    add(direction, "RL val reward", lambda r, s: s["val_reward"])
    add(direction, "training time (s, steps only, estimated)",
        lambda r, s: None if s["seconds"] is None else f"{s['seconds']:.1f}")
    for way in (w.value for w in known_directions(direction)):
        label = way if way == direction else f"{direction} → {way}"
        for name, suite in SUITES.items():  # each suite's rows, from the suite table
            parts = {p: way_result(r.evals.get(name), way) for p, (r, _) in phases.items()}
            for metric, pick in suite.report(way, list(parts.values())):
                add(label, metric, lambda r, s, pick=pick, parts=parts: pick(parts[r.phase], s))
    return rows


def format_report(groups: Sequence[Sequence[PhaseRun]]) -> str:
    """The report card as markdown."""
    import revjax

    from revjax.eval.run import format_markdown

    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    commits = sorted({r.meta.get("git_commit") or "unknown" for g in groups for r in g})
    lines = ["# revjax report card", "", f"Generated {stamp} by revjax {revjax.__version__}; runs trained at "
             f"commit {', '.join(commits)}.", ""]
    columns = list(PHASES)
    lines += ["## Summary", "", "| direction | metric | " + " | ".join(columns) + " |",
              "|---|---|" + "---:|" * len(columns)]
    for chain in groups:
        for label, metric, values in summary_rows(chain):
            lines.append(f"| {label} | {metric} | " + " | ".join(_cell(values.get(p)) for p in columns) + " |")
    lines.append("")
    for chain in groups:
        head = chain[0]
        mode = (head.meta.get("config") or {}).get("direction", {}).get("conversation")
        lines += [f"## Chain: {head.direction}" + (f" ({mode} mode)" if mode else "") + f", from {head.run_dir}", ""]
        tok = tokenizer_summary(head)
        text = f"Tokenizer: {_cell(tok.get('vocab_size'))} tokens at {tok['path']}"
        if "compression" in tok:
            c = tok["compression"]
            text += (f"; on {c['chars']:,} characters of validation text {c['bytes_per_token']:.3f} bytes/token, "
                     f"{c['chars_per_token']:.3f} characters/token")
        lines += [text + ".", "", "| phase | step | finished | final loss | val bpb | val loss | time (s, est.) |"
                  " saved | run |", "|---|---:|---|---:|---:|---:|---:|---|---|"]
        for run in chain:
            s = phase_summary(run)
            lines.append(f"| {s['phase']} | {s['step']} | {'yes' if s['finished'] else 'no'} | {_cell(s['loss'])} | "
                         f"{_cell(s['val_bpb'])} | {_cell(s['val_loss'])} | "
                         f"{'—' if s['seconds'] is None else format(s['seconds'], '.1f')} | {_cell(s['time'])} | "
                         f"{run.run_dir.name} |")
        lines.append("")
        for run in chain:
            if run.evals:
                text = format_markdown({"run_dir": str(run.run_dir), "step": run.meta["step"],
                                        "direction": run.direction, "suites": run.evals,
                                        "max_per_task": per_task_cap(run.evals)})
                lines += [text.replace("## Evaluation of", f"### {run.phase}: evaluation of", 1)
                          .replace("\n### ", "\n#### "), ""]
    return "\n".join(lines) + "\n"


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; }}
th {{ background: #f3f3f3; }} td {{ font-variant-numeric: tabular-nums; }}
code {{ background: #f3f3f3; padding: 0 0.2rem; }}
</style></head><body>
{body}
</body></html>
"""


def to_html(markdown: str, title: str = "revjax report card") -> str:
    """``markdown`` rendered by markdown-it-py (CommonMark with tables) in a plain HTML page."""
    from markdown_it import MarkdownIt

    return HTML_PAGE.format(title=html.escape(title), body=MarkdownIt("commonmark").enable("table").render(markdown))


def per_task_cap(evals: dict) -> int | str | None:
    """The examples-per-task cap of a run's evaluation results: one number, None (every example), or each suite's."""
    caps = {name: out.get("max_per_task") for name, out in evals.items()}
    if len(set(caps.values())) <= 1:
        return next(iter(caps.values()), None)
    return "; ".join(f"{name}: {'all' if cap is None else cap}" for name, cap in caps.items())


def default_folder(groups: Sequence[Sequence[PhaseRun]]) -> Path:
    """``<base dir>/reports/<chain names>``: the base dir of the first chain's first run, the name of each chain's
    first run joined with ``+``."""
    from revjax.runs import TrainedRun

    head = groups[0][0]
    base = TrainedRun(head.run_dir, head.meta).config.base_path()
    return base / "reports" / "+".join(dict.fromkeys(chain[0].run_dir.name for chain in groups))


def make_report(paths: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write ``report.md`` and ``report.html`` for the runs of ``paths`` into ``out`` (default:
    :func:`default_folder`); returns ``out``."""
    groups = chains(find_runs(paths))
    markdown = format_report(groups)
    target = Path(out).expanduser() if out else default_folder(groups)
    target.mkdir(parents=True, exist_ok=True)
    (target / "report.md").write_text(markdown, encoding="utf-8")
    (target / "report.html").write_text(to_html(markdown), encoding="utf-8")
    return target


DESCRIPTION = __doc__.splitlines()[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``RUN_DIR_OR_CHAIN_DIR… [--out DIR]``."""
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_CHAIN_DIR",
                        help="run folders (their parent phases come along) or folders holding run folders")
    parser.add_argument("--out", default=None, help="output folder (default: <base dir>/reports/<chain names>)")


def run(args: argparse.Namespace) -> int:
    """Write and print the report card of the runs ``args`` name; returns the exit code."""

    def body() -> int:
        target = make_report(args.paths, args.out)
        print((target / "report.md").read_text(encoding="utf-8"))
        print(f"wrote report.md and report.html to {target}")
        return 0

    return run_command("revjax report", body)


def main(argv: Sequence[str] | None = None) -> int:
    """``revjax report RUN_DIR_OR_CHAIN_DIR… [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="revjax report", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
