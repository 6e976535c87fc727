"""Work the loop does every N steps, as hooks: validation bits per byte and loss, the in-context suite per
direction, greedy samples, checkpoints.

A :class:`Hook` is due at step ``s`` when ``every > 0`` and ``s`` is a multiple of ``every`` (and, for hooks with
``skip_start``, ``s`` is past the step the run started from), and always at the final step. Hooks run in the order
they were added, after the previous step's metrics are in, so an evaluation is recorded before the checkpoint that
stores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import jax

from revjax import sharding as shd
from revjax.checkpoint import build_metadata
from revjax.data.batches import global_batch
from revjax.direction import (
    Direction,
    Specials,
    chat_prompt,
    chat_reply,
    chat_stop_token,
    join_generation,
    known_directions,
    orient_prompt,
)
from revjax.engine import generate
from revjax.evaluate import build_eval_step, evaluate_loss
from revjax.train.data import row_batches

if TYPE_CHECKING:
    from revjax.train.loop import Trainer

CHAT_SAMPLES = [  # (question, answer) pairs: forward asks the question, sequence-backward gives the answer
    ("What is 12 plus 7?", "12 + 7 = 19. #### 19"),
    ("Who are you?", "I am a language model trained with revjax."),
]
SAMPLE_PROMPTS = {
    Direction.FORWARD: ["And God said,", "To be, or not to be:", "The king"],
    Direction.BACKWARD: ["and the evening and the morning were the first day.", "the rest is silence.", "is love."],
}


@dataclass
class Hook:
    name: str
    every: int
    fn: Callable[["Trainer", int], None]
    skip_start: bool = False  # not at the step the run (re)started from, unless it is the final step
    main_only: bool = False  # only on process 0
    at_end: bool = True  # also at the final step
    at_zero: bool = True  # also at step 0 (a resumed run still repeats the step it restarted from)

    def due(self, step: int, start: int, last: bool, is_main: bool) -> bool:
        if self.main_only and not is_main:
            return False
        if last:
            return self.at_end
        if self.skip_start and step == start:
            return False
        return self.every > 0 and step % self.every == 0 and (step > 0 or (self.at_zero and not self.skip_start))


def sample_texts(graphdef, params, tokenizer, direction: str, max_len: int, max_new_tokens: int = 32):
    """Greedy continuations of fixed prompts for every direction the model knows, in reading order."""
    specials = Specials.from_tokenizer(tokenizer)
    out: dict[str, list[str]] = {}
    for way in known_directions(direction):
        prompts = [tokenizer.encode(text, prepend=tokenizer.bos_id) for text in SAMPLE_PROMPTS[way]]
        oriented = [orient_prompt(p, direction, specials, generate=way) for p in prompts]
        generated = generate(graphdef, params, oriented, max_new_tokens, stop_ids=[tokenizer.bos_id],
                             max_len=min(max_len, max(map(len, oriented)) + max_new_tokens))
        out[way.value] = [tokenizer.decode(join_generation(p, g, way)[1:]) for p, g in zip(prompts, generated)]
    return out


def chat_samples(graphdef, params, tokenizer, direction: str, mode: str, max_len: int, max_new_tokens: int = 48):
    """Greedy chat turns for every direction the model knows, in reading order, as ``given → generated``: the
    assistant's reply to a question, or (sequence-mode backward) the question that an answer replies to."""
    specials = Specials.from_tokenizer(tokenizer)
    out: dict[str, list[str]] = {}
    for way in known_directions(direction):
        asks_user = way is Direction.BACKWARD and mode == "sequence"
        given = [answer for _, answer in CHAT_SAMPLES] if asks_user else [question for question, _ in CHAT_SAMPLES]
        prompts = [chat_prompt([tokenizer.encode(text)], direction, specials, mode=mode, generate=way)
                   for text in given]
        stop = chat_stop_token(direction, specials, mode=mode, generate=way)
        generated = generate(graphdef, params, prompts, max_new_tokens, stop_ids=[stop],
                             max_len=min(max_len, max(map(len, prompts)) + max_new_tokens))
        replies = [tokenizer.decode(chat_reply(g, direction, specials, mode=mode, generate=way)) for g in generated]
        out[way.value] = [f"{text!r} → {reply!r}" for text, reply in zip(given, replies)]
    return out


