"""The one table of evaluation suites: every suite is a :class:`Suite` row of :data:`SUITES`, which ``revjax eval``,
``revjax compare``, ``revjax report`` and the training hook all iterate. A row says how the suite runs on a loaded
run, which directions it applies to, how its results render, its headline scores, its report rows and whether (and
how) it runs as a training hook. A new suite is one :func:`register_suite` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from revjax.direction import Direction, known_directions

Rows = list[tuple[str, Callable[[dict, dict], Any]]]  # (metric label, pick(way's result, training summary))


@dataclass(frozen=True)
class SuiteRun:
    """What a suite reads when it runs on a loaded run (``revjax eval``)."""

    run: Any  # revjax.eval.run.LoadedRun: graphdef, params, tokenizer, direction, mode, config, scorer
    ways: list[Direction]
    max_per_task: int | None = None
    bpb_tokens: int = 1 << 18
    bundle: str | None = None
    chat_source: str = "offline"
    tick: Callable[[str], Any] = lambda label: None
    reranker: str | None = None  # the rerank suite's backward run (``revjax eval --reranker RUN``)
    best_of: int = 4
    weight: float = 1.0


@dataclass(frozen=True)
class TrainingContext:
    """What a suite reads when it runs inside training: the run set-up and the loop's shared eval step."""

    run: Any  # revjax.train.setup.RunSetup
    eval_step: Callable[[Any], Callable]  # run → its jitted bits-per-byte step
    eval_batches: Callable[[Any, int], int]  # (run, tokens) → global batches holding them
    cache: dict = field(default_factory=dict)  # loaded once per run: documents, tasks


@dataclass(frozen=True)
class Suite:
    name: str  # the key in SUITES and in results ("bpb", "core", …)
    evaluate: Callable[[SuiteRun], dict]  # on a loaded run → {"suite", "ways": {way: …}, …}
    render: Callable[[dict], list[str]]  # markdown lines of its result
    scores: Callable[[dict, str], dict]  # (result, way) → {headline metric: value} (compare)
    report: Callable[[str, list[dict]], Rows]  # (way, every phase's result for it) → report-card rows
    steps: Callable[[int], int] = lambda ways: ways  # progress ticks for that many ways
    directions: Callable[[Direction], list[Direction]] = known_directions  # the ways it reads a model in
    train: Callable[[TrainingContext, Any], dict] | None = None  # as a training hook: (context, params) → metrics
    train_always: bool = False  # every in-training pass runs it (else: only when training.core_suite names it)
    compare: bool = False  # ``revjax compare`` runs it
    in_context: bool = False  # an in-context suite (compare names it as its "in_context_suite")
    fallback: str | None = None  # the suite compare runs instead when this one is not available
    available: Callable[[Any, str | None], bool] = lambda config, bundle: True  # (config, bundle) → can it run?
    needs_reranker: bool = False  # runs only with ``revjax eval --reranker RUN`` (which adds it to any --suite)


SUITES: dict[str, Suite] = {}
# what ``revjax eval`` and ``revjax compare`` run without ``--suite``/``--full``: bits per byte and the offline
# in-context suite, at most DEFAULT_MAX_PER_TASK examples per task (about two minutes on the default models, 2 cores)
DEFAULT_SUITES = ("bpb", "offline")
DEFAULT_MAX_PER_TASK = 50


def default_suite_names() -> list[str]:
    """The registered suites of :data:`DEFAULT_SUITES` (what ``--suite default`` runs)."""
    return [name for name in DEFAULT_SUITES if name in SUITES]


class SuiteChoices:
    """``--suite`` choices read live from :data:`SUITES`: ``first``, every row ``keep`` accepts, ``default``, ``all``."""

    def __init__(self, keep: Callable[["Suite"], bool] = lambda row: True, first: tuple[str, ...] = ()):
        self.keep, self.first = keep, first

    def __iter__(self):
        return iter([*self.first, *(name for name, row in SUITES.items() if self.keep(row)), "default", "all"])

    def __contains__(self, name: object) -> bool:
        return name in list(self)


