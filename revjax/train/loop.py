"""The host training loop shared by every phase: data → sharded step → metrics, evals, samples, checkpoints.

The loop dispatches step N before it reads step N−1's metrics, so the host never stalls the device except to
log. A checkpoint holds the train state, the data iterator's state and metadata; a restarted run continues from
the newest valid one and reproduces an uninterrupted run step for step. A non-finite loss stops the run before
anything is saved, so the last good checkpoint is kept; SIGTERM/SIGINT save and exit cleanly.
"""

from __future__ import annotations

from revjax.errors import RevjaxError
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from tqdm import tqdm

from revjax import sharding as shd
from revjax.checkpoint import Checkpointer, build_metadata, check_compatible
from revjax.config import Config
from revjax.data.pipeline import SlicedBatches, global_batch
from revjax.direction import Direction, Specials, join_generation, orient_prompt
from revjax.engine import generate
from revjax.evaluate import bits_per_byte, build_eval_step
from revjax.model import flops_per_token, num_params
from revjax.optim import build_optimizer, lr_multiplier, muon_momentum
from revjax.tokenizer import Tokenizer, TokenizerError
from revjax.train.step import (
    TrainState,
    accumulation_steps,
    build_train_step,
    init_train_state,
    train_state_shardings,
)

# Dense bf16 peak FLOP/s per device, by device kind (substring match, lower case).
PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "h800": 989e12, "a100": 312e12, "l4": 121e12, "v5p": 459e12,
              "v5 lite": 197e12, "v5e": 197e12, "v6": 918e12, "v4": 275e12}

SAMPLE_PROMPTS = {
    Direction.FORWARD: ["And God said,", "To be, or not to be:", "The king"],
    Direction.BACKWARD: ["and the evening and the morning were the first day.", "the rest is silence.", "is love."],
}
SCHEDULE_KIND = {"base": "base", "mid": "mid", "sft": "linear", "rl": "linear"}


class TrainingError(RevjaxError, RuntimeError):
    """The run cannot go on; the message says why and what to do."""


@dataclass
class RunResult:
    run_dir: Path
    step: int
    val_bpb: float | None
    losses: dict[int, float] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False


def device_peak_flops(device: jax.Device) -> float | None:
    kind = device.device_kind.lower()
    return next((peak for name, peak in PEAK_FLOPS.items() if name in kind), None)


def resolve_num_iterations(config: Config) -> int:
    """Explicit training.num_iterations, else from target_flops, else the tokens:params ratio (nanochat's order)."""
    t = config.training
    if t.num_iterations > 0:
        return t.num_iterations
    if t.target_flops > 0:
        return max(1, round(t.target_flops / (flops_per_token(config.model) * t.total_batch_tokens)))
    return max(1, int(t.target_param_data_ratio * num_params(config.model)) // t.total_batch_tokens)


def maybe_initialize_distributed() -> None:
    """Join a multi-process run when REVJAX_COORDINATOR, REVJAX_NUM_PROCESSES and REVJAX_PROCESS_ID are set."""
    address = os.environ.get("REVJAX_COORDINATOR")
    if address and not jax.distributed.is_initialized():
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=int(os.environ["REVJAX_NUM_PROCESSES"]),
            process_id=int(os.environ["REVJAX_PROCESS_ID"]),
        )


def load_tokenizer(config: Config) -> Tokenizer:
    path = config.tokenizer_path()
    try:
        tokenizer = Tokenizer.load(path)
    except TokenizerError as err:
        raise TrainingError(f"{err} (train one with `revjax tokenizer` using the same config)") from None
    if tokenizer.vocab_size != config.model.vocab_size:
        raise TrainingError(
            f"the tokenizer at {path} has {tokenizer.vocab_size} tokens but model.vocab_size is "
            f"{config.model.vocab_size}; set tokenizer.vocab_size to match or retrain the tokenizer"
        )
    return tokenizer


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, _frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _directions_known(config: Config) -> list[Direction]:
    direction = Direction.parse(config.direction.direction)
    return [Direction.FORWARD, Direction.BACKWARD] if direction is Direction.BIDIRECTIONAL else [direction]


