"""Work the loop does every N steps, as hooks: validation bits per byte and loss, the evaluation suites per
direction, greedy samples, checkpoints.

A hook is a function ``fn(info: StepInfo) -> dict | None`` added with ``trainer.add_hook(fn, every=N, …)``; it gets
the step, the train state, the last step's logged metrics and the timing, and returns the metrics it measured. The
loop logs what it returns and records it in the run's result. Its :class:`Cadence` says when it is due: at every
multiple of ``every`` (when ``every > 0``), at step 0 unless ``at_zero`` is off, at the step a resumed run restarted
from unless ``at_resume`` is off, and at the final step unless ``at_end`` is off. Hooks run in the order they were
added, after the previous step's metrics are in, so an evaluation is recorded before the checkpoint that stores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import jax

from revjax import sharding as shd
from revjax.data.batches import global_batch
from revjax.direction import known_directions
from revjax.eval.samples import chat_samples, greedy_samples
from revjax.eval.steps import build_eval_step, evaluate_loss
from revjax.train.data import row_batches


@dataclass(frozen=True)
class StepInfo:
    """What a hook sees: the step, the train state at it, the last logged step's metrics and the timing."""

    step: int
    state: Any  # revjax.state.TrainState
    metrics: dict = field(default_factory=dict)  # the last step's logged row (loss, lr, …); empty before the first
    seconds: float = 0.0  # since the loop started
    last: bool = False  # the final step of the run


@dataclass(frozen=True)
class Cadence:
    every: int  # > 0: every multiple of it; ≤ 0: only where the flags below say
    at_end: bool = True  # also at the final step
    at_zero: bool = True  # at step 0 (when every > 0)
    at_resume: bool = True  # at the step a resumed run restarted from (when due there); the final step always

    def due(self, step: int, start: int, last: bool) -> bool:
        if last:
            return self.at_end
        if step == start and not self.at_resume:
            return False
        return self.every > 0 and step % self.every == 0 and (step > 0 or self.at_zero)


HookFn = Callable[[StepInfo], "dict | None"]
EVALUATION = "eval"  # the name of a phase's own evaluation hook (the run's result keeps what it measures)


@dataclass(frozen=True)
class Hook:
    name: str
    fn: HookFn
    cadence: Cadence
    main_only: bool = False  # only on process 0

    def due(self, step: int, start: int, last: bool, is_main: bool) -> bool:
        return (is_main or not self.main_only) and self.cadence.due(step, start, last)


def eval_steps(run, tokens: int) -> int:
    """Global batches of ``run`` that hold about ``tokens`` tokens (at least one)."""
    per_batch = run.local_rows * jax.process_count() * run.config.model.sequence_len
    return max(1, tokens // per_batch)


def run_eval_step(run) -> Callable:
    """The jitted, sharded bits-per-byte step on ``run``'s mesh (built once per run, shared by every hook)."""
    if getattr(run, "_eval_step", None) is None:
        run._eval_step = build_eval_step(run.graphdef, run.mesh, run.shardings.params,
                                         run.tokenizer.token_bytes(run.config.tokenizer.token_bytes))
    return run._eval_step


def eval_hook(run) -> Hook:
    """Validation bits per byte and loss on ``training.eval_tokens`` tokens of the phase's validation data."""
    config = run.config
    row_sharding = shd.batch_sharding(run.mesh)

    def evaluate(info: StepInfo) -> dict:
        val = row_batches(config, run.phase, run.tokenizer, "val", run.local_rows)
        try:
            batches = (global_batch(b, row_sharding) for b in val)
            measured = evaluate_loss(run_eval_step(run), info.state.params, batches,
                                     eval_steps(run, config.training.eval_tokens))
        finally:
            val.close()
        return {"val_bpb": measured["bpb"], "val_loss": measured["loss"]}

    return Hook(EVALUATION, evaluate, Cadence(config.training.eval_every))


def rl_eval_hook(run) -> Hook:
    """pass@k and mean reward of ``rl.eval_samples`` sampled replies to ``rl.eval_prompts`` prompts of
    ``tasks.rl_val``."""
    from revjax.tasks import build_mixture
    from revjax.train.rl import Rollouts, pass_at_k

    config = run.config
    source = build_mixture(config.tasks.rl_val, seed=config.tasks.seed, cache_dir=config.tasks_path(),
                           training=False)
    rollouts = Rollouts(config, run.tokenizer, run.graphdef, source, max_len=config.model.sequence_len + 1)
    k = config.rl.eval_samples

    def evaluate(info: StepInfo) -> dict:
        indices = list(range(min(config.rl.eval_prompts, len(source))))
        rewards = rollouts.sample(info.state.params, indices, k, seed=config.training.seed)["rewards"]
        return {f"val_pass@{k}": pass_at_k(rewards > 0), "val_reward": float(rewards.mean())}

    return Hook(EVALUATION, evaluate, Cadence(config.training.eval_every))


def suite_hook(run) -> Hook:
    """Every ``training.core_every`` steps (nanochat's ``core_metric_every``; not at step 0) and at the final step:
    each evaluation suite that runs in training (:data:`revjax.eval.suites.SUITES`: validation bits per byte in
    each direction, and the in-context suite ``training.core_suite`` capped at ``training.core_max_per_task``)."""
    from revjax.eval.suites import TrainingContext, training_suites

    config = run.config
    context = TrainingContext(run, run_eval_step, eval_steps)

    def evaluate(info: StepInfo) -> dict:
        row: dict = {}
        for suite in training_suites(config.training.core_suite):
            row.update(suite.train(context, info.state.params))
        return row

    every = config.training.core_every
    return Hook("suite", evaluate, Cadence(every, at_zero=False, at_end=every > 0))


def sample_hook(run) -> Hook:
    """Greedy samples (chat turns in a conversation phase) for every direction the model knows."""
    config, d = run.config, run.config.direction

    def sample(info: StepInfo) -> dict:
        ways = known_directions(d.direction)
        if run.phase.conversations:
            samples = chat_samples(run.graphdef, info.state.params, run.tokenizer, d.direction, d.conversation, ways,
                                   config.model.sequence_len, unit=d.unit)
        else:
            samples = greedy_samples(run.graphdef, info.state.params, run.tokenizer, d.direction, ways,
                                     config.model.sequence_len, unit=d.unit)
        return {"samples": samples}

    every = config.training.sample_every
    return Hook("samples", sample, Cadence(every, at_resume=False, at_end=every > 0), main_only=True)


def default_hooks(run, evaluation: Callable[[Any], Hook]) -> list[Hook]:
    """The hooks every phase runs: its evaluation (``evaluation(run)``), the suites, samples (checkpoints: the
    loop's own hook)."""
    return [evaluation(run), suite_hook(run), sample_hook(run)]