def register_suite(suite: Suite) -> Suite:
    """Add ``suite`` to the table (``revjax eval --suite <name>``, compare, report and training then see it)."""
    if suite.name in SUITES:
        raise ValueError(f"a suite named {suite.name!r} is already registered")
    SUITES[suite.name] = suite
    return suite


def training_suites(chosen: str) -> list[Suite]:
    """The suites an in-training pass runs: those that always run, then the one ``training.core_suite`` names."""
    return [s for s in SUITES.values() if s.train is not None and (s.train_always or s.name == chosen)]


def compare_suites(chosen: str, config: Any, bundle: str | None) -> list[Suite]:
    """The suites ``revjax compare --suite chosen`` runs (``all``: every compare suite), each replaced by its
    fallback when it cannot run."""
    picked = [s for s in SUITES.values() if s.compare and chosen in (s.name, "all")]
    return [s if s.available(config, bundle) or s.fallback is None else SUITES[s.fallback] for s in picked]


def way_result(out: dict | None, way: str) -> dict:
    return ((out or {}).get("ways") or {}).get(way) or {}


# ------------------------------------------------------------------------------------------------ rendering


def fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def task_table(title: str, metric: str, per_way: dict[str, dict]) -> list[str]:
    """A markdown table of per-task accuracy and centered accuracy, a column pair per way."""
    ways = list(per_way)
    labels: list[str] = []
    for part in per_way.values():
        skipped = {**part.get("not_applicable", {}), **part.get("not_run", {})}
        labels += [t for t in [*part["tasks"], *skipped] if t not in labels]
    lines = [f"### {title}", "", "| task | " + " | ".join(f"{w} acc | {w} centered" for w in ways) + " |",
             "|---|" + "---:|---:|" * len(ways)]
    notes: dict[str, str] = {}
    for label in labels:
        cells = []
        for way in ways:
            task = per_way[way]["tasks"].get(label)
            if task is not None:
                cells += [fmt(task["accuracy"]), fmt(task["centered"])]
            else:
                reason = {**per_way[way].get("not_applicable", {}), **per_way[way].get("not_run", {})}.get(
                    label, "not run")
                notes[reason] = f"[{len(notes) + 1}]" if reason not in notes else notes[reason]
                cells += [f"n/a {notes[reason]}", ""]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"| **{metric}** | " + " | ".join(f" | **{fmt(per_way[w]['score'])}**" for w in ways) + " |")
    lines += [""] + [f"{mark} {reason}" for reason, mark in notes.items()] + ([""] if notes else [])
    return lines


def in_context_table(out: dict) -> list[str]:
    return task_table(out["suite"], out["suite"], out["ways"])


def in_context_scores(out: dict, way: str) -> dict:
    part = out["ways"].get(way)
    return {} if part is None else {out["suite"]: part["score"]}


def in_context_report(metric: str) -> Callable[[str, list[dict]], Rows]:
    def rows(way: str, parts: list[dict]) -> Rows:
        return [(metric, lambda p, s: p.get("score")),
                (f"{metric} (training hook)", lambda p, s: s["hook_scores"].get(f"{metric}/{way}"))]
    return rows


def in_context_train(load: Callable[[Any], tuple[str, list]]) -> Callable[[TrainingContext, Any], dict]:
    """A training hook body for an in-context suite whose ``(name, task specs)`` ``load(config)`` reads."""
    def train(context: TrainingContext, params: Any) -> dict:
        from revjax.eval.core import evaluate_tasks
        from revjax.eval.scorer import Scorer

        run, config = context.run, context.run.config
        if load not in context.cache:
            context.cache[load] = load(config)
        name, specs = context.cache[load]
        direction, tc = config.direction.direction, config.training
        scorer = Scorer(run.graphdef, params, pad_id=run.tokenizer.bos_id)
        out = evaluate_tasks(specs, name, scorer, run.tokenizer, direction, known_directions(direction),
                             max_per_task=tc.core_max_per_task if tc.core_max_per_task > 0 else None,
                             max_len=config.model.sequence_len, unit=config.direction.unit)
        row: dict = {}
        for way, part in out["ways"].items():
            row[f"{name}/{way}"] = part["score"]
            row.update({f"{name}/{way}/{label}": task["centered"] for label, task in part["tasks"].items()})
        return row
    return train


