"""The training loop shared by every phase: batches → sharded step (the phase's loss) → metrics, with hooks.

The loop dispatches step N before it reads step N−1's metrics, so the host never stalls the device except to
log. Evaluation, samples and checkpoints are hooks (:mod:`revjax.train.hooks`, added with
:meth:`Trainer.add_hook`); what they return is logged to the run's trackers and recorded in its :class:`RunResult`. A restarted run continues from the newest intact checkpoint and reproduces an
uninterrupted run step for step. A non-finite loss stops the run before anything is saved, so the last good
checkpoint is kept; SIGTERM/SIGINT save, say so, and the command exits 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from revjax.config import Config
from revjax.model import flops_per_token
from revjax.optim import NANOCHAT_2026, lr_multiplier, muon_momentum, optimizer_recipe
from revjax.optim_2026 import MUON_WEIGHT_DECAY, base_schedule, run_horizon
from revjax.train.errors import TrainingError
from revjax.train.hooks import EVALUATION, Cadence, Hook, HookFn, StepInfo, default_hooks
from revjax.train.setup import RunSetup, save_checkpoint, setup_run
from revjax.train.sources import DATA_SOURCES
from revjax.train.step import LOSSES, build_train_step

# Dense bf16 peak FLOP/s per device, by device kind (substring match, lower case).
PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "h800": 989e12, "a100": 312e12, "l4": 121e12, "v5p": 459e12,
              "v5 lite": 197e12, "v5e": 197e12, "v6": 918e12, "v4": 275e12}


RESULT_FILE = "result.json"  # what a finished run measured (RunResult.save)
RECORDED = ("step", "val_bpb", "val_bpb_step", "val_loss", "evals", "samples", "seconds")


# the progress bar until the first step completes: steps done and "compiling…" instead of a rate and an ETA
COMPILING_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [compiling…]"


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
    hooks: dict[str, dict] = field(default_factory=dict)  # hook name → {"step", …what it returned last}

    @property
    def interrupted(self) -> bool:
        return self.signal is not None

    def record(self, name: str, step: int, out: dict) -> None:
        """Keep what hook ``name`` returned at ``step``: the phase's evaluation (val bpb and loss, or another
        measure such as RL's pass@k) and the samples have fields of their own."""
        self.hooks[name] = {"step": step, **out}
        if "samples" in out:
            self.samples = out["samples"]
        if name != EVALUATION:
            return
        if "val_bpb" in out:
            self.val_bpb, self.val_bpb_step, self.val_loss = out["val_bpb"], step, out.get("val_loss")
        else:
            self.evals = {**out, "step": step}

    def save(self) -> Path:
        """Write what the run measured (steps, evaluations, samples, seconds; not the loss of every step) to
        ``<run_dir>/result.json``, which :meth:`load` reads back (a finished chain prints it again)."""
        data = {"step": self.step, "val_bpb": self.val_bpb, "val_bpb_step": self.val_bpb_step,
                "val_loss": self.val_loss, "evals": self.evals, "samples": self.samples, "seconds": self.seconds}
        path = Path(self.run_dir) / RESULT_FILE
        tmp = path.with_name(f".{RESULT_FILE}.{os.getpid()}.part")
        tmp.write_text(json.dumps(data, indent=2, default=float), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, run_dir: Path) -> "RunResult | None":
        """The result :meth:`save` recorded in ``run_dir``, or None when there is none (or it cannot be read)."""
        try:
            data = json.loads((Path(run_dir) / RESULT_FILE).read_text(encoding="utf-8"))
            return cls(run_dir=Path(run_dir), **{k: data[k] for k in RECORDED})
        except (OSError, ValueError, KeyError, TypeError):
            return None

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


def schedule(run: RunSetup, step: int) -> tuple[float, ...]:
    """The LR multiplier and Muon momentum that optimizer step ``step`` (0-based) receives in ``run``'s phase, and
    under the nanochat-2026 optimizer its Muon weight decay: in pretraining nanochat's three schedules
    (:func:`revjax.optim_2026.base_schedule`, the decay scaled to the run's horizon), in later phases the phase's
    LR schedule and momentum and no weight decay (as nanochat's SFT)."""
    config = run.config
    recipe_2026 = optimizer_recipe(config.optimizer, config.model) == NANOCHAT_2026
    if recipe_2026 and run.phase.schedule == "base":
        return base_schedule(step, run.num_iterations, config, run_horizon(config).weight_decay)
    lrm = lr_multiplier(step, run.num_iterations, config.schedule, kind=run.phase.schedule)
    momentum = muon_momentum(step, config.optimizer) if run.phase.ramp_momentum else config.optimizer.muon_momentum
    return (lrm, momentum, 0.0) if recipe_2026 else (lrm, momentum)


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


