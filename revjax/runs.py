"""Runs: what a checkpoint records about its run, and the one loader of a trained run.

* :func:`build_metadata`: the JSON metadata stored with every checkpoint step (:mod:`revjax.checkpoint` saves it);
* :func:`check_compatible`: refuse to continue a checkpoint of another direction, reversal unit, tokenizer or model;
* :func:`read_params`: only the parameters of a step, as numpy fp32 arrays, after the size and memory checks;
* :func:`load_run`: a :class:`TrainedRun` (config, metadata, tokenizer with its identity checked, direction,
  reversal unit, conversation mode, and the model's graphdef and parameters, or the metadata alone), optionally
  under the run lock. Evaluation, comparison, chat, serving, export and the report load runs through it.
"""

from __future__ import annotations

import contextlib
import datetime
import subprocess
import warnings
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

import revjax
from revjax.checkpoint import (CHECKSUMS, MAX_LISTED_DIFFERENCES, STATE, Checkpointer, CheckpointError,
                               CheckpointMismatch, DamagedCheckpoint, NoIntactCheckpoint, checksums)
from revjax.config import Config
from revjax.direction import Direction, Unit
from revjax.memory import check_dimensions, check_fits
from revjax.runlock import RunLock
from revjax.tokenizer import Tokenizer

PyTree = Any


@dataclass(eq=False)
class TrainedRun:
    """One step of a trained run. ``config``, ``tokenizer``, ``direction`` and ``mode`` are read from the metadata on
    first use (:func:`load_run` with weights reads them at once); ``arrays`` are the parameters as numpy fp32 (a pure
    dict), ``params`` the same as the model's ``nnx.State`` of jax arrays on the default device (made on first use),
    ``graphdef`` the model's graph; all three are None for a run loaded without weights."""

    run_dir: Path
    meta: dict
    arrays: dict | None = None
    graphdef: Any = None
    abstract: Any = field(default=None, repr=False)  # the model's abstract state, filled in by ``params``
    known_config: InitVar[Config | None] = None

    def __post_init__(self, known_config: Config | None) -> None:
        if known_config is not None:
            self.__dict__["config"] = known_config  # where cached_property keeps its value

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def where(self) -> str:
        return f"step {self.step} of {self.run_dir}"

    @cached_property
    def config(self) -> Config:
        return Config.from_dict(self.meta["config"], source=f"the metadata of {self.where}")

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The run's tokenizer, refused unless it is the one the run was trained with."""
        folder = self.meta.get("tokenizer_path") or str(self.config.tokenizer_path())
        if not Path(folder).expanduser().is_dir():
            raise CheckpointError(f"the tokenizer of {self.where} is not at {folder}; move it back or point the "
                                  "run at it")
        tokenizer = Tokenizer.load(folder)
        if self.meta.get("tokenizer_identity", tokenizer.identity()) != tokenizer.identity():
            raise CheckpointMismatch(f"the tokenizer at {folder} is not the one {self.where} was trained with (its "
                                     "identity differs); point tokenizer.dir at the right one")
        return tokenizer

    @cached_property
    def direction(self) -> Direction:
        return Direction.parse(self.meta.get("direction") or self.config.direction.direction)

    @cached_property
    def unit(self) -> Unit:
        """What the run's backward reading reverses (``token`` for runs saved before reversal units existed)."""
        return Unit.parse(self.meta.get("unit") or self.config.direction.unit)

    @cached_property
    def mode(self) -> str:
        """The conversation mode the run was trained with (``turn`` or ``sequence``)."""
        return self.config.direction.conversation

    @cached_property
    def params(self) -> Any:
        if self.arrays is None:
            return None
        import jax.numpy as jnp
        from flax import nnx

        nnx.replace_by_pure_dict(self.abstract, jax.tree.map(jnp.asarray, self.arrays))
        return self.abstract


def load_run(run_dir: str | Path, step: int | None = None, *, weights: bool = True, lock: bool = False,
             command: str = "eval", batch: int = 1) -> TrainedRun:
    """Step ``step`` of the revjax run folder ``run_dir``, or its newest intact step.

    With ``weights`` the model's dimensions and the memory ``command`` (``eval``, ``chat``, ``serve`` with ``batch``
    rows, ``export``) needs are checked first (:func:`read_params`), then the parameters are read (a damaged step is
    skipped with a warning unless ``step`` names it) and the tokenizer is loaded and checked. Without, only the
    metadata is read. ``lock`` holds the run folder's lock (:class:`revjax.runlock.RunLock`, for ``command``) while
    the run is read, so no training saves or sets steps aside meanwhile."""
    folder = Path(run_dir).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{run_dir} is not a folder; give a revjax run's checkpoint folder")
    with RunLock(folder, command) if lock else contextlib.nullcontext(), Checkpointer(folder) as checkpointer:
        if not weights:
            found = checkpointer.latest_step() if step is None else checkpointer.resolve(step)
            if found is None:
                raise NoIntactCheckpoint(f"{folder} holds no intact checkpoint")
            return TrainedRun(folder, checkpointer.metadata(found))
        arrays, meta, config, graphdef, abstract = _read(checkpointer, step, command, batch)
    run = TrainedRun(folder, meta, arrays, graphdef, abstract, config)
    run.tokenizer  # noqa: B018  (loaded and checked now: a wrong tokenizer is refused at load time)
    return run


