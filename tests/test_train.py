"""The training loop: metrics, checkpoints, bitwise resume after SIGKILL, SIGTERM, NaN stop, mismatch refusal."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from revjax.checkpoint import Checkpointer, CheckpointMismatch
from revjax.config import load_config
from revjax.train.loop import TrainingError, train
from tests.helpers import SAVE_EVERY, STEPS, base  # noqa: F401  (base: the tiny corpus and tokenizer fixture)
from tests.helpers import train_overrides as overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference(base):
    return train(load_config(overrides=overrides(base, "reference")))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_logs_evaluates_samples_and_checkpoints(reference):
    assert sorted(reference.losses) == list(range(STEPS))
    assert reference.losses[STEPS - 1] < reference.losses[0]
    rows = metrics(reference.run_dir)
    assert [r["step"] for r in rows if "loss" in r] == list(range(STEPS))
    assert [r["step"] for r in rows if "val_bpb" in r] == [0, 4, 8]
    assert 0 < reference.val_bpb < rows[0]["val_bpb"]
    assert len(reference.samples["forward"]) == 3 and all(isinstance(s, str) for s in reference.samples["forward"])
    checkpoints = Checkpointer(reference.run_dir)
    assert checkpoints.steps() == [6, 8]
    meta = checkpoints.metadata(8)
    assert meta["direction"] == "forward" and meta["step"] == 8 and meta["val_bpb"] == pytest.approx(reference.val_bpb)
    assert meta["model_config"]["n_layer"] == 2 and meta["config"]["training"]["num_iterations"] == STEPS


def run_cli(base: Path, run: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "revjax.train", *overrides(base, run)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.stdout.read()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("training did not get far enough in time")
        time.sleep(0.2)


def logged_steps(run_dir: Path) -> set[int]:
    path = run_dir / "metrics.jsonl"
    return {r["step"] for r in metrics(run_dir) if "loss" in r} if path.exists() else set()


def test_resume_after_sigkill_is_bitwise_exact(base, reference):
    run_dir = base / "checkpoints" / "killed"
    proc = run_cli(base, "killed")
    wait_for(lambda: SAVE_EVERY + 1 in logged_steps(run_dir) and (run_dir / str(SAVE_EVERY)).is_dir(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = train(load_config(overrides=overrides(base, "killed")))
    first = min(resumed.losses)
    assert first > 0 and first % SAVE_EVERY == 0  # continued from a checkpoint, not from scratch
    for step, loss in resumed.losses.items():
        assert loss == reference.losses[step], f"step {step}"
    assert resumed.val_bpb == reference.val_bpb
    assert [r["step"] for r in metrics(run_dir) if "loss" in r] == list(range(STEPS))  # no step logged twice


def test_sigterm_saves_and_exits_cleanly(base, reference):
    run_dir = base / "checkpoints" / "terminated"
    proc = run_cli(base, "terminated")
    wait_for(lambda: 2 in logged_steps(run_dir), proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out  # unfinished, as schedulers and sweep runners must see
    assert "stopped at step" in out
    stopped = Checkpointer(run_dir).latest_step()
    assert 2 < stopped < STEPS
    resumed = train(load_config(overrides=overrides(base, "terminated")))
    assert min(resumed.losses) == stopped
    assert all(loss == reference.losses[step] for step, loss in resumed.losses.items())


def test_nan_loss_stops_and_keeps_last_good_checkpoint(base, reference):
    config = load_config(overrides=overrides(base, "reference", **{
        "training.num_iterations": STEPS + 4, "optimizer.embedding_lr": 1e30, "optimizer.unembedding_lr": 1e30,
        "optimizer.matrix_lr": 1e30}))
    with pytest.raises(TrainingError, match=r"(the loss became (nan|inf)|the parameters became non-finite) at step \d+; stopped without saving.*step 8"):
        train(config)
    assert Checkpointer(reference.run_dir).latest_step() == STEPS


def test_direction_or_tokenizer_change_is_refused_unless_forced(base, reference):
    shutil.copytree(reference.run_dir, base / "checkpoints" / "copy")
    backward = overrides(base, "copy", **{"direction.direction": "backward", "training.num_iterations": STEPS})
    with pytest.raises(CheckpointMismatch, match="direction"):
        train(load_config(overrides=backward))
    forced = train(load_config(overrides=backward + ["checkpoint.force=true"]))
    assert forced.step == STEPS


def test_two_processes_reproduce_the_single_process_run(base, reference):
    """2 processes × 4 CPU devices (jax.distributed on localhost) = the 8-device run, data slices included."""
    import portpicker

    port = portpicker.pick_unused_port()
    procs = []
    for pid in range(2):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
               "REVJAX_COORDINATOR": f"127.0.0.1:{port}", "REVJAX_NUM_PROCESSES": "2", "REVJAX_PROCESS_ID": str(pid)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "revjax.train", *overrides(base, "multihost", **{"training.sample_every": 0})],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    rows = metrics(base / "checkpoints" / "multihost")
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == list(range(STEPS))
    for step, loss in losses.items():
        assert loss == pytest.approx(reference.losses[step], rel=1e-5, abs=1e-6), f"step {step}"
    bpbs = [r["val_bpb"] for r in rows if "val_bpb" in r]
    assert bpbs[-1] == pytest.approx(reference.val_bpb, rel=1e-5)


def test_wandb_is_optional_with_a_clear_message(monkeypatch, tmp_path):
    from revjax.errors import MissingDependency
    from revjax.tracking import WandbTracker

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    with pytest.raises(MissingDependency, match=r"install it with pip install 'revjax\[wandb\]'"):
        WandbTracker(project="p", name="n", mode="offline", directory=tmp_path, config={})


def test_a_phase_starts_from_another_runs_parameters(base, reference):
    child = train(load_config(overrides=overrides(base, "child", **{
        "training.init_from": reference.run_dir, "training.num_iterations": 2,
        "training.eval_every": 100, "training.sample_every": 0})))
    first = metrics(child.run_dir)[0]
    assert first["step"] == 0 and first["val_bpb"] == pytest.approx(reference.val_bpb, rel=1e-6)
    parent = Checkpointer(child.run_dir).metadata(2)["parent"]
    assert parent == {"run": str(reference.run_dir), "step": STEPS, "phase": "base"}
    with pytest.raises(CheckpointMismatch, match="direction"):
        train(load_config(overrides=overrides(base, "mid-backward", **{
            "training.init_from": reference.run_dir, "direction.direction": "backward"})))
