"""RL: advantages, pass@k, the rollout rows and the policy-gradient loss against hand computations; the refusal of
sequence-mode backward models; the reward of a tiny model rising on small sums."""

import json

import numpy as np
import pytest
from flax import nnx

from revjax.config import ModelConfig, load_config
from revjax.data.shards import write_shards
from revjax.tasks import TaskError, get_task
from revjax.tokenizer import train_tokenizer
from revjax.train.loop import train
from revjax.model import GPT
from revjax.direction import Direction
from revjax.train.rl import advantages, check_rl_direction, pass_at_k, prompt_contents, prompt_way, rollout_rows
from revjax.train.errors import TrainingError
from revjax.train.step import policy_gradient_loss


def test_advantage_is_reward_minus_the_prompts_mean():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]], np.float32)
    np.testing.assert_allclose(advantages(rewards), [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0],
                                                     [0.25, 0.25, 0.25, -0.75]])
    assert pass_at_k(rewards > 0) == pytest.approx(2 / 3)


def test_rollout_rows_score_the_sampled_tokens_weighed_by_their_advantage():
    prompts = [[1, 2, 3], [4, 5]]
    replies = [[6, 7, 99], [8, 99], [9, 100, 101, 99], [10, 11, 12, 13, 14]]  # two samples per prompt
    sampled = [np.ones(3, bool), np.ones(2, bool), np.array([1, 0, 0, 1], bool), np.ones(5, bool)]
    adv = np.array([[0.5, -0.5], [0.25, -0.25]], np.float32)
    inputs, targets, weights = rollout_rows(prompts, replies, sampled, adv, T=5)
    assert inputs.tolist() == [[1, 2, 3, 6, 7], [1, 2, 3, 8, 0], [4, 5, 9, 100, 101], [4, 5, 10, 11, 12]]
    assert targets.tolist() == [[-1, -1, 6, 7, 99], [-1, -1, 8, 99, -1], [-1, 9, -1, -1, 99], [-1, 10, 11, 12, 13]]
    assert weights.tolist() == [[0, 0, 0.5, 0.5, 0.5], [0, 0, -0.5, -0.5, 0], [0, 0.25, 0, 0, 0.25],
                                [0, -0.25, -0.25, -0.25, -0.25]]


def test_policy_gradient_loss_is_minus_advantage_times_log_prob_of_sampled_tokens():
    config = ModelConfig(sequence_len=8, vocab_size=32, n_layer=1, n_head=1, n_kv_head=1, n_embd=16,
                         compute_dtype="float32")
    model = GPT(config, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 32, (2, 8)).astype(np.int32)
    targets = rng.integers(0, 32, (2, 8)).astype(np.int32)
    targets[:, :3] = -1  # the prompt: not sampled, not scored
    adv = np.where(targets >= 0, np.array([[0.5], [-1.5]], np.float32), 0.0).astype(np.float32)
    logits = np.asarray(model(inputs), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, np.maximum(targets, 0)[..., None], -1)[..., 0]
    expected = -np.sum(np.where(targets >= 0, adv * picked, 0.0))
    value = policy_gradient_loss(model, {"inputs": inputs, "targets": targets, "advantages": adv})
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_sequence_mode_backward_is_refused_with_one_sentence():
    with pytest.raises(TrainingError, match="sequence-mode backward model writes the question"):
        check_rl_direction(load_config(overrides=["direction.direction=backward", "direction.conversation=sequence"]))
    for direction, mode in [("forward", "sequence"), ("backward", "turn"), ("bidirectional", "sequence")]:
        check_rl_direction(load_config(overrides=[f"direction.direction={direction}",
                                                  f"direction.conversation={mode}"]))


def test_prompt_is_every_message_before_the_reply():
    conversation = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                                 {"role": "assistant", "content": "4"}]}
    assert prompt_contents(conversation) == ["Be brief.\n\n2+2?"]


def test_bidirectional_prompts_answer_forward_in_sequence_mode_and_both_ways_in_turn_mode():
    sequence = load_config(overrides=["direction.direction=bidirectional", "direction.conversation=sequence"])
    turn = load_config(overrides=["direction.direction=bidirectional", "direction.conversation=turn"])
    assert {prompt_way(sequence, i) for i in range(32)} == {Direction.FORWARD}
    assert {prompt_way(turn, i) for i in range(32)} == {Direction.FORWARD, Direction.BACKWARD}


