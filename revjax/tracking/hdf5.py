"""The research log: ``<run>/research.h5``, an HDF5 file of appendable datasets (``logging.hdf5=true``).

Schema (version 1). Each group holds a ``step`` dataset (int64) and datasets of the same length whose row ``i``
belongs to ``step[i]``; every dataset is chunked, gzip-compressed and resizable along its first axis.

``/`` attributes
    ``schema`` = ``"revjax-research-log"``, ``version`` = 1, ``percentiles`` (the q of ``/tokens/percentiles``),
    ``groups`` (the parameter groups of ``/layers``), and what the run gives: ``run_name``, ``direction``,
    ``phase``, ``n_layer``, ``sequence_len``, ``vocab_size``, ``total_batch_tokens``, ``matrix_lr``,
    ``embedding_lr``, ``unembedding_lr``, ``hdf5_every``, ``hdf5_layers_every``, ``config`` (JSON).
``/train`` — every step, float64 (n,)
    ``loss``, ``lr_multiplier`` (each group's LR is its base LR times this), ``muon_momentum``, ``grad_norm``,
    ``tokens_per_s``, ``step_seconds``, ``scored_tokens``.
``/tokens`` — every ``logging.hdf5_every`` steps (and the last), over the step's scored tokens
    ``mean``, ``std``, ``max``, ``accuracy`` (argmax = target) (k,) float32, ``count`` (k,) int64,
    ``percentiles`` (k, P) float32, ``loss_by_position``, ``accuracy_by_position`` (k, T) float32 (NaN where no
    token at that input position is scored) and ``count_by_position`` (k, T) int64.
``/layers`` — every ``logging.hdf5_layers_every`` steps (and the last), from the gradients the optimizer read
    ``embedding``, ``head``, ``attention``, ``mlp``, ``scalars`` (m,) float32: L2 gradient norm of each parameter
    group (``scalars``: the 2026 recipe's lambdas and smear/backout parameters, 0 for the 2025 recipe);
    ``layer``, ``layer_attention``, ``layer_mlp`` (m, L): per block; ``activation_rms`` (m, L): RMS of the
    residual stream after each block, on the parameters before the update.
``/eval`` — the scalars of rows the evaluation hooks log (``val_bpb``, ``val_loss``, RL's ``val_pass@k`` and
    ``val_reward``, suite scores, with ``/`` in a name written as ``.``), float64, NaN where a row lacks a column.

Only process 0 writes. A writer thread appends the rows the loop queues, opening the file for each batch of rows
and closing it after, so a killed run leaves a readable file (except within a write). Opening the log for a run
that continues from step ``s`` keeps only the rows of steps before ``s`` in every group (they are logged again);
a file HDF5 cannot open, or the log of a run that starts again from step 0 (``checkpoint.start_over``, or killed
before its first checkpoint), is moved into ``<run>/set-aside/`` with a warning and a new one is started.
"""

from __future__ import annotations

import datetime
import json
import queue
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any

import h5py
import jax
import numpy as np

from revjax.tracking import TrackingError

FILENAME = "research.h5"
SCHEMA = "revjax-research-log"
VERSION = 1
DIAGNOSTICS = "diagnostics"  # the row key holding a step's diagnostic arrays ({"tokens": {...}, "layers": {...}})
TRAIN_COLUMNS = ("loss", "lr_multiplier", "muon_momentum", "grad_norm", "tokens_per_s", "step_seconds",
                 "scored_tokens")
GROUPS = ("train", "tokens", "layers", "eval")
_STOP = object()


def run_attrs(config) -> dict[str, Any]:
    """The root attributes a run's research log carries (a :class:`revjax.config.Config`)."""
    from revjax.train.diagnostics import GROUPS as PARAM_GROUPS, PERCENTILES

    m, o = config.model, config.optimizer
    return {"percentiles": np.asarray(PERCENTILES), "groups": list(PARAM_GROUPS), "run_name": config.run_name,
            "direction": config.direction.direction, "phase": config.training.phase, "n_layer": m.n_layer,
            "sequence_len": m.sequence_len, "vocab_size": m.vocab_size,
            "total_batch_tokens": config.training.total_batch_tokens, "matrix_lr": o.matrix_lr,
            "embedding_lr": o.embedding_lr, "unembedding_lr": o.unembedding_lr,
            "hdf5_every": config.logging.hdf5_every, "hdf5_layers_every": config.logging.hdf5_layers_every,
            "config": json.dumps(config.to_dict(), default=str)}