def validation_texts(config: Any, tokens: int, data: str | Path | None = None) -> list[str]:
    """The validation documents bits per byte reads: about 8 characters per token of the budget."""
    from revjax.eval.bpb import validation_documents

    return validation_documents(data or config.data_path(), 8 * tokens)


def directions_of(suite: Suite, direction: Direction, wanted: Sequence[Direction]) -> list[Direction]:
    """The ways of ``wanted`` that ``suite`` applies to for a ``direction`` model."""
    known = suite.directions(direction)
    return [w for w in wanted if w in known]



# ------------------------------------------------------------------------------------------------ built-in suites


def _bpb_evaluate(job: SuiteRun) -> dict:
    from revjax.eval.bpb import evaluate_bpb
    from revjax.eval.samples import greedy_samples

    run, config = job.run, job.run.config
    texts = validation_texts(config, job.bpb_tokens)
    out = evaluate_bpb(run.graphdef, run.params, run.tokenizer, run.direction, texts, ways=job.ways,
                       seq_len=config.model.sequence_len, max_tokens=job.bpb_tokens,
                       token_bytes_method=config.tokenizer.token_bytes, packing=config.data.val_packing,
                       packing_buffer=config.data.packing_buffer, unit=run.unit)
    job.tick("bpb")
    samples = greedy_samples(run.graphdef, run.params, run.tokenizer, run.direction, job.ways,
                             config.model.sequence_len, unit=run.unit)
    job.tick("samples")
    return {"suite": "bpb", "ways": {w: {**out[w], "samples": samples[w]} for w in out}}


def _bpb_train(context: TrainingContext, params: Any) -> dict:
    """Validation bits per byte in each direction the model knows, on the run's mesh and rows."""
    from revjax.eval.bpb import evaluate_bpb

    run, config = context.run, context.run.config
    tokens = config.training.eval_tokens
    if "texts" not in context.cache:
        context.cache["texts"] = validation_texts(config, tokens)
    ways = known_directions(config.direction.direction)
    out = evaluate_bpb(run.graphdef, params, run.tokenizer, config.direction.direction, context.cache["texts"],
                       ways=ways, seq_len=config.model.sequence_len, rows=run.local_rows, max_tokens=tokens,
                       packing=config.data.val_packing, packing_buffer=config.data.packing_buffer, mesh=run.mesh,
                       eval_step=context.eval_step(run), unit=config.direction.unit)
    return {f"val_bpb/{way}": part["bpb"] for way, part in out.items()}


def _bpb_render(out: dict) -> list[str]:
    lines = ["### validation bits per byte", "", "| direction | bpb | loss |", "|---|---:|---:|"]
    lines += [f"| {w} | {fmt(v['bpb'])} | {fmt(v['loss'])} |" for w, v in out["ways"].items()]
    for way, v in out["ways"].items():
        lines += ["", f"samples ({way}):"] + [f"- {s!r}" for s in v["samples"]]
    return lines


def _bpb_report(way: str, parts: list[dict]) -> Rows:
    return [("val bpb (training hook)", lambda p, s: s["hook_bpb"].get(way)),
            ("bpb (revjax eval)", lambda p, s: p.get("bpb"))]


def _core_evaluate(job: SuiteRun) -> dict:
    from revjax.eval.core import evaluate_core

    run = job.run
    return evaluate_core(run.scorer, run.tokenizer, run.direction, run.config.base_path(), ways=job.ways,
                         max_per_task=job.max_per_task, max_len=run.config.model.sequence_len, bundle=job.bundle,
                         progress=job.tick, unit=run.unit)


def _core_tasks(config: Any) -> tuple[str, list]:
    from revjax.eval.core import CORE_NAME, fetch_bundle, load_core_tasks

    return CORE_NAME, load_core_tasks(fetch_bundle(config.base_path()))