def sample_texts(graphdef, params, tokenizer: Tokenizer, config: Config, max_new_tokens: int = 32) -> dict[str, list[str]]:
    """Greedy continuations of fixed prompts for every direction the model knows, in reading order."""
    specials = Specials.from_tokenizer(tokenizer)
    out: dict[str, list[str]] = {}
    for way in _directions_known(config):
        prompts = [tokenizer.encode(text, prepend=tokenizer.bos_id) for text in SAMPLE_PROMPTS[way]]
        oriented = [orient_prompt(p, config.direction.direction, specials, generate=way) for p in prompts]
        generated = generate(graphdef, params, oriented, max_new_tokens, stop_ids=[tokenizer.bos_id],
                             max_len=min(config.model.sequence_len, max(map(len, oriented)) + max_new_tokens))
        out[way.value] = [tokenizer.decode(join_generation(p, g, way)[1:]) for p, g in zip(prompts, generated)]
    return out


def load_init_params(config: Config, tokenizer: Tokenizer) -> Any:
    """The parameters of the newest valid checkpoint in ``training.init_from`` (a run's checkpoint folder), for a
    phase that starts from another run; its direction and tokenizer must match unless ``checkpoint.force``."""
    from revjax.interop.export import read_params

    params, meta, origin = read_params(config.training.init_from)
    check_compatible(meta, direction=config.direction.direction, tokenizer_identity=tokenizer.identity(),
                     force=config.checkpoint.force)
    shape_keys = ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
    if any(getattr(origin.model, k) != getattr(config.model, k) for k in shape_keys):
        raise TrainingError(
            f"the model in {config.training.init_from} ({origin.model.gpt_config()}) differs from model.* "
            f"({config.model.gpt_config()}); use the same sizes as the run it starts from"
        )
    return params