def _loggable(out: dict) -> dict:
    """The entries of a hook's result that go to the trackers (numbers, strings, None; not samples or tables)."""
    return {k: v for k, v in out.items() if not isinstance(v, (dict, list, tuple))}


class Trainer:
    """Runs ``run``'s steps with its phase's loss, calling each hook when due and recording what it returns."""

    def __init__(self, run: RunSetup, *, progress: bool):
        self.run, self.batches, self.tracker = run, run.batches, run.tracker
        self.state = run.state
        self.result = RunResult(run_dir=run.run_dir, step=run.start)
        self.hooks: list[Hook] = []
        self._research = run.config.logging.hdf5  # the step then takes a 5th argument: compute diagnostics?
        self.step_fn = build_train_step(run.graphdef, run.tx, run.mesh, run.shardings, LOSSES[run.phase.loss],
                                        diagnostics=self._research)
        peak = device_peak_flops(jax.devices()[0])
        self._peak_total = peak * jax.device_count() if peak else None
        self._show = progress and run.is_main
        # a run finished before shows no bar (its hooks' lines would redraw it once each), only what they print
        self._bar = tqdm(total=run.num_iterations, initial=run.start,
                         disable=not self._show or run.start >= run.num_iterations, desc=run.config.run_name,
                         unit="step", dynamic_ncols=True, bar_format=COMPILING_FORMAT)
        self._compiling = True  # until the first step completes: no rate or ETA (they would count the compilation)
        self._pending: tuple[int, dict, dict, tuple[bool, bool]] | None = None
        self._last_time = self._start_time = time.perf_counter()
        self._last_row: dict = {}

    def diagnostics_due(self, step: int) -> tuple[bool, bool]:
        """Whether step ``step`` computes per-token statistics and per-layer statistics for the research log."""
        logging, final = self.run.config.logging, step == self.run.num_iterations - 1
        due = lambda every: logging.hdf5 and every > 0 and (step % every == 0 or final)  # noqa: E731
        return due(logging.hdf5_every), due(logging.hdf5_layers_every)

    def add_hook(self, fn: HookFn | Hook, every: int = 0, *, name: str | None = None, at_end: bool = True,
                 at_zero: bool = True, at_resume: bool = True, main_only: bool = False) -> Hook:
        """Call ``fn(StepInfo)`` every ``every`` steps (see :class:`revjax.train.hooks.Cadence` for the flags);
        what it returns (a dict of metrics, or None) is logged and recorded in the result."""
        hook = fn if isinstance(fn, Hook) else Hook(name or getattr(fn, "__name__", "hook"), fn,
                                                    Cadence(every, at_end, at_zero, at_resume), main_only)
        self.hooks.append(hook)
        return hook

    def log(self, row: dict, *, scheduled: bool = True) -> None:
        if self.tracker is not None:
            self.tracker.log(row, scheduled=scheduled)

    def say(self, text: str) -> None:
        if self._show:
            self._bar.write(text) if not self._bar.disable else print(text, flush=True)

    def _run_hook(self, hook: Hook, step: int, last: bool) -> None:
        info = StepInfo(step, self.state, dict(self._last_row), time.perf_counter() - self._start_time, last)
        out = hook.fn(info)
        if not out:
            return
        self.result.record(hook.name, step, out)
        scalars = _loggable(out)
        if scalars:
            self.log({"step": step, **scalars})
            shown = [f"{k} {v:.4f}" for k, v in scalars.items() if isinstance(v, float) and k.count("/") <= 1]
            self.say(f"step {step}: " + ", ".join(shown))
        for way, texts in out.get("samples", {}).items():
            for text in texts:
                self.say(f"  [{way}] {text!r}")

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
        if MUON_WEIGHT_DECAY in metrics:
            row[MUON_WEIGHT_DECAY] = float(metrics[MUON_WEIGHT_DECAY])
        if self._peak_total:
            row["mfu"] = flops_per_token(self.run.config.model) * tokens / dt / self._peak_total
        row.update(stats)
        self._last_row = dict(row)
        if any(due) and self.tracker is not None:
            row["diagnostics"] = {name: jax.device_get(metrics["diagnostics"][name])
                                  for name, wanted in zip(("tokens", "layers"), due) if wanted}
        self.log(row, scheduled=step % self.run.config.logging.log_every == 0 or step == self.run.num_iterations - 1)
        # RL's policy-gradient loss (advantage-weighted, about zero on average) keeps its digits
        postfix = {"loss": f"{loss:.4f}" if loss == 0 or abs(loss) >= 1e-3 else f"{loss:.2e}", "tok/s": f"{row['tokens_per_s']:,.0f}"}
        if isinstance(stats.get("reward"), (int, float)):  # RL: the mean reward its loss weighs samples by
            postfix["reward"] = f"{stats['reward']:.3f}"
        if "mfu" in row:
            postfix["mfu"] = f"{100 * row['mfu']:.1f}%"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)
        if self._compiling:  # time the bar from the first completed step: its rate and ETA leave compilation out
            self._compiling = False
            done = self._bar.n
            self._bar.bar_format = None
            self._bar.reset(self._bar.total)
            self._bar.n = self._bar.last_print_n = self._bar.initial = done
            self._bar.refresh()

    def _stop(self, step: int, signum: int) -> None:
        save_checkpoint(self.run, self.state, step, self.result.val_bpb)
        self.result.signal = signum
        self.say(f"received {signal.Signals(signum).name}: saved step {step} to {self.run.run_dir}")

    def fit(self) -> RunResult:
        run = self.run
        with _StopRequest() as stop:
            for step in range(run.start, run.num_iterations + 1):
                last = step == run.num_iterations
                due = [h for h in self.hooks if h.due(step, run.start, last, run.is_main)]
                if due or stop.signal is not None:
                    self._flush()
                for hook in due:
                    self._run_hook(hook, step, last)
                self.result.step = step
                if stop.signal is not None:
                    self._stop(step, stop.signal)
                    break
                if last:
                    break
                scalars = schedule(run, step)
                due = self.diagnostics_due(step)
                args = (self.state, next(self.batches), *(np.float32(v) for v in scalars))
                self.state, metrics = self.step_fn(*args, *([np.bool_(any(due))] if self._research else []))
                self._flush()  # the previous step's metrics, while this one runs
                self._pending = (step, metrics, dict(getattr(self.batches, "last", {})), due)
            self._flush()
        return self.result

    def close(self) -> None:
        self._bar.close()