def read_params(run_dir: str | Path, step: int | None = None, *, command: str = "export",
                batch: int = 1) -> tuple[dict, dict, Config]:
    """``(params, metadata, config)`` of step ``step`` of a revjax run folder, or of its newest intact step (damaged
    ones are skipped with a warning); only the parameters are read, as numpy fp32 arrays, and their checksums are
    verified.

    Before any array is read, the metadata's model dimensions are checked and the memory ``command`` needs for the
    model (``batch`` rows for chat/serve) is compared with what the machine has (:mod:`revjax.memory`); a
    :class:`revjax.memory.SizeError` says so in one sentence."""
    if not Path(run_dir).expanduser().is_dir():
        raise CheckpointError(f"{run_dir} is not a folder; give a revjax run's checkpoint folder")
    with Checkpointer(run_dir) as checkpointer:
        return _read(checkpointer, step, command, batch)[:3]


def _read(checkpointer: Checkpointer, step: int | None, command: str, batch: int):
    """``(params, metadata, config, graphdef, abstract state)`` of ``step`` or the newest intact step."""
    candidates = [checkpointer.resolve(step)] if step is not None else list(reversed(checkpointer.steps()))
    if not candidates:
        raise CheckpointError(f"{checkpointer.directory} holds no revjax checkpoint")
    for candidate in candidates:
        try:
            return _read_step(checkpointer, candidate, command, batch)
        except DamagedCheckpoint as err:
            if step is not None:
                raise
            warnings.warn(f"skipping damaged {err}", stacklevel=2)
    raise NoIntactCheckpoint(f"none of the checkpoint steps {candidates} in {checkpointer.directory} is intact")


def _read_step(checkpointer: Checkpointer, step: int, command: str, batch: int):
    from flax import nnx
    from jax.sharding import SingleDeviceSharding

    from revjax.model import GPT

    meta = checkpointer.metadata(step)
    where = f"the metadata of {checkpointer.step_path(step)}"
    if "config" not in meta:
        raise CheckpointError(f"{where} has no 'config'; it was not written by revjax's training loop")
    stored = meta["config"].get("model") if isinstance(meta["config"], Mapping) else None
    for dims in (meta.get("model_config"), stored):
        if isinstance(dims, Mapping):  # absurd sizes are refused before anything is built
            check_dimensions(dims, where)
    config = Config.from_dict(meta["config"], source=where)
    check_fits(config.model, command, batch=batch, where=f"the model of {checkpointer.step_path(step)}")
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: GPT(config.model, rngs=nnx.Rngs(0))))
    cpu = SingleDeviceSharding(jax.devices("cpu")[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), nnx.to_pure_dict(abstract))
    params = _restore_params(checkpointer, step, target, meta)
    return jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), params), meta, config, graphdef, abstract


def _restore_params(checkpointer: Checkpointer, step: int, target: PyTree, metadata: dict) -> PyTree:
    """Only the ``params`` subtree of ``step``'s state (in ``target``'s layout), checksums verified."""
    args = ocp.args.PyTreeRestore(item={"params": target}, partial_restore=True,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args({"params": target}))
    try:
        with ocp.PyTreeCheckpointer() as reader:
            params = reader.restore(checkpointer.step_path(step) / STATE, args=args)
    except Exception as err:
        raise checkpointer.damaged(step, err) from err
    want = {k: v for k, v in (metadata.get(CHECKSUMS) or {}).items() if k.startswith("params.")}
    if want:
        got = checksums(params)
        bad = sorted(name for name in want if want[name] != got.get(name))
        if bad:
            listed = ", ".join(bad[:MAX_LISTED_DIFFERENCES])
            raise checkpointer.damaged(step, ValueError(f"wrong checksum for {listed}"))
    return params["params"]


def check_compatible(
    metadata: Mapping,
    *,
    direction: str,
    tokenizer_identity: str,
    model_config: Mapping | None = None,
    force: bool = False,
    unit: str = "token",
) -> None:
    """Refuse to continue a checkpoint trained with another direction, reversal unit, tokenizer or model (any of
    ``model_config``'s keys, e.g. ``sequence_len``), unless ``force``; a checkpoint without a unit has ``token``."""
    wanted = [("direction", metadata.get("direction"), direction),
              ("unit", metadata.get("unit", "token"), str(Unit.parse(unit).value)),
              ("tokenizer_identity", metadata.get("tokenizer_identity"), tokenizer_identity)]
    stored_model = metadata.get("model_config") or {}
    wanted += [(f"model.{key}", stored_model.get(key), value) for key, value in (model_config or {}).items()]
    diffs = [f"{key} is {have!r} in the checkpoint but {want!r} in this run" for key, have, want in wanted
             if have != want]
    if not diffs:
        return
    where = f"checkpoint step {metadata.get('step')}"
    if force:
        warnings.warn(f"continuing {where} although {'; '.join(diffs)}, because force is set (checkpoint.force=true)",
                      stacklevel=2)
        return
    raise CheckpointMismatch(
        f"{where} cannot be continued by this run ({'; '.join(diffs)}); set checkpoint.force=true to continue it "
        "anyway"
    )


def _git_commit() -> str | None:
    """The commit of the repository revjax is imported from, or None outside a git checkout."""
    root = Path(revjax.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def build_metadata(
    *,
    step: int,
    direction: str,
    phase: str,
    model_config: dict,
    config: dict,
    tokenizer_identity: str,
    tokenizer_path: str,
    val_bpb: float | None,
    unit: str = "token",
) -> dict:
    """The JSON metadata stored with a checkpoint, plus the revjax version, git commit and UTC save time."""
    return {
        "step": int(step),
        "direction": direction,
        "unit": Unit.parse(unit).value,
        "phase": phase,
        "model_config": dict(model_config),
        "config": config,
        "tokenizer_identity": tokenizer_identity,
        "tokenizer_path": str(Path(tokenizer_path).expanduser().resolve()),
        "val_bpb": None if val_bpb is None else float(val_bpb),
        "revjax_version": revjax.__version__,
        "git_commit": _git_commit(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