def train(config: Config, *, progress: bool | None = None) -> RunResult:
    """Run (or continue) the configured training run; returns where it ended and what it measured."""
    maybe_initialize_distributed()
    start_time = time.time()
    tokenizer = load_tokenizer(config)
    mesh = shd.make_mesh(config.mesh)
    dp = shd.data_parallel_size(mesh)
    T, B = config.model.sequence_len, config.training.device_batch_size
    accum = accumulation_steps(config.training.total_batch_tokens, B, T, dp)
    rows = B * dp
    n_proc, proc = jax.process_count(), jax.process_index()
    if rows % n_proc:
        raise TrainingError(f"{rows} rows per micro-batch cannot be split over {n_proc} processes")
    local_rows = rows // n_proc
    num_iterations = resolve_num_iterations(config)
    run_dir = config.checkpoint_path()
    is_main = proc == 0
    show = config.logging.progress if progress is None else progress

    tx = build_optimizer(config.optimizer, config.model, init_lr_frac=config.schedule.init_lr_frac)
    checkpointer = Checkpointer(run_dir, keep=config.checkpoint.keep)
    latest = checkpointer.latest_step()
    data_state = None
    start = 0
    if latest is None and config.training.init_from:
        params = load_init_params(config, tokenizer)
        graphdef, state, shardings = init_train_state(config.model, tx, mesh, params=params)
        if is_main:
            print(f"starting from the parameters of {config.training.init_from}")
    elif latest is None:
        graphdef, state, shardings = init_train_state(config.model, tx, mesh, seed=config.training.seed)
    else:
        meta = checkpointer.metadata(latest)
        check_compatible(meta, direction=config.direction.direction, tokenizer_identity=tokenizer.identity(),
                         force=config.checkpoint.force)
        graphdef, abstract, shardings = train_state_shardings(config.model, tx, mesh)
        restored, data_state, _ = checkpointer.restore(_as_tree(abstract), latest)
        if (meta.get("direction"), meta.get("tokenizer_identity")) != (config.direction.direction, tokenizer.identity()):
            data_state = None  # a forced change of direction or tokenizer starts the data stream afresh
        state = TrainState(restored["params"], restored["opt_state"])
        start = latest
        if is_main:
            print(f"resuming {run_dir} from step {latest}")

    train_iter = SlicedBatches(config, tokenizer, "train", rows=local_rows, seq_len=T,
                               process_index=proc, process_count=n_proc)
    if data_state is not None:
        train_iter.set_state(data_state)
    step_fn = build_train_step(graphdef, tx, mesh, shardings)
    eval_step = build_eval_step(graphdef, mesh, shardings.params, tokenizer.token_bytes(config.tokenizer.token_bytes))
    step_sharding = shd.step_batch_sharding(mesh)
    row_sharding = shd.batch_sharding(mesh)
    eval_batches = max(1, config.training.eval_tokens // (rows * T))

    def next_step_batch():
        micro = [next(train_iter) for _ in range(accum)]
        return global_batch((np.stack([m[0] for m in micro]), np.stack([m[1] for m in micro])), step_sharding)

    def evaluate(params) -> float:
        val_iter = SlicedBatches(config, tokenizer, "val", rows=local_rows, seq_len=T,
                                 process_index=proc, process_count=n_proc, cycle=False)
        try:
            return bits_per_byte(eval_step, params, (global_batch(b, row_sharding) for b in val_iter), eval_batches)
        finally:
            val_iter.close()

    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = open_metrics_log(run_dir / "metrics.jsonl", start) if is_main else None
    wandb_run = _start_wandb(config) if is_main else None
    tokens_per_step = config.training.total_batch_tokens
    flops_step = flops_per_token(config.model) * tokens_per_step
    peak = device_peak_flops(jax.devices()[0])
    peak_total = peak * jax.device_count() if peak else None
    result = RunResult(run_dir=run_dir, step=start, val_bpb=None)
    bar = tqdm(total=num_iterations, initial=start, disable=not (show and is_main), desc=config.run_name,
               unit="step", dynamic_ncols=True)
    pending: tuple[int, dict, float] | None = None
    last_time = time.perf_counter()

    def record(row: dict) -> None:
        if log_file is not None:
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
        if wandb_run is not None:
            wandb_run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def flush() -> None:
        nonlocal pending, last_time
        if pending is None:
            return
        step, metrics, lrm = pending
        pending = None
        loss = float(metrics["loss"])
        now = time.perf_counter()
        dt, last_time = now - last_time, now
        if not math.isfinite(loss) or not bool(metrics["params_finite"]):
            good = checkpointer.latest_step()
            what = f"the loss became {loss}" if not math.isfinite(loss) else "the parameters became non-finite"
            raise TrainingError(
                f"{what} at step {step}; stopped without saving, the last good checkpoint "
                f"({'none yet' if good is None else f'step {good}'}) in {run_dir} is kept; lower the learning rates "
                "or enable optimizer.grad_clip"
            )
        result.losses[step] = loss
        tok_s = tokens_per_step / dt
        row = {"step": step, "loss": loss, "lr_multiplier": lrm, "grad_norm": float(metrics["grad_norm"]),
               "tokens_per_s": tok_s, "step_seconds": dt}
        if peak_total:
            row["mfu"] = flops_step / dt / peak_total
        if step % config.logging.log_every == 0 or step == num_iterations - 1:
            record(row)
        postfix = {"loss": f"{loss:.4f}", "tok/s": f"{tok_s:,.0f}"}
        if peak_total:
            postfix["mfu"] = f"{100 * row['mfu']:.1f}%"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)

    def save(step: int) -> None:
        metadata = build_metadata(
            step=step, direction=config.direction.direction, phase=config.training.phase,
            model_config=config.model.gpt_config(), config=config.to_dict(),
            tokenizer_identity=tokenizer.identity(), tokenizer_path=str(config.tokenizer_path()),
            val_bpb=result.val_bpb)
        checkpointer.save(step, _as_tree(state), data_state=train_iter.get_state(), metadata=metadata, force=True)

    t = config.training
    try:
        with _StopRequest() as stop:
            for step in range(start, num_iterations + 1):
                last = step == num_iterations
                due_eval = last or (t.eval_every > 0 and step % t.eval_every == 0)
                due_sample = is_main and t.sample_every > 0 and (last or (step > 0 and step % t.sample_every == 0))
                due_save = last or (step > start and config.checkpoint.save_every > 0
                                    and step % config.checkpoint.save_every == 0)
                if due_eval or due_sample or due_save or stop.signal is not None:
                    flush()
                if due_eval:
                    result.val_bpb = evaluate(state.params)
                    record({"step": step, "val_bpb": result.val_bpb})
                    if show and is_main:
                        bar.write(f"step {step}: val bpb {result.val_bpb:.4f}")
                if due_sample:
                    result.samples = sample_texts(graphdef, state.params, tokenizer, config)
                    if show:
                        for way, texts in result.samples.items():
                            for text in texts:
                                bar.write(f"  [{way}] {text!r}")
                if stop.signal is not None:
                    save(step)
                    result.interrupted = True
                    bar.write(f"received signal {stop.signal}: saved step {step} to {run_dir}; exiting")
                    result.step = step
                    break
                if due_save:
                    save(step)
                result.step = step
                if last:
                    break
                lrm = lr_multiplier(step, num_iterations, config.schedule, kind=SCHEDULE_KIND[t.phase])
                # base and mid ramp the Muon momentum up; SFT and RL keep it constant (as onanchat)
                momentum = (muon_momentum(step, config.optimizer) if t.phase in ("base", "mid")
                            else config.optimizer.muon_momentum)
                inputs, targets = next_step_batch()
                state, metrics = step_fn(state, inputs, targets, np.float32(lrm), np.float32(momentum))
                flush()  # the previous step's metrics, while this one runs
                pending = (step, metrics, lrm)
            flush()
    finally:
        bar.close()
        checkpointer.close()
        train_iter.close()
        if log_file is not None:
            log_file.close()
        if wandb_run is not None:
            wandb_run.finish()
    result.seconds = time.time() - start_time
    return result


