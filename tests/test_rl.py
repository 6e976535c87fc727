"""RL: advantages, pass@k and the policy-gradient loss against hand computations; the rollout rows; the refusal of
sequence-mode backward models."""

import numpy as np
import pytest
from flax import nnx

from revjax.config import ModelConfig, load_config
from revjax.model import GPT
from revjax.direction import Direction
from revjax.train.rl import advantages, check_rl_direction, pass_at_k, prompt_contents, prompt_way
from revjax.train.setup import TrainingError
from revjax.train.step import policy_gradient_loss


def test_advantage_is_reward_minus_the_prompts_mean():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]], np.float32)
    np.testing.assert_allclose(advantages(rewards), [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0],
                                                     [0.25, 0.25, 0.25, -0.75]])
    assert pass_at_k(rewards > 0) == pytest.approx(2 / 3)


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