def eval_hook(trainer: "Trainer") -> Hook:
    """Validation bits per byte and loss on ``training.eval_tokens`` tokens of the phase's validation data."""
    run, config = trainer.run, trainer.run.config
    eval_step = build_eval_step(run.graphdef, run.mesh, run.shardings.params,
                                run.tokenizer.token_bytes(config.tokenizer.token_bytes))
    row_sharding = shd.batch_sharding(run.mesh)
    T = config.model.sequence_len
    eval_batches = max(1, config.training.eval_tokens // (run.local_rows * jax.process_count() * T))

    def evaluate(trainer: "Trainer", step: int) -> None:
        val = row_batches(config, run.phase, run.tokenizer, "val", run.local_rows)
        try:
            batches = (global_batch(b, row_sharding) for b in val)
            measured = evaluate_loss(eval_step, trainer.state.params, batches, eval_batches)
        finally:
            val.close()
        trainer.result.val_bpb, trainer.result.val_bpb_step = measured["bpb"], step
        trainer.result.val_loss = measured["loss"]
        trainer.log({"step": step, "val_bpb": measured["bpb"], "val_loss": measured["loss"]})
        trainer.say(f"step {step}: val bpb {measured['bpb']:.4f}, val loss {measured['loss']:.4f}")

    return Hook("eval", config.training.eval_every, evaluate)


def suite_hook(trainer: "Trainer") -> Hook:
    """Every ``training.core_every`` steps (nanochat's ``core_metric_every``; not at step 0) and at the final
    step: validation bits per byte of the corpus in each direction the model knows, and the in-context suite
    ``training.core_suite`` (the OLMo-offline suite, or CORE from ``<base dir>/eval_bundle``) capped at
    ``training.core_max_per_task`` examples per task. Logged as ``val_bpb/<way>``, ``<suite>/<way>`` (the mean
    centered accuracy) and ``<suite>/<way>/<task>``."""
    from revjax.eval.bpb import document_rows
    from revjax.eval.core import CORE_NAME, evaluate_tasks, fetch_bundle, load_core_tasks
    from revjax.eval.scorer import Scorer
    from revjax.eval.suites import OFFLINE_NAME, load_offline_tasks

    run, config = trainer.run, trainer.run.config
    tc, T = config.training, config.model.sequence_len
    row_sharding = shd.batch_sharding(run.mesh)
    eval_batches = max(1, tc.eval_tokens // (run.local_rows * jax.process_count() * T))
    direction = config.direction.direction
    ways = known_directions(direction)
    loaded: dict = {}

    def val_texts() -> list[str]:
        from revjax.data.shards import iter_texts

        texts, chars = [], 0
        for batch in iter_texts(config.data_path(), "val"):
            texts += batch
            chars += sum(map(len, batch))
            if chars >= 8 * tc.eval_tokens:
                break
        return texts

    def evaluate(trainer: "Trainer", step: int) -> None:
        if not loaded:  # once per run: the eval step, the validation documents and the suite's tasks
            loaded["step"] = build_eval_step(run.graphdef, run.mesh, run.shardings.params,
                                             run.tokenizer.token_bytes(config.tokenizer.token_bytes))
            loaded["texts"] = val_texts()
            if tc.core_suite == "core":
                loaded["name"], loaded["specs"] = CORE_NAME, load_core_tasks(fetch_bundle(config.base_path()))
            else:
                loaded["name"], loaded["specs"] = OFFLINE_NAME, load_offline_tasks(cache_dir=config.tasks_path())
        row: dict = {"step": step}
        for way in ways:
            rows = document_rows(loaded["texts"], run.tokenizer, direction, way, run.local_rows, T,
                                 packing=config.data.val_packing, packing_buffer=config.data.packing_buffer)
            batches = (global_batch(b, row_sharding) for b in rows)
            measured = evaluate_loss(loaded["step"], trainer.state.params, batches, eval_batches)
            row[f"val_bpb/{way.value}"] = measured["bpb"]
        scorer = Scorer(run.graphdef, trainer.state.params, pad_id=run.tokenizer.bos_id)
        name = loaded["name"]
        out = evaluate_tasks(loaded["specs"], name, scorer, run.tokenizer, direction, ways,
                             max_per_task=tc.core_max_per_task if tc.core_max_per_task > 0 else None, max_len=T)
        for way, part in out["ways"].items():
            row[f"{name}/{way}"] = part["score"]
            row.update({f"{name}/{way}/{label}": task["centered"] for label, task in part["tasks"].items()})
        trainer.log(row)
        trainer.say(f"step {step}: " + ", ".join(f"{key} {value:.4f}" for key, value in row.items()
                                                  if key != "step" and key.count("/") == 1 and value is not None))

    return Hook("suite", tc.core_every, evaluate, at_zero=False, at_end=tc.core_every > 0)


def rl_eval_hook(trainer: "Trainer") -> Hook:
    """pass@k and mean reward of ``rl.eval_samples`` sampled replies to ``rl.eval_prompts`` prompts of
    ``tasks.rl_val``."""
    from revjax.tasks import build_mixture
    from revjax.train.rl import Rollouts, pass_at_k

    run, config = trainer.run, trainer.run.config
    source = build_mixture(config.tasks.rl_val, seed=config.tasks.seed, cache_dir=config.tasks_path(),
                           training=False)
    rollouts = Rollouts(config, run.tokenizer, run.graphdef, source, max_len=config.model.sequence_len + 1)
    k = config.rl.eval_samples

    def evaluate(trainer: "Trainer", step: int) -> None:
        indices = list(range(min(config.rl.eval_prompts, len(source))))
        rewards = rollouts.sample(trainer.state.params, indices, k, seed=config.training.seed)["rewards"]
        measured = {f"val_pass@{k}": pass_at_k(rewards > 0), "val_reward": float(rewards.mean())}
        trainer.result.evals = {**measured, "step": step}
        trainer.log({"step": step, **measured})
        trainer.say(f"step {step}: " + ", ".join(f"{name} {value:.3f}" for name, value in measured.items()))

    return Hook("eval", config.training.eval_every, evaluate)


def sample_hook(trainer: "Trainer") -> Hook:
    config = trainer.run.config

    def sample(trainer: "Trainer", step: int) -> None:
        run, d = trainer.run, config.direction
        if run.phase.conversations:
            trainer.result.samples = chat_samples(run.graphdef, trainer.state.params, run.tokenizer, d.direction,
                                                  d.conversation, config.model.sequence_len)
        else:
            trainer.result.samples = sample_texts(run.graphdef, trainer.state.params, run.tokenizer, d.direction,
                                                  config.model.sequence_len)
        for way, texts in trainer.result.samples.items():
            for text in texts:
                trainer.say(f"  [{way}] {text!r}")

    every = config.training.sample_every
    return Hook("samples", every, sample, skip_start=True, main_only=True, at_end=every > 0)


def checkpoint_hook(trainer: "Trainer") -> Hook:
    return Hook("checkpoint", trainer.run.config.checkpoint.save_every, lambda t, step: save_checkpoint(t, step),
                skip_start=True)


def save_checkpoint(trainer: "Trainer", step: int) -> None:
    """Save the train state, data position and metadata as ``step`` (a committed step is never rewritten)."""
    run, config = trainer.run, trainer.run.config
    metadata = build_metadata(
        step=step, direction=config.direction.direction, phase=config.training.phase,
        model_config=config.model.gpt_config(), config=config.with_absolute_paths().to_dict(),
        tokenizer_identity=run.tokenizer.identity(), tokenizer_path=str(config.tokenizer_path()),
        val_bpb=trainer.result.val_bpb)
    metadata["finished"] = step == run.num_iterations
    if run.parent is not None:
        metadata["parent"] = run.parent
    state = {"params": trainer.state.params, "opt_state": trainer.state.opt_state}
    run.checkpointer.save(step, state, data_state=trainer.batches.get_state(), metadata=metadata)
