"""Phase chains: base → mid → SFT → RL for one direction, each phase a resumable run started from the previous one.

Phase ``p`` of run ``NAME`` in direction ``D`` is the run ``NAME-D-p``: its config is the run's files, then ``configs/phase/<p>.yaml``,
then the run's overrides, then ``chain.<p>`` (e.g. the step counts of a small default), and it starts from the
previous phase's run folder (``training.init_from``), so it inherits the direction, the conversation mode and the
tokenizer, and records its parent. A phase whose last checkpoint says it finished is skipped (what it measured is
read back from its ``result.json``); an unfinished one continues from its checkpoint. The first phase is not trained
when a finished run beside it (``revjax quickstart``'s ``NAME-D``) has the same resolved config but for
``run_name``, ``checkpoint.dir`` and ``logging.*``: the chain points at that run folder (no copy), and the next
phase starts from it. A phase whose row refuses the chain's direction and mode is skipped (a
``sequence``-mode backward model skips RL: it writes questions, not answers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from revjax.checkpoint import Checkpointer
from revjax.config import Config, load_config
from revjax.config_args import find_config
from revjax.phases import PHASES
from revjax.train.loop import RunResult, train


@dataclass
class PhaseOutcome:
    phase: str
    run_dir: Path
    result: RunResult | None  # None when the phase cannot run (or finished before recording its result)
    note: str = ""  # "finished earlier", "reused …", "skipped: …"


def _comparable(config: dict) -> dict | None:
    """A resolved config (absolute paths) without what names or logs a run rather than what it trains."""
    try:
        data = Config.from_dict(config).with_absolute_paths().to_dict()
    except Exception:  # noqa: BLE001 (an old or foreign metadata config: not comparable)
        return None
    data.pop("run_name", None)
    data.pop("logging", None)
    data["checkpoint"].pop("dir", None)
    return data


def finished_metadata(run_dir: Path) -> dict | None:
    """The newest checkpoint's metadata of the run folder when it says the run finished, else None."""
    if not run_dir.is_dir() or not any(p.name.isdigit() for p in run_dir.iterdir()):
        return None
    with Checkpointer(run_dir) as checkpointer:
        step = checkpointer.latest_step()
        meta = checkpointer.metadata(step) if step is not None else {}
    return meta if meta.get("finished") else None


def equivalent_run(config: Config, preferred: Sequence[str] = ()) -> Path | None:
    """A finished run folder beside ``config``'s whose resolved config is ``config``'s but for ``run_name``,
    ``checkpoint.dir`` and ``logging.*`` (the folders named in ``preferred`` are tried first), or None."""
    target = config.checkpoint_path()
    if not target.parent.is_dir():
        return None
    wanted = _comparable(config.to_dict())
    folders = sorted(p for p in target.parent.iterdir() if p.is_dir() and p != target)
    folders.sort(key=lambda p: p.name not in preferred)
    for folder in folders:
        meta = finished_metadata(folder)
        if meta is not None and meta.get("phase", "base") == config.training.phase \
                and _comparable(meta.get("config") or {}) == wanted:
            return folder
    return None


def phase_config(files: Sequence[Path], overrides: Sequence[str], phase: str, parent: Path | None) -> Config:
    """The config of ``phase`` in the chain of ``files`` + ``overrides``."""
    chain = load_config(files, overrides)
    extra = [f"{key}={json.dumps(value)}" for key, value in getattr(chain.chain, phase).items()]
    extra += [f"run_name={chain.run_name}-{chain.direction.direction}-{phase}", f"training.phase={phase}"]
    if parent is not None:
        extra.append(f"training.init_from={parent}")
    return load_config([*files, find_config(f"phase/{phase}")], [*overrides, *extra])


def finished(config: Config) -> bool:
    """Whether the run's newest checkpoint is its final step."""
    run_dir = config.checkpoint_path()
    if not run_dir.is_dir():
        return False
    with Checkpointer(run_dir) as checkpointer:
        step = checkpointer.latest_step()
        return step is not None and bool(checkpointer.metadata(step).get("finished"))


