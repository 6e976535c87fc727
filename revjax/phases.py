"""The one table of phase facts: what base, mid, SFT and RL training each read, optimise and export to.

Pure data, so every floor may ask it (the loop, export and import). The names in ``data`` and ``loss`` are resolved
to implementations by :mod:`revjax.train`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ScheduleKind = Literal["base", "mid", "linear"]
PhaseName = Literal["base", "mid", "sft", "rl"]  # the keys of PHASES (training.phase)


@dataclass(frozen=True)
class Phase:
    name: str
    data: Literal["documents", "conversations-packed", "conversations-padded", "rollouts"]
    loss: Literal["next_token", "policy_gradient"]
    schedule: ScheduleKind  # revjax.optim.lr_multiplier's kind
    ramp_momentum: bool  # Muon momentum warms up (base, mid) or stays at optimizer.muon_momentum (SFT, RL)
    export_dir: str  # onanchat's checkpoint folder for this phase
    conversations: bool  # reads a task mixture (phase.tasks) rather than the document corpus


PHASES: dict[str, Phase] = {
    "base": Phase("base", "documents", "next_token", "base", True, "base_checkpoints", False),
    "mid": Phase("mid", "conversations-packed", "next_token", "mid", True, "mid_checkpoints", True),
    "sft": Phase("sft", "conversations-padded", "next_token", "linear", False, "chatsft_checkpoints", True),
    "rl": Phase("rl", "rollouts", "policy_gradient", "linear", False, "chatrl_checkpoints", True),
}
EXPORT_DIRS = {name: phase.export_dir for name, phase in PHASES.items()}
