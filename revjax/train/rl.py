"""RL for every direction that answers: nanochat's simplified GRPO (REINFORCE with the prompt's mean as baseline).

Each step takes ``P = rows_per_step / rl.num_samples`` prompts of the ``tasks.rl`` mixture (in mixture order, so the
position resumes exactly), puts each in model order with :func:`revjax.direction.chat_prompt`, samples
``rl.num_samples`` replies from the current parameters, restores each reply to reading order
(:func:`revjax.direction.chat_reply`) and scores it with the task's grader. The advantage of a reply is its reward
minus the mean reward of its prompt's group; the loss (:func:`revjax.train.step.policy_gradient_loss`) weighs the
log-probability of every *sampled* token (the prompt and the padding are not scored) by it: no KL, no ratio.

Forward, ``turn``-mode backward (the reply is written right to left) and bidirectional models (a seeded direction
per prompt in ``turn`` mode, forward in ``sequence`` mode) are trained; a ``sequence``-mode backward model would
generate questions, not answers, so RL refuses it. A model as small as the CPU default reaches right answers on the
``sums`` task, not on the word problems of ``arithmetic``; that is what its RL practises.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from revjax import sharding as shd
from revjax.config import Config
from revjax.direction import Direction, Specials, chat_prompt, chat_reply, chat_stop_token, choose_direction
from revjax.engine import Engine
from revjax.tasks import build_mixture
from revjax.phases import PHASES
from revjax.train.errors import TrainingError


def check_rl_direction(config: Config, phase: str = "rl") -> None:
    """Refuse a direction and conversation mode the phase's row does not accept (:data:`revjax.phases.PHASES`), and
    text reversal units (the engine's calculator reads a backward tool call as reversed token ids)."""
    refusal = PHASES[phase].refuses(config.direction.direction, config.direction.conversation)
    if refusal:
        raise TrainingError(refusal)
    if config.direction.unit != "token":
        raise TrainingError(f"RL samples replies whose calculator calls are read as reversed token ids, so it trains "
                            f"direction.unit=token only, not {config.direction.unit}; run RL on a token-unit model")


def prompt_way(config: Config, index: int) -> Direction:
    """The direction a prompt is answered in: the model's; for a bidirectional model a seeded choice per prompt in
    ``turn`` mode, and forward in ``sequence`` mode (where its backward mode writes questions)."""
    way = Direction.parse(config.direction.direction)
    if way is not Direction.BIDIRECTIONAL:
        return way
    if config.direction.conversation == "sequence":
        return Direction.FORWARD
    return choose_direction(config.direction.seed, index)


def prompt_contents(conversation: dict) -> list[str]:
    """The reading-order message contents before the final assistant reply (a system message joins the first user
    message, as rendering does)."""
    messages = list(conversation["messages"])
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if messages and messages[0]["role"] == "system":
        messages = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]},
                    *messages[2:]]
    contents = [m["content"] for m in messages]
    if not contents or any(not isinstance(c, str) for c in contents):
        raise TrainingError("an RL prompt must end with a user message whose content is text; check tasks.rl")
    return contents


def advantages(rewards: np.ndarray) -> np.ndarray:
    """``(prompts, samples)`` rewards → reward minus the mean of its prompt's samples."""
    return rewards - rewards.mean(axis=1, keepdims=True)


def tool_output(ids: list[int], specials: Specials, way: Direction) -> np.ndarray:
    """True on the calculator's forced output (its markers included) in model-order ``ids``: the engine wrote those
    tokens, the model did not sample them, so they are not trained on."""
    opener, closer = ((specials.output_start, specials.output_end) if way is Direction.FORWARD
                      else (specials.output_end, specials.output_start))
    mask, inside = np.zeros(len(ids), bool), False
    for i, token in enumerate(ids):
        if token == opener:
            inside = True
        mask[i] = inside
        if token == closer:
            inside = False
    return mask


