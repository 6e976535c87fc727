"""Checkpoints: a thin layer over Orbax's ``CheckpointManager`` with clear failures.

Each step is a directory ``<directory>/<step>`` holding three Orbax items:

* ``state``: the training-state pytree (model and optimizer state), restored into the caller's layout;
* ``data``: the data-iterator state as JSON (``{"data_state": ...}``, so ``None`` round-trips);
* ``meta``: the run metadata as JSON (:func:`revjax.runs.build_metadata`), also copied into Orbax's custom metadata.

Nothing committed is ever lost:

* Orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it when complete, so an interrupted save
  never touches earlier steps and is never listed.
* A step that already exists is never rewritten: :meth:`Checkpointer.save` of a committed step is a no-op.
* Keep-N pruning runs only after a newer save has committed, and counts only steps whose metadata reads.
* The metadata records a checksum of every array (``checksums``: two 32-bit word sums, plain and position-weighted,
  computed on the devices, so the value does not depend on the device layout) and a SHA-256 of the data-iterator
  state. :meth:`Checkpointer.restore` verifies them; with no step given it falls back, step by step, to the newest
  *intact* one, warning about each damaged step it skips (unreadable metadata, missing or truncated files, a wrong
  checksum). If steps exist and none is intact it stops with :class:`NoIntactCheckpoint`.
* Steps that must leave the way (damaged ones, or newer ones when an earlier step is chosen) are moved into
  ``<directory>/set-aside/``, never deleted.

What a run's metadata holds, and loading a trained run (its parameters only), is :mod:`revjax.runs`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from revjax.errors import RevjaxError

PyTree = Any

STATE, DATA, META = "state", "data", "meta"
ITEMS = (STATE, DATA, META)
MAX_LISTED_DIFFERENCES = 3
CHECKSUMS, DATA_DIGEST = "checksums", "data_state_sha256"  # metadata keys
SET_ASIDE = "set-aside"  # where steps that must leave the way are moved


class CheckpointError(RevjaxError, RuntimeError):
    """A checkpoint cannot be saved, found or restored."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint belongs to a different direction, tokenizer or model than the current run."""


class NoIntactCheckpoint(CheckpointError):
    """Checkpoint steps exist but none of them is intact."""


class DamagedCheckpoint(CheckpointError):
    """One step is unreadable, incomplete or fails its checksums."""


def _word_sums(x: jax.Array) -> jax.Array:
    """``[Σ w, Σ (i+1)·w]`` mod 2³² over the array's bytes read as little words ``w``: any single flipped bit, and
    any swap of two unequal words, changes it. Integer sums wrap, so the result is the same for any reduction order
    and therefore for any sharding."""
    if x.dtype == jnp.bool_:
        words = x.astype(jnp.uint32)
    else:
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
        words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    words = words.reshape(-1)
    weights = jnp.arange(1, words.size + 1, dtype=jnp.uint32)
    return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * weights, dtype=jnp.uint32)])


_tree_word_sums = jax.jit(lambda tree: jax.tree.map(_word_sums, tree))


def checksums(tree: PyTree) -> dict[str, str]:
    """A checksum per array of ``tree`` (dotted path → 16 hex digits), computed where the arrays live."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    sums = _tree_word_sums([jnp.asarray(leaf) for _, leaf in leaves])
    host = [np.asarray(s if s.is_fully_addressable else s.addressable_data(0)) for s in sums]
    return {_path_name(path): f"{int(a):08x}{int(b):08x}" for (path, _), (a, b) in zip(leaves, host)}


def data_digest(data_state: Any) -> str:
    """SHA-256 of the data-iterator state's canonical JSON."""
    return hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).hexdigest()


