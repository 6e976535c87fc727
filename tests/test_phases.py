"""Mid-training and SFT through the one training loop: the loss, LR and momentum each step receives, pinned against
hand computations; chat samples in every direction; resuming from a chosen step."""

import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from revjax.checkpoint import Checkpointer
from revjax.config import load_config
from revjax.model import GPT
from revjax.tokenizer import Tokenizer
from revjax.train.data import conversation_source, row_batches
from revjax.phases import PHASES
from revjax.train.loop import train
from tests.helpers import make_corpus
from tests.helpers import phase_overrides as overrides

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("phases"))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_rows(run_dir: Path) -> list[dict]:
    return [r for r in metrics(run_dir) if "loss" in r]


@pytest.fixture(scope="module")
def sft(base):
    return train(load_config(overrides=overrides(base, "sft", **{"training.phase": "sft",
                                                                 "checkpoint.save_every": 2})))


def test_sft_loss_is_the_mean_over_scored_targets_only(base, sft):
    """Step 0's loss, recomputed by hand from the fresh model's logits on the first SFT step batch."""
    config = load_config(overrides=overrides(base, "sft", **{"training.phase": "sft"}))
    tokenizer = Tokenizer.load(base / "tokenizer")
    rows = row_batches(config, PHASES["sft"], tokenizer, "train", 8, source=conversation_source(config, "train"))
    inputs, targets = next(rows)
    rows.close()
    model = GPT(config.model, rngs=nnx.Rngs(config.training.seed))
    logits = np.asarray(model(inputs), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    scored = targets >= 0
    assert 0 < scored.sum() < scored.size / 2  # SFT scores a minority of positions
    nll = -np.take_along_axis(logp, np.maximum(targets, 0)[..., None], -1)[..., 0]
    expected = nll[scored].sum() / scored.sum()
    first = step_rows(sft.run_dir)[0]
    assert first["scored_tokens"] == scored.sum()
    assert first["loss"] == pytest.approx(expected, rel=1e-5)


# By hand: base with warmup 0.5 and warmdown 0.5 of 4 steps: (0+1)/2, 1, 1, (4−3)/2; mid over 8 steps: 1 until
# progress 0.8, then 1 − (7/8 − 0.8)/0.2 = 0.625; SFT: 1 − s/4. Muon momentum ramps 0.85 → 0.95 over 4 steps in base
# and mid, and stays 0.95 in SFT.
SCHEDULES = {
    "base": ({"schedule.warmup_ratio": 0.5, "schedule.warmdown_ratio": 0.5}, [0.5, 1.0, 1.0, 0.5],
             [0.85, 0.875, 0.9, 0.925]),
    "mid": ({"training.num_iterations": 8}, [1.0] * 7 + [0.625], [0.85, 0.875, 0.9, 0.925] + [0.95] * 4),
    "sft": ({}, [1.0, 0.75, 0.5, 0.25], [0.95] * 4),
}


@pytest.mark.parametrize("phase", sorted(SCHEDULES))
def test_each_step_receives_the_schedules_lr_and_momentum(base, sft, phase):
    extra, lrs, momenta = SCHEDULES[phase]
    if phase == "sft":
        run_dir = sft.run_dir
    else:
        run_dir = train(load_config(overrides=overrides(base, phase, **{"training.phase": phase, **extra}))).run_dir
    rows = step_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(len(lrs)))
    assert [r["lr_multiplier"] for r in rows] == pytest.approx(lrs, abs=1e-7)
    assert [r["muon_momentum"] for r in rows] == pytest.approx(momenta, abs=1e-7)


def test_sft_resumes_from_a_chosen_step_exactly(base, sft):
    losses = {r["step"]: r["loss"] for r in step_rows(sft.run_dir)}
    assert Checkpointer(sft.run_dir).steps() == [2, 4]
    with pytest.warns(UserWarning, match="moved checkpoint step 4"):
        again = train(load_config(overrides=overrides(base, "sft", **{"training.phase": "sft",
                                                                       "checkpoint.save_every": 2,
                                                                       "checkpoint.resume_step": 2})))
    assert sorted(again.losses) == [2, 3]
    assert all(again.losses[s] == losses[s] for s in (2, 3))
    assert any(p.name.startswith("4-superseded-") for p in (sft.run_dir / "set-aside").iterdir())


@pytest.mark.parametrize("direction,mode", [("backward", "sequence"), ("backward", "turn"), ("bidirectional", "turn")])
def test_chat_phases_sample_in_reading_order_for_every_direction(base, direction, mode):
    result = train(load_config(overrides=overrides(base, f"sft-{direction}-{mode}", **{
        "training.phase": "sft", "direction.direction": direction, "direction.conversation": mode,
        "training.num_iterations": 2, "training.sample_every": 2})))
    assert result.val_loss is not None and np.isfinite(result.val_loss)
    ways = ["forward", "backward"] if direction == "bidirectional" else [direction]
    assert sorted(result.samples) == sorted(ways)
    backward = result.samples["backward"]
    given = "12 + 7 = 19. #### 19" if mode == "sequence" else "What is 12 plus 7?"
    assert backward[0].startswith(given + " → ") and "<|" not in "".join(backward)


