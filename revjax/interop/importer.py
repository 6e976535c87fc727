"""Import an onanchat/nanochat PyTorch checkpoint as a revjax checkpoint.

Accepts either onanchat's phase layout (``<root>/<phase>_checkpoints/<tag>/model_<step:06d>.pt`` and
``meta_<step:06d>.json``, tokenizer in ``<root>/tokenizer/``) or the flat release layout (``model.pt``,
``meta.json``, ``tokenizer.pkl``, ``token_bytes.pt`` in one folder). The result is a revjax run folder: a
checkpoint with a fresh optimizer state, a full revjax config in its metadata, and the tokenizer in
``<out_run_dir>/tokenizer/``, so ``training.init_from=<out_run_dir>`` can start from it.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from revjax.checkpoint import Checkpointer
from revjax.config import Config, MeshConfig
from revjax.errors import run_command
from revjax.interop.export import MODEL_CONFIG_KEYS, PHASE_DIRS, InteropError, torch_for
from revjax.replace import check_replaceable, output_path, publish_folder
from revjax.interop.state_dict import StateDictError, from_torch_layout
from revjax.runs import build_metadata
from revjax.tokenizer import Tokenizer

PHASES = {folder: phase for phase, folder in PHASE_DIRS.items()}
STEP_FILE = re.compile(r"model_(\d+)\.pt")
DIRECTIONS = ("forward", "backward", "bidirectional")


def locate(src: str | Path, step: int | None = None) -> tuple[Path, Path, Path, str | None]:
    """``(model file, meta file, tokenizer folder, phase or None)`` of an onanchat checkpoint in either layout."""
    src = Path(src).expanduser().resolve()
    if not src.is_dir():
        raise InteropError(f"{src} is not a folder holding an onanchat checkpoint")
    if (src / "model.pt").is_file() or (src / "meta.json").is_file():
        if step is not None:
            raise InteropError(f"{src} is a flat release folder with a single step; leave out the step")
        for name in ("model.pt", "meta.json"):
            if not (src / name).is_file():
                raise InteropError(f"{src} has no {name}; a flat checkpoint needs model.pt and meta.json side by side")
        return src / "model.pt", src / "meta.json", src, None
    steps = sorted(int(m.group(1)) for p in src.iterdir() if (m := STEP_FILE.fullmatch(p.name)))
    if not steps:
        raise InteropError(f"{src} holds neither model.pt + meta.json nor model_<step>.pt files")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise InteropError(f"{src} has no model_{step:06d}.pt (steps present: {steps})")
    meta = src / f"meta_{step:06d}.json"
    if not meta.is_file():
        raise InteropError(f"{src} has model_{step:06d}.pt but no {meta.name}")
    return src / f"model_{step:06d}.pt", meta, src.parent.parent / "tokenizer", PHASES.get(src.parent.name)


def read_meta(path: Path) -> dict:
    """onanchat's metadata, checking that ``model_config`` has exactly the six GPTConfig keys."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InteropError(f"{path} is not readable JSON ({err})") from None
    model_config = meta.get("model_config") if isinstance(meta, dict) else None
    if not isinstance(model_config, dict):
        raise InteropError(f"{path} has no model_config object")
    unknown = sorted(set(model_config) - set(MODEL_CONFIG_KEYS))
    missing = [k for k in MODEL_CONFIG_KEYS if k not in model_config]
    if unknown:
        raise InteropError(f"{path} has model_config keys {unknown} that onanchat's GPT does not have "
                           f"(only {', '.join(MODEL_CONFIG_KEYS)}); this architecture is not supported")
    if missing:
        raise InteropError(f"{path} lacks model_config key(s) {', '.join(missing)}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in model_config.values()):
        raise InteropError(f"{path} has a model_config with non-positive or non-integer values: {model_config}")
    from revjax.memory import SizeError, check_dimensions, check_fits

    try:  # before anything is built: absurd sizes and models this machine cannot hold are refused here
        check_dimensions(model_config, f"the model_config of {path}")
        check_fits(model_config, "import", where=f"the model of {path}")
    except SizeError as err:
        raise InteropError(str(err)) from None
    direction = meta.get("direction", "forward")
    if direction not in DIRECTIONS:
        raise InteropError(f"{path} has direction {direction!r}; expected one of {', '.join(DIRECTIONS)}")
    step = meta.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise InteropError(f"{path} has step {step!r}, but a step must be a non-negative integer; fix its 'step'")
    return meta


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of ``model.pt`` as fp32 numpy arrays (``torch.load(weights_only=True)``, ``_orig_mod.`` stripped)."""
    torch = torch_for("revjax import")

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise InteropError(f"{path} is not a loadable PyTorch state_dict ({type(err).__name__})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise InteropError(f"{path} does not hold a flat dict of tensors (a model state_dict)")
    out: dict[str, np.ndarray] = {}
    for name, tensor in raw.items():
        if not tensor.is_floating_point():
            raise StateDictError(f"tensor '{name}' in {path} has dtype {tensor.dtype}, not a floating-point type")
        out[name.removeprefix("_orig_mod.")] = tensor.to(torch.float32).numpy()
    return out


def is_old_import(folder: Path) -> bool:
    """True for a run folder laid out as ``revjax import`` writes it (its own tokenizer, no training log)."""
    return (folder / "tokenizer").is_dir() and not (folder / "metrics.jsonl").exists()


def revjax_config(model_config: dict, *, direction: str, phase: str, out_run_dir: Path) -> Config:
    """A full revjax config for the imported model: explicit dims, its tokenizer in ``<out_run_dir>/tokenizer``."""
    T = model_config["sequence_len"]
    return Config.from_dict({
        "run_name": out_run_dir.name,
        "model": {"depth": None, **model_config},
        "tokenizer": {"vocab_size": model_config["vocab_size"], "dir": str(out_run_dir / "tokenizer")},
        "direction": {"direction": direction},
        "training": {"phase": phase, "total_batch_tokens": T * max(1, 524_288 // T)},
        "checkpoint": {"dir": str(out_run_dir)},
    }, source="the imported model_config")


def import_checkpoint(src: str | Path, out_run_dir: str | Path, *, phase: str | None = None,
                      step: int | None = None, force: bool = False) -> Path:
    """Convert the onanchat checkpoint at ``src`` into a revjax run folder ``out_run_dir``; returns that folder.

    Nothing is written unless every check passes; the folder is assembled beside its destination and renamed
    into place. An existing folder is replaced only with ``force``, only when an earlier ``revjax import`` wrote it
    and no training holds it, and it is moved aside, never deleted (:mod:`revjax.replace`).
    """
    from revjax import sharding as shd
    from revjax.optim import build_optimizer
    from revjax.state import init_train_state

    out = output_path(out_run_dir)
    check_replaceable(out, "import", force=force, sources=[src], looks_like_old_output=is_old_import)
    model_path, meta_path, tok_dir, folder_phase = locate(src, step)
    phase = phase or folder_phase or "base"
    if phase not in PHASE_DIRS:
        raise InteropError(f"phase must be one of {', '.join(PHASE_DIRS)}, not {phase!r}")
    meta = read_meta(meta_path)
    model_config = {k: meta["model_config"][k] for k in MODEL_CONFIG_KEYS}
    tokenizer = Tokenizer.load(tok_dir)
    if tokenizer.vocab_size != model_config["vocab_size"]:
        raise InteropError(f"the tokenizer in {tok_dir} has {tokenizer.vocab_size} tokens but model_config has "
                           f"vocab_size={model_config['vocab_size']}")
    direction = meta.get("direction", "forward")
    config = revjax_config(model_config, direction=direction, phase=phase, out_run_dir=out)
    params = from_torch_layout(read_state_dict(model_path), config.model)
    number = meta.get("step", 0) if meta_path.name == "meta.json" else int(STEP_FILE.fullmatch(model_path.name)[1])

    mesh = shd.make_mesh(MeshConfig(data=1), jax.devices()[:1])
    tx = build_optimizer(config.optimizer, config.model, init_lr_frac=config.schedule.init_lr_frac)
    _, state, _ = init_train_state(config.model, tx, mesh, params=params)
    del params
    val_bpb = meta.get("val_bpb")
    metadata = build_metadata(
        step=number, direction=direction, phase=phase, model_config=config.model.gpt_config(),
        config=config.to_dict(), tokenizer_identity=tokenizer.identity(), tokenizer_path=str(out / "tokenizer"),
        val_bpb=val_bpb if isinstance(val_bpb, (int, float)) and np.isfinite(val_bpb) else None)

    def fill(tmp: Path) -> None:
        tokenizer.save(tmp / "tokenizer", token_bytes_method=config.tokenizer.token_bytes)
        with Checkpointer(tmp, async_save=False) as checkpointer:
            checkpointer.save(number, {"params": state.params, "opt_state": state.opt_state}, data_state=None,
                              metadata=metadata)

    publish_folder(out, "import", fill, force=force, sources=[src], looks_like_old_output=is_old_import)
    return out


DESCRIPTION = "``revjax import SRC OUT_RUN_DIR``: convert an onanchat PyTorch checkpoint into a revjax run folder."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``SRC OUT_RUN_DIR [--phase PHASE] [--step N] [--force]``."""
    parser.add_argument("src", help="a <phase>_checkpoints/<tag> folder, or a flat folder with model.pt + meta.json")
    parser.add_argument("out_run_dir", help="the revjax run folder to create")
    parser.add_argument("--phase", choices=sorted(PHASE_DIRS), help="phase (default: from the folder name, else base)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT_RUN_DIR if an earlier revjax import wrote it and no training holds it; "
                             "it is moved aside to .<name>.replaced-<UTC time>, never deleted")


def run(args: argparse.Namespace) -> int:
    """Import the checkpoint ``args`` name; returns the exit code."""

    def body() -> None:
        path = import_checkpoint(args.src, args.out_run_dir, phase=args.phase, step=args.step, force=args.force)
        print(f"imported into {path}")

    return run_command("revjax import", body)


def main(argv: Sequence[str] | None = None) -> int:
    """``revjax import SRC OUT_RUN_DIR``: convert an onanchat PyTorch checkpoint into a revjax run folder."""
    parser = argparse.ArgumentParser(prog="revjax import", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
