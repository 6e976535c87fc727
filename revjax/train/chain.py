"""Phase chains: base → mid → SFT → RL for one direction, each phase a resumable run started from the previous one.

Phase ``p`` of run ``NAME`` in direction ``D`` is the run ``NAME-D-p``: its config is the run's files, then ``configs/phase/<p>.yaml``,
then the run's overrides, then ``chain.<p>`` (e.g. the step counts of a small default), and it starts from the
previous phase's run folder (``training.init_from``), so it inherits the direction, the conversation mode and the
tokenizer, and records its parent. A phase whose last checkpoint says it finished is skipped; an unfinished one
continues from its checkpoint. A phase whose row refuses the chain's direction and mode is skipped (a
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
    result: RunResult | None  # None when the phase had already finished (skipped) or cannot run
    note: str = ""


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
        if finished(config):
            print(f"{config.run_name}: already finished, skipped")
            outcomes.append(PhaseOutcome(phase, run_dir, None, "finished earlier"))
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


def summary_table(outcomes: list[PhaseOutcome]) -> str:
    """One markdown row per phase: steps, what it measured (RL: before → after), seconds."""
    lines = ["| phase | steps | measured | seconds | run |", "|---|---|---|---|---|"]
    for o in outcomes:
        r = o.result
        if r is None:
            lines.append(f"| {o.phase} | | {o.note} | | {o.run_dir} |")
            continue
        if r.evals:
            names = [k for k in r.evals if k != "step"]
            first = first_evaluation(o.run_dir, names)
            if first is not None and first.get("step") != r.evals["step"]:
                measured = ", ".join(f"{k} {first[k]:.3f} → {r.evals[k]:.3f}" for k in names)
            else:
                measured = ", ".join(f"{k} {r.evals[k]:.3f}" for k in names)
        else:
            measured = f"val bpb {r.val_bpb:.4f}" + (f", val loss {r.val_loss:.4f}" if r.val_loss else "")
        lines.append(f"| {o.phase} | {r.step} | {measured} | {r.seconds:.0f} | {o.run_dir} |")
    return "\n".join(lines)
