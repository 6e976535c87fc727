"""Setting a run up, in one entry (:func:`setup_run`): distributed start, compilation cache, run-folder lock,
tokenizer, mesh, batch geometry, the state to start from, the training batches and the trackers; and the
checkpoint metadata a run reads back and writes (:func:`save_checkpoint`).

:func:`prepare_run` returns one :class:`RunSetup` whatever the start: fresh parameters, the newest intact checkpoint
of this run (or the step named by ``checkpoint.resume_step``), or another run's parameters (``training.init_from``).
Nothing is ever deleted: steps that must leave the way (damaged ones, newer ones than a chosen step, or all of them
with ``checkpoint.start_over``) are moved into ``set-aside/``, together with the metrics log on a start-over.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from revjax import sharding as shd
from revjax.checkpoint import SET_ASIDE, Checkpointer, CheckpointError
from revjax.runs import build_metadata, check_compatible, read_params
from revjax.compilation import use_compilation_cache
from revjax.config import Config
from revjax.model import flops_per_token, num_params
from revjax.horizon import scaling_params
from revjax.optim import NANOCHAT_2026, build_optimizer, optimizer_recipe
from revjax.phases import PHASES, Phase
from revjax.runlock import RunLock
from revjax.tokenizer import Tokenizer, TokenizerError
from revjax.tracking import JsonlTracker, Trackers, WandbTracker
from revjax.state import TrainState, init_train_state, train_state_shardings
from revjax.train.errors import TrainingError
from revjax.train.sources import build_batches, mixture_epoch
from revjax.train.step import accumulation_steps


@dataclass
class RunSetup:
    config: Config
    phase: Phase
    tokenizer: Tokenizer
    mesh: Mesh
    tx: optax.GradientTransformation
    graphdef: nnx.GraphDef
    state: TrainState
    shardings: TrainState
    checkpointer: Checkpointer
    start: int  # the step the run continues from (0 when fresh)
    data_state: dict | None  # the data iterator's state to continue from, if any
    num_iterations: int
    accum: int  # micro-batches per optimizer step
    local_rows: int  # rows of a micro-batch read by this process
    parent: dict | None  # {"run", "step", "phase"} of the run this one started from
    train_source: Any = None  # the task mixture a conversation phase trains on
    batches: Any = None  # the training batches (setup_run builds them)
    tracker: Trackers | None = None  # where metrics go (process 0 only)

    @property
    def run_dir(self) -> Path:
        return self.checkpointer.directory

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0


def maybe_initialize_distributed() -> None:
    """Join a multi-process run when REVJAX_COORDINATOR, REVJAX_NUM_PROCESSES and REVJAX_PROCESS_ID are set."""
    address = os.environ.get("REVJAX_COORDINATOR")
    if address and not jax.distributed.is_initialized():
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=int(os.environ["REVJAX_NUM_PROCESSES"]),
            process_id=int(os.environ["REVJAX_PROCESS_ID"]),
        )


def resolve_num_iterations(config: Config, epoch: Callable[[], int] | None = None) -> int:
    """Explicit training.num_iterations; else one epoch of a conversation phase's mixture (``epoch()`` steps); else
    from target_flops, else the tokens:params ratio (nanochat's order; the nanochat-2026 recipe counts only its
    scaling parameters, :func:`revjax.horizon.scaling_params`)."""
    t = config.training
    if t.num_iterations > 0:
        return t.num_iterations
    if epoch is not None:
        return epoch()
    if t.target_flops > 0:
        return max(1, round(t.target_flops / (flops_per_token(config.model) * t.total_batch_tokens)))
    recipe_2026 = optimizer_recipe(config.optimizer, config.model) == NANOCHAT_2026
    params = scaling_params(config.model) if recipe_2026 else num_params(config.model)
    return max(1, int(t.target_param_data_ratio * params) // t.total_batch_tokens)


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


def _abstract_tree(state: TrainState) -> dict:
    return {"params": state.params, "opt_state": state.opt_state}


def _start_over(checkpointer: Checkpointer, steps: list[int]) -> None:
    for step in steps:
        checkpointer.set_aside(step, "start-over")
    log = checkpointer.directory / "metrics.jsonl"
    if log.exists():
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        target = checkpointer.directory / SET_ASIDE / f"metrics-{stamp}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(log), str(target))
        warnings.warn(f"moved the metrics log to {target}", stacklevel=2)


def _resume(config: Config, tokenizer: Tokenizer, checkpointer: Checkpointer, tx, mesh: Mesh):
    """(graphdef, state, shardings, step, data_state) of the step to continue from; newer steps are set aside."""
    ck = config.checkpoint
    chosen = None if ck.resume_step < 0 else ck.resume_step
    steps = checkpointer.steps()
    if chosen is not None and chosen not in steps:
        raise CheckpointError(f"checkpoint.resume_step={chosen} is not a step in {checkpointer.directory} "
                              f"(steps: {steps})")
    newest_readable = chosen if chosen is not None else checkpointer.latest_step()
    if newest_readable is not None:
        check_compatible(checkpointer.metadata(newest_readable), direction=config.direction.direction,
                         tokenizer_identity=tokenizer.identity(), model_config=config.model.gpt_config(),
                         force=ck.force, unit=config.direction.unit)
    graphdef, abstract, shardings = train_state_shardings(config.model, tx, mesh)
    restored, data_state, meta = checkpointer.restore(_abstract_tree(abstract), chosen)
    step = int(meta["step"])
    for newer in (s for s in steps if s > step):
        checkpointer.set_aside(newer, "superseded" if chosen is not None else "damaged")
    saved = (meta.get("direction"), meta.get("unit", "token"), meta.get("tokenizer_identity"))
    if saved != (config.direction.direction, config.direction.unit, tokenizer.identity()):
        data_state = None  # a forced change of direction, unit or tokenizer starts the data stream afresh
    return graphdef, TrainState(restored["params"], restored["opt_state"]), shardings, step, data_state


def _init_from(config: Config, tokenizer: Tokenizer) -> tuple[Any, dict]:
    """The parameters of the newest intact checkpoint of ``training.init_from`` and the parent's lineage record."""
    params, meta, origin = read_params(config.training.init_from)
    check_compatible(meta, direction=config.direction.direction, tokenizer_identity=tokenizer.identity(),
                     force=config.checkpoint.force, unit=config.direction.unit)
    shape_keys = ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
    if any(getattr(origin.model, k) != getattr(config.model, k) for k in shape_keys):
        raise TrainingError(
            f"the model in {config.training.init_from} ({origin.model.gpt_config()}) differs from model.* "
            f"({config.model.gpt_config()}); use the same sizes as the run it starts from"
        )
    parent = {"run": str(Path(config.training.init_from).expanduser().resolve()), "step": int(meta["step"]),
              "phase": meta.get("phase")}
    return params, parent