def run_chain(files: Sequence[Path], overrides: Sequence[str]) -> list[PhaseOutcome]:
    """Run (or continue) every phase of ``chain.phases``; stops after a phase interrupted by a signal."""
    outcomes: list[PhaseOutcome] = []
    parent = None
    chain = load_config(files, overrides)
    for phase in chain.chain.phases:
        refusal = PHASES[phase].refuses(chain.direction.direction, chain.direction.conversation)
        if refusal:  # the phase's row does not train this direction and mode
            run_dir = chain.checkpoint_path().with_name(f"{chain.run_name}-{chain.direction.direction}-{phase}")
            outcomes.append(PhaseOutcome(phase, run_dir, None, f"skipped: {refusal}"))
            continue
        config = phase_config(files, overrides, phase, parent)
        run_dir = config.checkpoint_path()
        same = None if parent is not None or finished(config) else equivalent_run(
            config, [f"{chain.run_name}-{chain.direction.direction}"])
        if same is not None:
            print(f"{config.run_name}: {same} finished the same training (same config but for its name and "
                  f"logging); the chain starts from it, not training {phase} again")
            outcomes.append(PhaseOutcome(phase, same, RunResult.load(same), f"reused {same.name}"))
            run_dir = same
        elif finished(config):
            print(f"{config.run_name}: already finished, skipped")
            outcomes.append(PhaseOutcome(phase, run_dir, RunResult.load(run_dir), "finished earlier"))
        else:
            print(f"\n== {config.run_name} ({phase}) ==")
            result = train(config)
            outcomes.append(PhaseOutcome(phase, run_dir, result))
            if result.interrupted:
                break
        parent = run_dir
    return outcomes


def first_evaluation(run_dir: Path, keys: Sequence[str]) -> dict | None:
    """The first row of the run's metrics log that holds all of ``keys`` (e.g. RL's evaluation before training)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if all(k in row for k in keys):
            return row
    return None


def scored_turns(run_dir: Path) -> str:
    """``", scores the … turns"``: which turns a conversation phase's loss (and so its val loss and bpb) reads, from
    the run's config (a backward model in sequence mode writes, so is scored on, the questions); "" when unknown."""
    try:
        with Checkpointer(run_dir) as checkpointer:
            step = checkpointer.latest_step()
            config = (checkpointer.metadata(step) if step is not None else {}).get("config") or {}
    except Exception:  # noqa: BLE001 (no checkpoint there: nothing to say)
        return ""
    section = config.get("direction") or {}
    direction, mode = section.get("direction"), section.get("conversation")
    if direction is None:
        return ""
    if section.get("loss_mask", "generated") == "assistant" or mode != "sequence" or direction == "forward":
        return " (scores the assistant turns)"
    if direction == "backward":
        return " (scores the user turns: a sequence-mode backward model writes the questions)"
    return " (scores the assistant turns read forward, the user turns read backward)"


def summary_table(outcomes: list[PhaseOutcome]) -> str:
    """One markdown row per phase: steps, what it measured (RL: before → after), seconds."""
    lines = ["| phase | steps | measured | seconds | run |", "|---|---|---|---|---|"]
    for o in outcomes:
        r = o.result
        if r is None:
            lines.append(f"| {o.phase} | | {o.note} | | {o.run_dir} |")
            continue
        label = o.phase + (f" ({o.note})" if o.note else "")
        if r.evals:
            names = [k for k in r.evals if k != "step"]
            first = first_evaluation(o.run_dir, names)
            if first is not None and first.get("step") != r.evals["step"]:
                measured = ", ".join(f"{k} {first[k]:.3f} → {r.evals[k]:.3f}" for k in names)
            else:
                measured = ", ".join(f"{k} {r.evals[k]:.3f}" for k in names)
        else:
            measured = "val bpb n/a" if r.val_bpb is None else f"val bpb {r.val_bpb:.4f}"
            measured += f", val loss {r.val_loss:.4f}" if r.val_loss else ""
            measured += scored_turns(o.run_dir) if PHASES.get(o.phase) and PHASES[o.phase].conversations else ""
        lines.append(f"| {label} | {r.step} | {measured} | {r.seconds:.0f} | {o.run_dir} |")
    return "\n".join(lines)