def test_rl_logs_rewards_and_pass_at_k_and_resumes_its_prompt_position(base):
    rl = {"training.phase": "rl", "direction.direction": "bidirectional", "direction.conversation": "turn",
          "rl.num_samples": 2, "rl.max_new_tokens": 8, "tasks.rl": "[{task: arithmetic, size: 32}]",
          "tasks.rl_val": "[{task: arithmetic, split: test, size: 4}]", "rl.eval_prompts": 4, "rl.eval_samples": 2,
          "training.num_iterations": 3, "training.eval_every": 3, "checkpoint.save_every": 2}
    result = train(load_config(overrides=overrides(base, "rl", **rl)))
    rows = step_rows(result.run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2] and all(0 <= r["reward"] <= 1 for r in rows)
    # RL: linear to 0 over 3 steps, Muon momentum constant (no ramp)
    assert [r["lr_multiplier"] for r in rows] == pytest.approx([1.0, 2 / 3, 1 / 3], abs=1e-7)
    assert [r["muon_momentum"] for r in rows] == pytest.approx([0.95] * 3, abs=1e-7)
    assert set(result.evals) == {"val_pass@2", "val_reward", "step"} and result.evals["step"] == 3
    meta = Checkpointer(result.run_dir).metadata(2)
    assert meta["phase"] == "rl"
    # 8 rows per step (512 tokens / T 64) = 4 prompts × 2 samples: step 2's data state is 2 steps of prompts in
    data = json.loads((result.run_dir / "2" / "data" / "metadata").read_text())["data_state"]
    assert data == {"kind": "rl", "position": 8, "steps": 2}


def test_chain_skips_finished_phases_and_each_phase_starts_from_its_parent(base):
    from revjax.train.chain import run_chain, summary_table

    args = overrides(base, "chain", **{"training.num_iterations": 2, "chain.phases": "[base]"})
    [first] = run_chain([], args)
    assert first.result.step == 2 and first.run_dir.name == "chain-forward-base"
    outcomes = run_chain([], args + ["chain.phases=[base, sft]", "chain.sft={training.num_iterations: 2}"])
    assert [o.phase for o in outcomes] == ["base", "sft"]
    # a finished phase is skipped, what it measured read back from its result.json
    assert outcomes[0].note == "finished earlier" and outcomes[0].result.val_bpb == first.result.val_bpb
    sft = outcomes[1]
    assert sft.result.step == 2 and sft.run_dir.name == "chain-forward-sft"
    parent = Checkpointer(sft.run_dir).metadata(2)["parent"]
    assert parent == {"run": str(first.run_dir), "step": 2, "phase": "base"}
    assert Checkpointer(sft.run_dir).metadata(2)["finished"] is True
    table = summary_table(outcomes)
    assert f"| base (finished earlier) | 2 | val bpb {first.result.val_bpb:.4f}" in table
    assert "| sft | 2 | val bpb" in table and "(scores the assistant turns)" in table
    backward = run_chain([], args + ["chain.phases=[rl]", "direction.direction=backward"])
    assert backward[0].result is None and "sequence-mode backward" in backward[0].note


def test_chain_points_at_a_finished_run_with_the_same_config_instead_of_training_it_again(base, capsys):
    from revjax.train.chain import run_chain, summary_table

    args = overrides(base, "quick", **{"training.num_iterations": 2, "chain.phases": "[base]"})
    made = train(load_config(overrides=[*args, "run_name=quick-forward", "logging.log_every=2"]))  # as quickstart
    [reused] = run_chain([], args)
    assert reused.run_dir == made.run_dir and reused.note == "reused quick-forward"
    assert reused.result.val_bpb == made.val_bpb and not made.run_dir.with_name("quick-forward-base").exists()
    assert f"| base (reused quick-forward) | 2 | val bpb {made.val_bpb:.4f}" in summary_table([reused])
    other = run_chain([], [*args, "training.seed=7"])[0]  # another config trains its own base run
    assert other.run_dir.name == "quick-forward-base" and other.note == ""


def test_chain_table_gives_rl_evaluations_before_and_after(tmp_path):
    from revjax.train.chain import PhaseOutcome, summary_table
    from revjax.train.loop import RunResult

    rows = [{"step": 0, "val_pass@4": 0.25, "val_reward": 0.125}, {"step": 0, "loss": 0.5, "reward": 0.1},
            {"step": 20, "val_pass@4": 0.5, "val_reward": 0.375}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = RunResult(tmp_path, 20, evals={"val_pass@4": 0.5, "val_reward": 0.375, "step": 20}, seconds=12.3)
    table = summary_table([PhaseOutcome("rl", tmp_path, result)])
    assert f"| rl | 20 | val_pass@4 0.250 → 0.500, val_reward 0.125 → 0.375 | 12 | {tmp_path} |" in table