def prepare_run(config: Config) -> RunSetup:
    """Everything the loop needs to start or continue ``config``'s run (the caller holds the run-folder lock)."""
    tokenizer = load_tokenizer(config)
    mesh = shd.make_mesh(config.mesh)
    dp = shd.data_parallel_size(mesh)
    T, B = config.model.sequence_len, config.training.device_batch_size
    accum = accumulation_steps(config.training.total_batch_tokens, B, T, dp)
    rows, n_proc = B * dp, jax.process_count()
    if rows % n_proc:
        raise TrainingError(f"{rows} rows per micro-batch cannot be split over {n_proc} processes")
    tx = build_optimizer(config.optimizer, config.model, init_lr_frac=config.schedule.init_lr_frac,
                         batch_tokens=config.training.total_batch_tokens)
    checkpointer = Checkpointer(config.checkpoint_path(), keep=config.checkpoint.keep)
    steps = checkpointer.steps()
    if steps and config.checkpoint.start_over:
        _start_over(checkpointer, steps)
        steps = []
    data_state, start, parent = None, 0, None
    if steps:
        graphdef, state, shardings, start, data_state = _resume(config, tokenizer, checkpointer, tx, mesh)
        parent = checkpointer.metadata(start).get("parent")
    elif config.training.init_from:
        params, parent = _init_from(config, tokenizer)
        graphdef, state, shardings = init_train_state(config.model, tx, mesh, params=params)
    else:
        graphdef, state, shardings = init_train_state(config.model, tx, mesh, seed=config.training.seed)
    phase = PHASES[config.training.phase]
    source, epoch = mixture_epoch(config, phase, tokenizer)
    return RunSetup(config=config, phase=phase, tokenizer=tokenizer, mesh=mesh, tx=tx, graphdef=graphdef,
                    state=state, shardings=shardings, checkpointer=checkpointer, start=start, data_state=data_state,
                    num_iterations=resolve_num_iterations(config, epoch), accum=accum, local_rows=rows // n_proc,
                    parent=parent, train_source=source)