def test_calculator_output_is_not_trained_on_in_either_direction():
    from revjax.direction import Specials
    from revjax.train.rl import tool_output

    s = Specials(**{f: 100 + i for i, f in enumerate(Specials.__dataclass_fields__)})
    forward = [5, s.python_start, 6, s.python_end, s.output_start, 7, 8, s.output_end, 9]
    assert tool_output(forward, s, Direction.FORWARD).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0]
    backward = [9, s.output_end, 8, 7, s.output_start, s.python_end, 6, s.python_start, 5]
    assert tool_output(backward, s, Direction.BACKWARD).tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0]


def test_sums_are_small_seeded_and_graded_on_the_answer_after_the_marker():
    task = get_task("sums", size=200, max_operand=4)
    assert [task[i] for i in range(5)] == [get_task("sums", size=200, max_operand=4)[i] for i in range(5)]
    for conversation in task:
        a, b = map(int, conversation["messages"][0]["content"].removeprefix("What is ").rstrip("?").split(" plus "))
        assert 0 <= a <= 4 and 0 <= b <= 4 and conversation["answer"] == str(a + b)
        assert conversation["messages"][1]["content"] == f"{a} + {b} = {a + b}. #### {a + b}"
        assert task.evaluate(conversation, f"{a} + {b} = 99. #### {a + b}")
        assert not task.evaluate(conversation, f"{a} + {b} = {a + b}. #### {a + b + 1}")
        assert not task.evaluate(conversation, f"{a} + {b} = {a + b}.")  # no marker, no reward
    assert get_task("sums", split="test", size=4).eval_only
    with pytest.raises(TaskError, match="sums needs max_operand >= 1, got 0"):
        get_task("sums", max_operand=0)


def sums_overrides(base, run: str, **extra) -> list[str]:
    sums = "{task: sums, max_operand: 1, size: 2000}"
    values = {
        "base_dir": base, "run_name": run, "data.corpus": "parquet", "data.dir": base / "corpus",
        "tokenizer.vocab_size": 280, "model.depth": None, "model.n_layer": 2, "model.n_embd": 64, "model.n_head": 2,
        "model.sequence_len": 32, "model.compute_dtype": "float32", "training.device_batch_size": 1,
        "training.total_batch_tokens": 1024, "training.eval_every": 1000, "training.eval_tokens": 256,
        "training.sample_every": 0, "logging.log_every": 1, "logging.progress": False, "optimizer.ns_dtype": "float32",
        "tasks.train": f"[{sums}]", "tasks.val": "[{task: sums, max_operand: 1, split: test, size: 32}]",
        "tasks.rl": f"[{sums}]", "tasks.rl_val": "[{task: sums, max_operand: 1, split: test, size: 8}]",
    }
    values.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


@pytest.mark.slow
def test_rl_raises_the_reward_of_a_tiny_model_on_small_sums(tmp_path):
    """A 2-layer d64 model trained briefly by SFT answers "What is 1 plus 0?" right about a third of the time when it
    samples at temperature 1; 40 RL steps (8 prompts x 4 replies, graded by the task on the reply in reading order)
    raise the mean reward of the last 10 steps clearly above that of the first 10."""
    docs = [" ".join(m["content"] for m in c["messages"]) for c in get_task("sums", size=400)]
    write_shards(docs, tmp_path / "corpus", docs_per_shard=400)
    train_tokenizer(docs, tmp_path / "tokenizer", 280, progress=False)
    sft = train(load_config(overrides=sums_overrides(tmp_path, "sft", **{
        "training.phase": "sft", "training.num_iterations": 30})))
    rl = train(load_config(overrides=sums_overrides(tmp_path, "rl", **{
        "training.phase": "rl", "training.init_from": sft.run_dir, "training.num_iterations": 40,
        "schedule.init_lr_frac": 0.3, "rl.num_samples": 4, "rl.max_new_tokens": 16, "rl.eval_prompts": 8,
        "rl.eval_samples": 2})))
    rows = [json.loads(line) for line in (rl.run_dir / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in rows if "reward" in r]
    assert len(rewards) == 40 and all(r * 32 == int(r * 32) for r in rewards)  # 32 graded replies a step
    first, last = np.mean(rewards[:10]), np.mean(rewards[-10:])
    assert 0.05 < first < 0.6, rewards  # the SFT model is right sometimes, so there is a signal to learn from
    assert last > first + 0.1, rewards