def _set_aside(path: Path, why: str) -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = path.parent / "set-aside" / f"{path.stem}-{stamp}{path.suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(target))
    warnings.warn(f"moved the research log {path} to {target}: {why}", stacklevel=3)
    return target


def truncate(path: Path, start: int) -> None:
    """Keep only the rows of steps before ``start`` in every group of the log at ``path``."""
    with h5py.File(path, "a", locking=False) as f:
        for group in f.values():
            if not isinstance(group, h5py.Group) or "step" not in group:
                continue
            keep = group["step"][...] < start
            if keep.all():
                continue
            for ds in group.values():
                kept = ds[...][keep[: ds.shape[0]]]
                ds.resize(len(kept), axis=0)
                ds[...] = kept


def _append(f: h5py.File, name: str, columns: dict[str, np.ndarray]) -> None:
    """Append one row (``columns``: name → value) to group ``name``; new columns are back-filled."""
    group = f.require_group(name)
    n = group["step"].shape[0] if "step" in group else 0
    for key, value in columns.items():
        value = np.asarray(value)
        if key not in group:
            fill = -1 if np.issubdtype(value.dtype, np.integer) else np.nan
            group.create_dataset(key, data=np.full((n, *value.shape), fill, value.dtype), maxshape=(None, *value.shape),
                                 chunks=(64, *value.shape), compression="gzip")
        ds = group[key]
        ds.resize(n + 1, axis=0)
        ds[n] = value
    for key, ds in group.items():  # columns this row lacks
        if ds.shape[0] == n:
            ds.resize(n + 1, axis=0)
            ds[n] = -1 if np.issubdtype(ds.dtype, np.integer) else np.nan


def split_row(row: dict[str, Any]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The (group, columns) appends one logged row makes."""
    step = np.int64(row["step"])
    if "loss" in row and "tokens_per_s" in row:
        out = [("train", {"step": step, **{k: np.float64(row[k]) for k in TRAIN_COLUMNS if k in row}})]
        for name, values in row.get(DIAGNOSTICS, {}).items():
            out.append((name, {"step": step, **{k: np.asarray(v) for k, v in values.items()}}))
        return out
    scalars = {k.replace("/", "."): np.float64(v) for k, v in row.items()
               if k != "step" and isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
    return [("eval", {"step": step, **scalars})] if scalars else []


class Hdf5Tracker:
    """A tracker writing ``path`` off the training thread; receives every step's row (``every_step``)."""

    every_step = True

    def __init__(self, path: str | Path, start: int, attrs: dict[str, Any] | None = None, *, interval: float = 1.0):
        self.path = Path(path)
        self.enabled = jax.process_index() == 0
        self._error: BaseException | None = None
        if not self.enabled:
            return
        try:
            if self.path.exists() and start == 0:  # a run (re)starting from scratch: keep the old log aside
                _set_aside(self.path, "the run starts from step 0")
            elif self.path.exists():
                try:
                    truncate(self.path, start)
                except OSError as err:
                    _set_aside(self.path, f"HDF5 cannot open it ({err})")
            with h5py.File(self.path, "a", locking=False) as f:
                f.attrs.update({"schema": SCHEMA, "version": VERSION, **(attrs or {})})
                for name in GROUPS[:3]:
                    f.require_group(name)
        except OSError as err:
            raise TrackingError(f"cannot write the research log {self.path} ({err})") from None
        self._queue: queue.Queue = queue.Queue()
        self._closing = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._write_loop, name="revjax-hdf5", daemon=True)
        self._thread.start()

    def _write_loop(self) -> None:
        done = False
        while not done:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done = batch[-1] is _STOP
            rows = [item for item in batch if item is not _STOP]
            if rows and self._error is None:
                try:
                    with h5py.File(self.path, "a", locking=False) as f:
                        for name, columns in rows:
                            _append(f, name, columns)
                except Exception as err:  # reported to the training thread by the next log() or close()
                    self._error = err
            if not done:
                self._closing.wait(self._interval)

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise TrackingError(f"cannot write the research log {self.path} ({err})") from None

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._raise_error()
        for item in split_row(row):
            self._queue.put(item)

    def close(self) -> None:
        """Write what is queued, close the file and stop the writer thread."""
        if not self.enabled or not self._thread.is_alive():
            return
        self._queue.put(_STOP)
        self._closing.set()
        self._thread.join()
        self._raise_error()
