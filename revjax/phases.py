"""The one table of phase facts: what base, mid, SFT and RL training each read, optimise, accept and export to.

Pure data, so every floor may ask it (the config layer, the loop, export, import and the report). A row names its
data source (a key of :data:`revjax.train.sources.DATA_SOURCES`), its loss (a key of :data:`revjax.train.step.LOSSES`),
its learning-rate schedule (:func:`revjax.optim.lr_multiplier`'s kind), whether Muon's momentum warms up, the
directions and conversation modes it trains, and onanchat's checkpoint folder it exports to. A new phase is one
:func:`register_phase` call (plus, for a chain, ``configs/phase/<name>.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Mapping

ScheduleKind = Literal["base", "mid", "linear"]
PhaseName = Literal["base", "mid", "sft", "rl"]  # the built-in keys of PHASES (training.phase)
DIRECTIONS = ("forward", "backward", "bidirectional")
MODES = ("turn", "sequence")
ALL_PAIRS = tuple((d, m) for d in DIRECTIONS for m in MODES)


@dataclass(frozen=True)
class Phase:
    name: str
    data: str  # the data source: "documents", "conversations-packed", "conversations-padded", "rollouts", …
    loss: str  # "next_token" or "policy_gradient" (revjax.train.step.LOSSES)
    schedule: ScheduleKind  # revjax.optim.lr_multiplier's kind
    ramp_momentum: bool  # Muon momentum warms up (base, mid) or stays at optimizer.muon_momentum (SFT, RL)
    export_dir: str  # onanchat's checkpoint folder for this phase
    conversations: bool  # reads a task mixture (tasks.*) rather than the document corpus
    accepts: tuple[tuple[str, str], ...] = ALL_PAIRS  # the (direction, conversation mode) pairs it trains
    refusal: str = ""  # why a pair it does not accept cannot train, and what to do instead (one sentence)

    def refuses(self, direction: str, mode: str) -> str | None:
        """The sentence saying why a ``direction`` model in conversation ``mode`` cannot train this phase, or None."""
        if (direction, mode) in self.accepts:
            return None
        return self.refusal or (f"the {self.name} phase does not train a {direction} model in {mode} mode; use one "
                                f"of {', '.join(f'{d}/{m}' for d, m in self.accepts)}")


RL_REFUSAL = ("RL needs a model that writes answers, but a sequence-mode backward model writes the question that "
              "precedes an answer; train it with direction.conversation=turn (or use forward or bidirectional)")

PHASES: dict[str, Phase] = {}


def register_phase(phase: Phase) -> Phase:
    """Add ``phase`` to the table (``training.phase=<name>`` then selects it); a name is registered once."""
    if phase.name in PHASES:
        raise ValueError(f"a phase named {phase.name!r} is already registered")
    PHASES[phase.name] = phase
    return phase


def phase_order(name: str) -> int:
    """The position of phase ``name`` in the table (base → mid → SFT → RL → later registrations); unknown last."""
    return list(PHASES).index(name) if name in PHASES else len(PHASES)


class _ExportDirs(Mapping[str, str]):
    """Phase name → onanchat's checkpoint folder, read live from the table (registered phases included)."""

    def __getitem__(self, name: str) -> str:
        return PHASES[name].export_dir

    def __iter__(self) -> Iterator[str]:
        return iter(PHASES)

    def __len__(self) -> int:
        return len(PHASES)


register_phase(Phase("base", "documents", "next_token", "base", True, "base_checkpoints", False))
register_phase(Phase("mid", "conversations-packed", "next_token", "mid", True, "mid_checkpoints", True))
register_phase(Phase("sft", "conversations-padded", "next_token", "linear", False, "chatsft_checkpoints", True))
register_phase(Phase("rl", "rollouts", "policy_gradient", "linear", False, "chatrl_checkpoints", True,
                     accepts=tuple(p for p in ALL_PAIRS if p != ("backward", "sequence")), refusal=RL_REFUSAL))
EXPORT_DIRS: Mapping[str, str] = _ExportDirs()  # interop's export and import read it
