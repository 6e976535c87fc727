"""An interrupted ``revjax chain`` resumes: killed with SIGKILL inside its SFT phase and run again, it skips the
phases that finished (its base phase is the earlier chain's identical base run, reused), continues SFT from its
newest checkpoint, and ends with exactly the losses, validation figures and rewards of a chain that was never
interrupted."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import make_corpus
from tests.helpers import phase_overrides as overrides

REPO = Path(__file__).resolve().parents[1]
PHASES = ("base", "mid", "sft", "rl")
SFT_STEPS = 16  # long enough that the kill lands inside SFT on a fast machine too
CHAIN = {  # every phase 4 steps, SFT 16, RL 2, a checkpoint every 2 steps
    "training.num_iterations": 4, "checkpoint.save_every": 2, "training.device_batch_size": 8,
    "chain.sft": f"{{training.num_iterations: {SFT_STEPS}}}", "chain.rl": "{training.num_iterations: 2}",
    "rl.num_samples": 2, "rl.max_new_tokens": 8, "rl.eval_prompts": 2, "rl.eval_samples": 2,
    "tasks.rl": "[{task: sums, size: 16}]", "tasks.rl_val": "[{task: sums, split: test, size: 2}]",
}
MEASURED = ("loss", "scored_tokens", "lr_multiplier", "muon_momentum", "grad_norm", "reward", "pass_at_k", "val_bpb",
            "val_loss", "val_reward", "val_pass@2")


def start(base: Path, run: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device, as `revjax chain` runs by default
    return subprocess.Popen([sys.executable, "-m", "revjax.cli", "chain", *overrides(base, run, **CHAIN)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    return out


def measured(run_dir: Path) -> list[dict]:
    """The metrics log without its timings: what each step and evaluation measured."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k == "step" or k in MEASURED} for row in rows]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 480) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the chain ended before {path} appeared:\n{proc.communicate()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout:.0f} s")
        time.sleep(0.005)


@pytest.mark.slow
def test_chain_killed_during_sft_resumes_to_the_uninterrupted_result(tmp_path):
    base = make_corpus(tmp_path)
    checkpoints = base / "checkpoints"
    reference = finish(start(base, "whole"))
    assert "| rl | 2 |" in reference

    proc = start(base, "cut")
    sft_dir = checkpoints / "cut-forward-sft"
    wait_for(sft_dir / "2" / "commit_success.txt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(int(p.name) for p in sft_dir.iterdir() if p.name.isdigit())
    assert saved and SFT_STEPS not in saved and not (checkpoints / "cut-forward-rl").exists()
    # the base phase's config equals the whole chain's but for its name: the chain reuses that run, not training it
    folders = {"base": checkpoints / "whole-forward-base", "mid": checkpoints / "cut-forward-mid"}
    assert not (checkpoints / "cut-forward-base").exists()
    finished_before = {phase: sorted(p.name for p in folder.iterdir()) for phase, folder in folders.items()}

    again = finish(start(base, "cut"))
    assert f"cut-forward-base: {folders['base']} finished the same training" in again
    assert "cut-forward-mid: already finished, skipped" in again
    resumed = re.search(rf"resuming {re.escape(str(sft_dir))} from step (\d+)", again)
    assert resumed and int(resumed.group(1)) in saved, again
    assert f"starting {checkpoints / 'cut-forward-rl'} from the parameters of {sft_dir}" in again
    for phase, folder in folders.items():  # nothing of a finished phase was trained or written again
        assert sorted(p.name for p in folder.iterdir()) == finished_before[phase]
    for phase in PHASES[1:]:
        whole, cut = measured(checkpoints / f"whole-forward-{phase}"), measured(checkpoints / f"cut-forward-{phase}")
        assert cut == whole, phase
    assert any("reward" in row for row in measured(checkpoints / "cut-forward-rl"))