def checkpoint_hook(trainer: Trainer) -> Hook:
    """Save a checkpoint every ``checkpoint.save_every`` steps (not at the step the run restarted from) and last."""
    def save(info: StepInfo) -> None:
        save_checkpoint(trainer.run, info.state, info.step, trainer.result.val_bpb)

    return Hook("checkpoint", save, Cadence(trainer.run.config.checkpoint.save_every, at_resume=False))


def train(config: Config, *, progress: bool | None = None) -> RunResult:
    """Run (or continue) the configured training run; returns where it ended and what it measured."""
    start_time = time.time()
    show = config.logging.progress if progress is None else progress
    with contextlib.ExitStack() as stack:
        run = setup_run(config, stack)
        trainer = Trainer(run, progress=show)
        stack.callback(trainer.close)
        source = DATA_SOURCES[run.phase.data]
        if source.samples_params:
            run.batches.bind(lambda: trainer.state.params)
        for hook in [*default_hooks(run, source.evaluation), checkpoint_hook(trainer)]:
            trainer.add_hook(hook)
        result = trainer.fit()
        again = run.start >= run.num_iterations  # finished before: keep what its training recorded
        record = run.is_main and not result.interrupted and not (again and (run.run_dir / RESULT_FILE).exists())
    result.seconds = time.time() - start_time
    if record:
        result.save()
    return result


def exit_code(result: RunResult) -> int:
    """0 for a finished run; 128 + the signal number for one stopped by a signal (what schedulers expect)."""
    return 128 + result.signal if result.signal is not None else 0

