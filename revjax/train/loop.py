"""The training loop shared by every phase: batches → sharded step (the phase's loss) → metrics, with hooks.

The loop dispatches step N before it reads step N−1's metrics, so the host never stalls the device except to
log. Evaluation, samples and checkpoints are hooks (:mod:`revjax.train.hooks`); metrics go to one tracker
(:mod:`revjax.tracking`). A restarted run continues from the newest intact checkpoint and reproduces an
uninterrupted run step for step. A non-finite loss stops the run before anything is saved, so the last good
checkpoint is kept; SIGTERM/SIGINT save, say so, and the command exits 128 + the signal number.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from tqdm import tqdm

from revjax.compilation import use_compilation_cache
from revjax.config import Config
from revjax.model import flops_per_token
from revjax.optim import lr_multiplier, muon_momentum
from revjax.runlock import RunLock
from revjax.tracking import JsonlTracker, Trackers, WandbTracker
from revjax.train.data import build_batches
from revjax.train.hooks import (Hook, checkpoint_hook, eval_hook, rl_eval_hook, sample_hook, save_checkpoint,
                                 suite_hook)
from revjax.train.setup import RunSetup, TrainingError, maybe_initialize_distributed, prepare_run
from revjax.train.step import LOSSES, build_train_step

# Dense bf16 peak FLOP/s per device, by device kind (substring match, lower case).
PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "h800": 989e12, "a100": 312e12, "l4": 121e12, "v5p": 459e12,
              "v5 lite": 197e12, "v5e": 197e12, "v6": 918e12, "v4": 275e12}


@dataclass
class RunResult:
    run_dir: Path
    step: int
    val_bpb: float | None = None
    val_bpb_step: int | None = None
    val_loss: float | None = None
    evals: dict = field(default_factory=dict)  # the last evaluation of a phase measured otherwise (RL: pass@k)
    losses: dict[int, float] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0
    signal: int | None = None  # the signal that stopped the run early, if any

    @property
    def interrupted(self) -> bool:
        return self.signal is not None

    def summary(self) -> str:
        if self.evals:
            bpb = ", ".join(f"{k} {v:.3f}" for k, v in self.evals.items() if k != "step")
            bpb += f" (measured at step {self.evals['step']})"
        elif self.val_bpb is None:
            bpb = "val bpb n/a"
        else:
            bpb = f"val bpb {self.val_bpb:.4f} (measured at step {self.val_bpb_step})"
        return (f"{'stopped' if self.interrupted else 'finished'} at step {self.step}: {bpb}, "
                f"{self.seconds:.0f}s, checkpoints in {self.run_dir}")


def device_peak_flops(device: jax.Device) -> float | None:
    kind = device.device_kind.lower()
    return next((peak for name, peak in PEAK_FLOPS.items() if name in kind), None)


def schedule(run: RunSetup, step: int) -> tuple[float, float]:
    """The LR multiplier and Muon momentum that optimizer step ``step`` (0-based) receives in ``run``'s phase."""
    config = run.config
    lrm = lr_multiplier(step, run.num_iterations, config.schedule, kind=run.phase.schedule)
    momentum = muon_momentum(step, config.optimizer) if run.phase.ramp_momentum else config.optimizer.muon_momentum
    return lrm, momentum


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Runs ``run``'s steps with its phase's loss, calling each hook when due."""

    def __init__(self, run: RunSetup, batches, tracker, *, progress: bool):
        self.run, self.batches, self.tracker = run, batches, tracker
        self.state = run.state
        self.result = RunResult(run_dir=run.run_dir, step=run.start)
        self.hooks: list[Hook] = []
        self._research = run.config.logging.hdf5  # the step then takes a 5th argument: compute diagnostics?
        self.step_fn = build_train_step(run.graphdef, run.tx, run.mesh, run.shardings, LOSSES[run.phase.loss],
                                        diagnostics=self._research)
        peak = device_peak_flops(jax.devices()[0])
        self._peak_total = peak * jax.device_count() if peak else None
        self._bar = tqdm(total=run.num_iterations, initial=run.start, disable=not (progress and run.is_main),
                         desc=run.config.run_name, unit="step", dynamic_ncols=True)
        self._pending: tuple[int, dict, dict, tuple[bool, bool]] | None = None
        self._last_time = time.perf_counter()

    def diagnostics_due(self, step: int) -> tuple[bool, bool]:
        """Whether step ``step`` computes per-token statistics and per-layer statistics for the research log."""
        logging, final = self.run.config.logging, step == self.run.num_iterations - 1
        due = lambda every: logging.hdf5 and every > 0 and (step % every == 0 or final)  # noqa: E731
        return due(logging.hdf5_every), due(logging.hdf5_layers_every)

    def add_hook(self, hook: Hook) -> None:
        self.hooks.append(hook)

    def log(self, row: dict, *, scheduled: bool = True) -> None:
        if self.tracker is not None:
            self.tracker.log(row, scheduled=scheduled)

    def say(self, text: str) -> None:
        if self.run.is_main and not self._bar.disable:
            self._bar.write(text)

    def _flush(self) -> None:
        """Read the pending step's metrics: stop on a non-finite loss, log, update the bar."""
        if self._pending is None:
            return
        (step, metrics, stats, due), self._pending = self._pending, None
        loss = float(metrics["loss"])
        now = time.perf_counter()
        dt, self._last_time = now - self._last_time, now
        if not math.isfinite(loss) or not bool(metrics["params_finite"]):
            good = self.run.checkpointer.latest_step()
            what = f"the loss became {loss}" if not math.isfinite(loss) else "the parameters became non-finite"
            raise TrainingError(
                f"{what} at step {step}; stopped without saving, the last good checkpoint "
                f"({'none yet' if good is None else f'step {good}'}) in {self.run.run_dir} is kept; lower the "
                "learning rates or enable optimizer.grad_clip")
        self.result.losses[step] = loss
        tokens = self.run.config.training.total_batch_tokens
        row = {"step": step, "loss": loss, "lr_multiplier": float(metrics["lr_multiplier"]),
               "muon_momentum": float(metrics["muon_momentum"]), "grad_norm": float(metrics["grad_norm"]),
               "scored_tokens": int(metrics["scored_tokens"]), "tokens_per_s": tokens / dt, "step_seconds": dt}
        if self._peak_total:
            row["mfu"] = flops_per_token(self.run.config.model) * tokens / dt / self._peak_total
        row.update(stats)
        if any(due) and self.tracker is not None:
            row["diagnostics"] = {name: jax.device_get(metrics["diagnostics"][name])
                                  for name, wanted in zip(("tokens", "layers"), due) if wanted}
        self.log(row, scheduled=step % self.run.config.logging.log_every == 0 or step == self.run.num_iterations - 1)
        postfix = {"loss": f"{loss:.4f}", "tok/s": f"{row['tokens_per_s']:,.0f}"}
        if "mfu" in row:
            postfix["mfu"] = f"{100 * row['mfu']:.1f}%"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def fit(self) -> RunResult:
        run = self.run
        with _StopRequest() as stop:
            for step in range(run.start, run.num_iterations + 1):
                last = step == run.num_iterations
                due = [h for h in self.hooks if h.due(step, run.start, last, run.is_main)]
                if due or stop.signal is not None:
                    self._flush()
                for hook in due:
                    hook.fn(self, step)
                self.result.step = step
                if stop.signal is not None:
                    save_checkpoint(self, step)
                    self.result.signal = stop.signal
                    self.say(f"received {signal.Signals(stop.signal).name}: saved step {step} to {run.run_dir}")
                    break
                if last:
                    break
                lrm, momentum = schedule(run, step)
                due = self.diagnostics_due(step)
                args = (self.state, next(self.batches), np.float32(lrm), np.float32(momentum))
                self.state, metrics = self.step_fn(*args, *([np.bool_(any(due))] if self._research else []))
                self._flush()  # the previous step's metrics, while this one runs
                self._pending = (step, metrics, dict(getattr(self.batches, "last", {})), due)
            self._flush()
        return self.result

    def close(self) -> None:
        self._bar.close()