def _reason(err: BaseException) -> str:
    """``Type: first line of the message``, shortened: enough to diagnose without Orbax's full dump."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _path_name(path: tuple) -> str:
    """A pytree key path as dotted text (``model.blocks.0.attn.c_q.kernel.value``)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def _shapes_and_dtypes(tree: PyTree) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Dotted path → (shape, dtype) of every leaf: arrays, abstract arrays or plain values."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    values = {_path_name(path): leaf if hasattr(leaf, "shape") and hasattr(leaf, "dtype") else np.asarray(leaf)
              for path, leaf in leaves}
    return {name: (tuple(v.shape), np.dtype(v.dtype)) for name, v in values.items()}


def _differences(stored: PyTree, expected: PyTree) -> list[str]:
    """How the arrays in a checkpoint differ from the expected (abstract) state, one phrase each."""
    have, want = _shapes_and_dtypes(stored), _shapes_and_dtypes(expected)
    diffs = [f"{name} is missing from the checkpoint" for name in sorted(want.keys() - have.keys())]
    diffs += [
        f"{name} is in the checkpoint but not in the expected state" for name in sorted(have.keys() - want.keys())
    ]
    for name in sorted(have.keys() & want.keys()):
        (shape, dtype), (want_shape, want_dtype) = have[name], want[name]
        if shape != want_shape:
            diffs.append(f"{name} has shape {shape} in the checkpoint but {want_shape} expected")
        if dtype != want_dtype:
            diffs.append(f"{name} has dtype {dtype} in the checkpoint but {want_dtype} expected")
    return diffs


def _require_json(value: Any, what: str, step: int, path: Path) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the {what} for checkpoint step {step} at {path} is not JSON-serializable "
                              f"({err})") from err