def open_metrics_log(path: Path, start: int):
    """The metrics JSONL for appending, without the rows of steps ≥ ``start`` that a killed run logged after its
    last checkpoint (they are logged again as the run continues)."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] < start]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(row + "\n" for row in rows))
        tmp.replace(path)
    return open(path, "a")


def _as_tree(state: TrainState) -> dict:
    return {"params": state.params, "opt_state": state.opt_state}


def _start_wandb(config: Config):
    if config.logging.wandb == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        raise TrainingError("logging.wandb is set but wandb is not installed; pip install 'revjax[wandb]'") from None
    return wandb.init(project=config.logging.project, name=config.run_name, mode=config.logging.wandb,
                      dir=str(config.checkpoint_path()), config=config.to_dict())


def run_from_args(argv: list[str] | None = None, *, on_result: Callable[[RunResult], None] | None = None) -> int:
    """``python -m revjax.train --config FILE key=value…``."""
    import argparse

    from revjax.cli import config_from_args
    from revjax.errors import run_command

    parser = argparse.ArgumentParser(prog="python -m revjax.train", description="Train (or continue) a revjax model.")
    parser.add_argument("--config", action="append", metavar="FILE", help="YAML config (repeatable)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    outcome: list[RunResult] = []
    code = run_command("revjax.train", lambda: outcome.append(train(config_from_args(args, ["default"]))))
    if code or not outcome:
        return code
    result = outcome[0]
    if on_result:
        on_result(result)
    bpb = "n/a" if result.val_bpb is None else f"{result.val_bpb:.4f}"
    print(f"{'stopped' if result.interrupted else 'finished'} at step {result.step}: val bpb {bpb}, "
          f"{result.seconds:.0f}s, checkpoints in {result.run_dir}", flush=True)
    return 0