def _trackers(run: RunSetup) -> Trackers | None:
    if not run.is_main:
        return None
    config = run.config
    trackers: list = [JsonlTracker(run.run_dir / "metrics.jsonl", run.start)]
    if config.logging.hdf5:
        from revjax.tracking.hdf5 import FILENAME, Hdf5Tracker, run_attrs

        trackers.append(Hdf5Tracker(run.run_dir / FILENAME, run.start, run_attrs(config)))
    if config.logging.wandb != "disabled":
        trackers.append(WandbTracker(project=config.logging.project, name=config.run_name, mode=config.logging.wandb,
                                     directory=run.run_dir, config=config.to_dict()))
    return Trackers(trackers)


def train(config: Config, *, progress: bool | None = None) -> RunResult:
    """Run (or continue) the configured training run; returns where it ended and what it measured."""
    maybe_initialize_distributed()
    use_compilation_cache(config.base_path())
    start_time = time.time()
    show = config.logging.progress if progress is None else progress
    lock = RunLock(config.checkpoint_path(), "training", create=True) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock, contextlib.ExitStack() as stack:
        run = prepare_run(config)
        stack.callback(run.checkpointer.close)
        if run.is_main:
            print(f"resuming {run.run_dir} from step {run.start}" if run.start else
                  f"starting {run.run_dir}" + (f" from the parameters of {run.parent['run']}" if run.parent else ""))
        batches = build_batches(run)
        stack.callback(batches.close)
        tracker = _trackers(run)
        if tracker is not None:
            stack.callback(tracker.close)
        trainer = Trainer(run, batches, tracker, progress=show)
        stack.callback(trainer.close)
        if run.phase.data == "rollouts":
            batches.bind(lambda: trainer.state.params)
        for make in (rl_eval_hook if run.phase.data == "rollouts" else eval_hook, suite_hook, sample_hook,
                     checkpoint_hook):
            trainer.add_hook(make(trainer))
        result = trainer.fit()
    result.seconds = time.time() - start_time
    return result


def exit_code(result: RunResult) -> int:
    """0 for a finished run; 128 + the signal number for one stopped by a signal (what schedulers expect)."""
    return 128 + result.signal if result.signal is not None else 0


def run_from_args(argv: list[str] | None = None, *, on_result: Callable[[RunResult], None] | None = None) -> int:
    """``python -m revjax.train`` / ``revjax train``: ``--config FILE`` (repeatable) and ``key=value`` overrides."""
    from revjax.config_args import config_from_args
    from revjax.errors import run_command

    parser = argparse.ArgumentParser(prog="python -m revjax.train", description="Train (or continue) a revjax model.")
    parser.add_argument("--config", action="append", metavar="FILE", help="YAML config (repeatable)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    outcome: list[RunResult] = []
    code = run_command("revjax.train", lambda: outcome.append(train(config_from_args(args, ["default"]))))
    if code or not outcome:
        return code
    if on_result:
        on_result(outcome[0])
    print(outcome[0].summary(), flush=True)
    return exit_code(outcome[0])