def metrics_log(run: RunSetup):
    return JsonlTracker(run.run_dir / "metrics.jsonl", run.start)


def research_log(run: RunSetup):
    if not run.config.logging.hdf5:
        return None
    from revjax.tracking.hdf5 import FILENAME, Hdf5Tracker, run_attrs

    return Hdf5Tracker(run.run_dir / FILENAME, run.start, run_attrs(run.config))


def weights_and_biases(run: RunSetup):
    config = run.config
    if config.logging.wandb == "disabled":
        return None
    return WandbTracker(project=config.logging.project, name=config.run_name, mode=config.logging.wandb,
                        directory=run.run_dir, config=config.to_dict())


# What records a run's metrics on process 0: each row builds its tracker for a run, or None where it is switched off.
TRACKERS = {"metrics.jsonl": metrics_log, "research.h5": research_log, "wandb": weights_and_biases}


def trackers(run: RunSetup) -> Trackers | None:
    """The trackers of :data:`TRACKERS` switched on for the run, on process 0."""
    if not run.is_main:
        return None
    return Trackers([t for build in TRACKERS.values() if (t := build(run)) is not None])


def setup_run(config: Config, stack: contextlib.ExitStack) -> RunSetup:
    """The one set-up entry: join a distributed run, use the compilation cache, lock the run folder, build or
    restore the state (fresh, resume, init_from), open the batches and the trackers; ``stack`` closes them."""
    maybe_initialize_distributed()
    use_compilation_cache(config.base_path())
    if jax.process_index() == 0:
        stack.enter_context(RunLock(config.checkpoint_path(), "training", create=True))
    run = prepare_run(config)
    stack.callback(run.checkpointer.close)
    if run.is_main:
        print(f"resuming {run.run_dir} from step {run.start}" if run.start else
              f"starting {run.run_dir}" + (f" from the parameters of {run.parent['run']}" if run.parent else ""))
    run.batches = build_batches(run)
    stack.callback(run.batches.close)
    run.tracker = trackers(run)
    if run.tracker is not None:
        stack.callback(run.tracker.close)
    return run


def save_checkpoint(run: RunSetup, state: TrainState, step: int, val_bpb: float | None) -> None:
    """Save the train state, data position and metadata as ``step`` (a committed step is never rewritten)."""
    config = run.config
    metadata = build_metadata(
        step=step, direction=config.direction.direction, unit=config.direction.unit, phase=config.training.phase,
        model_config=config.model.gpt_config(), config=config.with_absolute_paths().to_dict(),
        tokenizer_identity=run.tokenizer.identity(), tokenizer_path=str(config.tokenizer_path()), val_bpb=val_bpb)
    metadata["finished"] = step == run.num_iterations
    if run.parent is not None:
        metadata["parent"] = run.parent
    run.checkpointer.save(step, {"params": state.params, "opt_state": state.opt_state},
                          data_state=run.batches.get_state(), metadata=metadata)