def _core_available(config: Any, bundle: str | None) -> bool:
    from revjax.eval.core import BUNDLE_DIR

    return ((Path(bundle) if bundle else config.base_path() / BUNDLE_DIR) / "core.yaml").is_file()


def _offline_evaluate(job: SuiteRun) -> dict:
    from revjax.eval.offline import evaluate_offline

    run = job.run
    return evaluate_offline(run.scorer, run.tokenizer, run.direction, ways=job.ways, max_per_task=job.max_per_task,
                            max_len=run.config.model.sequence_len, cache_dir=run.config.tasks_path(),
                            progress=job.tick, unit=run.unit)


def _offline_tasks(config: Any) -> tuple[str, list]:
    from revjax.eval.offline import OFFLINE_NAME, load_offline_tasks

    return OFFLINE_NAME, load_offline_tasks(cache_dir=config.tasks_path())


def _chat_evaluate(job: SuiteRun) -> dict:
    from revjax.eval.chat import evaluate_chat, load_chat_tasks

    run = job.run
    tasks, errors = load_chat_tasks(source=job.chat_source, cache_dir=run.config.tasks_path())
    return evaluate_chat(tasks, run.scorer, run.graphdef, run.params, run.tokenizer, run.direction, run.mode,
                         ways=job.ways, max_per_task=job.max_per_task, errors=errors, progress=job.tick,
                         unit=run.unit)


def _chat_render(out: dict) -> list[str]:
    lines = task_table("ChatCORE (asked and answered)", "ChatCORE", {w: v["answer"] for w, v in out["ways"].items()})
    lines += task_table("joint likelihood (every direction)", "ChatCORE-joint",
                        {w: v["joint"] for w, v in out["ways"].items()})
    return lines + [f"unavailable: {label}: {why}" for label, why in out.get("unavailable", {}).items()]


def _chat_scores(out: dict, way: str) -> dict:
    part = out["ways"].get(way)
    return {} if part is None else {"ChatCORE": part["answer"]["score"], "ChatCORE-joint": part["joint"]["score"]}


def _chat_report(way: str, parts: list[dict]) -> Rows:
    tasks = sorted({t for p in parts for t in p.get("answer", {}).get("tasks", {})})
    rows: Rows = [(f"{t} (accuracy)", lambda p, s, t=t: p.get("answer", {}).get("tasks", {}).get(t, {})
                   .get("accuracy")) for t in tasks]
    return rows + [("ChatCORE", lambda p, s: p.get("answer", {}).get("score")),
                   ("ChatCORE-joint", lambda p, s: p.get("joint", {}).get("score"))]


def _chat_steps(ways: int) -> int:
    from revjax.eval.chat import CHAT_TASKS

    return len(CHAT_TASKS) * ways


register_suite(Suite("bpb", _bpb_evaluate, _bpb_render, lambda out, way: {"bpb": way_result(out, way).get("bpb")},
                     _bpb_report, steps=lambda ways: 2, train=_bpb_train, train_always=True))
register_suite(Suite("core", _core_evaluate, in_context_table, in_context_scores, in_context_report("CORE"),
                     train=in_context_train(_core_tasks), compare=True, fallback="offline", in_context=True,
                     available=_core_available))
register_suite(Suite("offline", _offline_evaluate, in_context_table, in_context_scores,
                     in_context_report("OLMo-offline"), train=in_context_train(_offline_tasks), in_context=True))
register_suite(Suite("chat", _chat_evaluate, _chat_render, _chat_scores, _chat_report, steps=_chat_steps,
                     compare=True))


def _rerank_evaluate(job: SuiteRun) -> dict:
    from revjax.eval.rerank_cli import evaluate_suite

    return evaluate_suite(job)


def _rerank_render(out: dict) -> list[str]:
    from revjax.eval.rerank_cli import render_suite

    return render_suite(out)


register_suite(Suite("rerank", _rerank_evaluate, _rerank_render, lambda out, way: {}, lambda way, parts: [],
                     steps=lambda ways: 2, directions=lambda d: [] if d is Direction.BACKWARD else [Direction.FORWARD],
                     needs_reranker=True))