def rollout_rows(prompts: list[list[int]], replies: list[list[int]], sampled: list[np.ndarray], adv: np.ndarray,
                 T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(inputs, targets, advantages)`` rows ``(len(replies), T)`` for replies ``r = p·samples + s`` to ``prompts``:
    row ``r`` reads prompt ``p`` then reply ``r`` (cut to ``T + 1`` tokens); its targets are the reply's sampled
    tokens (−1 on the prompt, the tool's forced output and the padding), each weighed by ``adv[p, s]``."""
    samples = adv.shape[1]
    inputs = np.zeros((len(replies), T), np.int32)
    targets = np.full((len(replies), T), -1, np.int32)
    weights = np.zeros((len(replies), T), np.float32)
    for r, reply in enumerate(replies):
        prompt = prompts[r // samples]
        seq = (prompt + reply)[: T + 1]
        n = len(seq) - 1
        inputs[r, :n] = seq[:-1]
        first = len(prompt) - 1  # the target index of the first sampled token
        keep = np.asarray(sampled[r][: n - first], bool)
        targets[r, first:n] = np.where(keep, seq[first + 1:], -1)
        weights[r, first:n] = np.where(keep, adv[r // samples, r % samples], 0.0)
    return inputs, targets, weights


def pass_at_k(correct: np.ndarray) -> float:
    """Fraction of prompts (rows) with at least one correct sample among its k (columns)."""
    return float(np.mean(correct.any(axis=1)))


class Rollouts:
    """Samples ``samples`` replies to each prompt of a task source and grades them, in every direction."""

    def __init__(self, config: Config, tokenizer, graphdef, source, *, max_len: int):
        self.config, self.tokenizer, self.graphdef, self.source = config, tokenizer, graphdef, source
        self.specials = Specials.from_tokenizer(tokenizer)
        self.max_len = max_len

    def sample(self, params: Any, indices: list[int], samples: int, seed: int) -> dict[str, Any]:
        """``prompts`` (model order), ``replies`` (generated ids, stop token included when reached; the calculator
        fires in the prompt's direction), ``sampled`` (per reply, False on the tool's forced output) and ``rewards``
        ``(len(indices), samples)`` for the prompts at mixture positions ``indices``."""
        config, rl, mode = self.config, self.config.rl, self.config.direction.conversation
        prompts, stops, ways, conversations = [], [], [], []
        for index in indices:
            conversation = self.source[index % len(self.source)]
            way = prompt_way(config, index)
            messages = [self.tokenizer.encode(c) for c in prompt_contents(conversation)]
            prompt = chat_prompt(messages, config.direction.direction, self.specials, mode=mode, generate=way)
            prompts.append(prompt[: self.max_len - 1])
            stops.append(chat_stop_token(config.direction.direction, self.specials, mode=mode, generate=way))
            ways.append(way)
            conversations.append(conversation)
        budget = min(rl.max_new_tokens, self.max_len - max(map(len, prompts)))
        engine = Engine(self.graphdef, params, tokenizer=self.tokenizer)
        generated = engine.generate(prompts, budget, num_samples=samples, temperature=rl.temperature,
                                    top_k=rl.top_k or None, seed=seed, stop_ids=sorted(set(stops)),
                                    max_len=max(map(len, prompts)) + budget, tool_order=[w.value for w in ways]).tokens
        replies, sampled, rewards = [], [], np.zeros((len(indices), samples), np.float32)
        for i, ids in enumerate(generated):
            p = i // samples
            ids = [*ids, stops[p]] if len(ids) < budget else list(ids)
            replies.append(ids)
            sampled.append(~tool_output(ids, self.specials, ways[p]))
            text = self.tokenizer.decode(chat_reply(ids, config.direction.direction, self.specials, mode=mode,
                                                    generate=ways[p]))
            rewards[p, i % samples] = self.source.reward(conversations[p], text)
        return {"prompts": prompts, "replies": replies, "sampled": sampled, "rewards": rewards}


class RolloutBatches:
    """RL step batches ``{"inputs", "targets", "advantages"}`` of shape ``(accum, rows, T)``, sampled with the
    current parameters (``bind`` gives the loop's params); the state is the mixture position, so resuming is exact."""

    def __init__(self, run):
        config = run.config
        check_rl_direction(config, run.phase.name)
        self.run, self.config = run, config
        self.samples = config.rl.num_samples
        rows_per_step = run.accum * run.local_rows * jax.process_count()
        if rows_per_step % self.samples:
            raise TrainingError(f"{rows_per_step} rows per step (total_batch_tokens / sequence_len) are not a "
                                f"multiple of rl.num_samples={self.samples}; change one of them")
        self.prompts_per_step = rows_per_step // self.samples
        source = build_mixture(config.tasks.rl, seed=config.tasks.seed, cache_dir=config.tasks_path())
        self.rollouts = Rollouts(config, run.tokenizer, run.graphdef, source, max_len=config.model.sequence_len + 1)
        self.sharding = shd.step_batch_sharding(run.mesh)
        self.position, self.steps = 0, 0
        self.last: dict[str, float] = {}
        self._params: Callable[[], Any] | None = None

    def bind(self, params: Callable[[], Any]) -> None:
        self._params = params

    def __next__(self) -> dict:
        indices = list(range(self.position, self.position + self.prompts_per_step))
        out = self.rollouts.sample(self._params(), indices, self.samples, seed=self.config.training.seed * 1_000_003
                                   + self.steps)
        self.position += self.prompts_per_step
        self.steps += 1
        inputs, targets, weights = rollout_rows(out["prompts"], out["replies"], out["sampled"],
                                                advantages(out["rewards"]), self.config.model.sequence_len)
        self.last = {"reward": float(out["rewards"].mean()), "pass_at_k": pass_at_k(out["rewards"] > 0)}
        return self._place(inputs, targets, weights)

    def _place(self, inputs: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> dict:
        """This process's rows of the step, as ``(accum, rows, T)`` global arrays."""
        run, accum = self.run, self.run.accum
        local = run.local_rows
        start = jax.process_index() * local

        def split(a: np.ndarray) -> np.ndarray:
            per_micro = a.reshape(accum, -1, a.shape[-1])
            return per_micro[:, start:start + local]

        arrays = {"inputs": inputs, "targets": targets, "advantages": weights}
        return {k: jax.make_array_from_process_local_data(self.sharding, split(a)) for k, a in arrays.items()}

    def get_state(self) -> dict:
        return {"kind": "rl", "position": self.position, "steps": self.steps}

    def set_state(self, state: dict) -> None:
        if state.get("kind") != "rl":
            raise TrainingError("the checkpoint's data state is not an RL position; continue it in its own phase")
        self.position, self.steps = int(state["position"]), int(state["steps"])

    def close(self) -> None:
        pass