class Checkpointer:
    """Saves and restores training checkpoints under one directory, keeping the newest ``keep`` valid steps.

    Saves are asynchronous by default: :meth:`save` returns once the arrays are copied off the devices,
    and the write finishes in the background (call :meth:`wait` or :meth:`close` before exiting).
    Pruning to ``keep`` steps happens once a save has finished, at the next :meth:`save`, :meth:`wait`
    or :meth:`close` (at once when ``async_save=False``), so up to ``keep + 1`` complete steps can exist
    in between.
    """

    def __init__(self, directory: str | Path, *, keep: int = 2, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep={keep} must be at least 1")
        self.directory = Path(directory).expanduser().resolve()
        self.keep = keep
        self.async_save = async_save
        self._pending: int | None = None
        options = ocp.CheckpointManagerOptions(enable_async_checkpointing=async_save, create=True)
        handlers = {
            STATE: ocp.StandardCheckpointHandler(),
            DATA: ocp.JsonCheckpointHandler(),
            META: ocp.JsonCheckpointHandler(),
        }
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        except Exception as err:
            raise CheckpointError(f"cannot open the checkpoint directory {self.directory} ({_reason(err)})") from err

    def step_path(self, step: int) -> Path:
        """The directory of a finalized ``step``."""
        return self.directory / str(step)

    def save(self, step: int, state: PyTree, *, data_state: dict | None, metadata: dict) -> bool:
        """Start saving ``state``, ``data_state`` and ``metadata`` (plus checksums) as ``step``.

        A committed step is never rewritten: if ``step`` exists with readable metadata this returns False and
        writes nothing. A damaged step of that number is first moved into ``set-aside/``.
        """
        path = self.step_path(step)
        _require_json(metadata, "metadata", step, path)
        _require_json(data_state, "data-iterator state", step, path)
        self.wait()
        if step in self.steps():
            problem = self._problem(step)
            if problem is None:
                return False
            self.set_aside(step, "damaged", problem)
        metadata = {**metadata, CHECKSUMS: checksums(state), DATA_DIGEST: data_digest(data_state)}
        args = ocp.args.Composite(
            **{
                STATE: ocp.args.StandardSave(state),
                DATA: ocp.args.JsonSave({"data_state": data_state}),
                META: ocp.args.JsonSave(metadata),
            }
        )
        try:
            self._manager.save(step, args=args, force=True, custom_metadata=dict(metadata))
        except Exception as err:
            raise CheckpointError(f"saving checkpoint step {step} to {path} failed ({_reason(err)})") from err
        self._pending = step
        if not self.async_save:
            self.wait()
        return True

    def set_aside(self, step: int, reason: str, why: str = "") -> Path:
        """Move ``step``'s folder to ``set-aside/<step>-<reason>-<UTC time>`` (nothing is deleted); returns it."""
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        target = self.directory / SET_ASIDE / f"{step}-{reason}-{stamp}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.move(str(self.step_path(step)), str(target))
        except OSError as err:
            raise CheckpointError(f"cannot move checkpoint step {step} from {self.step_path(step)} to {target} "
                                  f"({err.strerror or err}); move or delete it by hand") from err
        warnings.warn(f"moved checkpoint step {step} to {target}" + (f": {why}" if why else ""), stacklevel=2)
        self._manager.reload()
        return target

    def wait(self) -> None:
        """Block until the save in flight (if any) is on disk, then prune to the newest ``keep`` valid steps."""
        step, self._pending = self._pending, None
        if step is None:
            return
        try:
            self._manager.wait_until_finished()
        except Exception as err:
            raise CheckpointError(
                f"saving checkpoint step {step} to {self.step_path(step)} failed ({_reason(err)})"
            ) from err
        self._prune()

    def steps(self) -> list[int]:
        """All finalized steps, ascending (unfinished saves are never listed; corrupt steps may be)."""
        self._manager.reload()
        steps = sorted(self._manager.all_steps())
        for step in steps:
            if self.step_path(step).is_symlink():
                raise CheckpointError(
                    f"checkpoint step {step} at {self.step_path(step)} is a symbolic link, but revjax keeps every step "
                    "as a folder of its own run folder (it moves and prunes them); replace the link with the folder "
                    "it points to, or move it out of the run folder")
        return steps

    def latest_step(self) -> int | None:
        """The newest valid step (steps with a missing item or unreadable metadata are skipped with a warning)."""
        for step in reversed(self.steps()):
            problem = self._problem(step)
            if problem is None:
                return step
            warnings.warn(f"skipping checkpoint step {step} at {self.step_path(step)}: {problem}", stacklevel=2)
        return None

    def metadata(self, step: int | None = None) -> dict:
        """The metadata of ``step`` (default: the newest valid step), read without loading any arrays."""
        return self._read_meta(self.resolve(step))

    def restore(self, abstract_state: PyTree, step: int | None = None) -> tuple[PyTree, dict | None, dict]:
        """``(state, data_state, metadata)`` of ``step``, or of the newest intact step when ``step`` is None.

        ``abstract_state`` gives the structure, shapes, dtypes and target shardings (leaves are
        ``jax.ShapeDtypeStruct`` with ``.sharding``, or arrays), so a checkpoint written on any device
        layout lands in the caller's layout. A difference in shapes, dtypes or keys raises
        :class:`CheckpointMismatch` at once (an older step would not match either); a damaged step raises
        :class:`DamagedCheckpoint` when it was asked for, and is skipped with a warning otherwise.
        """
        if step is not None:
            return self._restore_step(abstract_state, self.resolve(step))
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        skipped = []
        for candidate in reversed(steps):
            try:
                return self._restore_step(abstract_state, candidate)
            except DamagedCheckpoint as err:
                skipped.append(candidate)
                warnings.warn(f"skipping damaged {err}", stacklevel=2)
        raise NoIntactCheckpoint(
            f"none of the checkpoint steps {skipped} in {self.directory} is intact; move them away or set "
            "checkpoint.start_over=true to set them aside and train from step 0")

    def _restore_step(self, abstract_state: PyTree, step: int) -> tuple[PyTree, dict | None, dict]:
        path = self.step_path(step)
        metadata = self._read_meta(step)
        try:
            stored = self._manager.item_metadata(step)[STATE]
            if stored is None:
                raise FileNotFoundError("the array index is missing")
        except Exception as err:
            raise self.damaged(step, err) from err
        diffs = _differences(stored.tree, abstract_state)
        if diffs:
            listed = "; ".join(diffs[:MAX_LISTED_DIFFERENCES])
            more = len(diffs) - MAX_LISTED_DIFFERENCES
            listed += f"; and {more} more" if more > 0 else ""
            raise CheckpointMismatch(
                f"checkpoint step {step} at {path} does not match the state to restore ({listed}); "
                "check that the model and optimizer settings match the checkpoint's"
            )
        args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()})
        try:
            restored = self._manager.restore(step, args=args)
            data = restored[DATA]
            if not isinstance(data, dict) or "data_state" not in data:
                raise ValueError("the data-iterator item has no 'data_state' entry")
        except Exception as err:
            raise self.damaged(step, err) from err
        self._verify(step, restored[STATE], data["data_state"], metadata)
        return restored[STATE], data["data_state"], metadata

    def _verify(self, step: int, state: PyTree, data_state: Any, metadata: dict) -> None:
        """Compare the restored arrays and data state with the checksums saved in the metadata (if any)."""
        want = metadata.get(CHECKSUMS)
        if want is not None:
            got = checksums(state)
            bad = sorted(name for name in want.keys() | got.keys() if want.get(name) != got.get(name))
            if bad:
                more = f" and {len(bad) - MAX_LISTED_DIFFERENCES} more" if len(bad) > MAX_LISTED_DIFFERENCES else ""
                raise self.damaged(step, ValueError(
                    f"wrong checksum for {', '.join(bad[:MAX_LISTED_DIFFERENCES])}{more}"))
        if DATA_DIGEST in metadata and metadata[DATA_DIGEST] != data_digest(data_state):
            raise self.damaged(step, ValueError("wrong checksum for the data-iterator state"))

    def close(self) -> None:
        """Finish any save in flight, prune, and release Orbax's resources."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def resolve(self, step: int | None) -> int:
        if step is None:
            latest = self.latest_step()
            if latest is None:
                raise CheckpointError(f"no valid checkpoint found in {self.directory}")
            return latest
        steps = self.steps()
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory} (available steps: {steps})")
        return step

    def _read_meta(self, step: int) -> dict:
        try:
            return self._load_meta(step)
        except Exception as err:
            raise self.damaged(step, err) from err

    def _load_meta(self, step: int) -> dict:
        meta = self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
        if not isinstance(meta, dict):
            raise ValueError(f"the metadata is a {type(meta).__name__}, not a JSON object")
        return meta

    def _problem(self, step: int) -> str | None:
        """Why ``step`` is not valid (a missing item or unreadable metadata), or None if it is."""
        missing = [item for item in ITEMS if not (self.step_path(step) / item).is_dir()]
        if missing:
            return f"item(s) {', '.join(missing)} missing"
        try:
            self._load_meta(step)
        except Exception as err:
            return f"metadata unreadable ({_reason(err)})"
        return None

    def damaged(self, step: int, err: BaseException) -> DamagedCheckpoint:
        """The error that says ``step`` is damaged or incomplete, and why (``err``)."""
        return DamagedCheckpoint(
            f"checkpoint step {step} at {self.step_path(step)} is damaged or incomplete ({_reason(err)}); "
            "continue from an earlier step (checkpoint.resume_step) or move that folder away"
        )

    def _prune(self) -> None:
        """Delete every step older than the ``keep``-th newest valid step; invalid steps never count."""
        steps = self.steps()
        valid = [step for step in steps if self._problem(step) is None]
        if len(valid) <= self.keep:
            return
        oldest_kept = valid[-self.keep]
        for step in steps:
            if step < oldest_kept:
                self._manager.delete(step)
        self._manager.reload()

