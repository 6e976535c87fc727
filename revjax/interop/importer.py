"""Import an onanchat/nanochat PyTorch checkpoint, a transformers NanoChat folder or a hub model as a revjax run.

Accepts onanchat's phase layout (``<root>/<phase>_checkpoints/<tag>/model_<step:06d>.pt`` and
``meta_<step:06d>.json``, tokenizer in ``<root>/tokenizer/`` or beside the weights), the flat release layout
(``model.pt``, ``meta.json``, ``tokenizer.pkl``, ``token_bytes.pt`` in one folder), a transformers NanoChat folder
(:mod:`revjax.interop.hf_import`), or ``hf:OWNER/NAME[@REVISION]``, any of these on the hub
(:mod:`revjax.interop.hub`). The result is a revjax run folder: a
checkpoint with a fresh optimizer state, a full revjax config in its metadata, and the tokenizer in
``<out_run_dir>/tokenizer/``, so ``training.init_from=<out_run_dir>`` can start from it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from revjax.checkpoint import Checkpointer
from revjax.config import Config, MeshConfig
from revjax.errors import run_command
from revjax.interop import hf_import, hub
from revjax.interop.export import MODEL_CONFIG_KEYS, PHASE_DIRS, InteropError, torch_for
from revjax.interop.state_dict import StateDictError, from_torch_layout, model_keys_from_checkpoint
from revjax.replace import check_replaceable, output_path, publish_folder
from revjax.runs import build_metadata
from revjax.tokenizer import Tokenizer

PHASES = {folder: phase for phase, folder in PHASE_DIRS.items()}
STEP_FILE = re.compile(r"model_(\d+)\.pt")
DIRECTIONS = ("forward", "backward", "bidirectional")
UNITS = ("token", "word", "entity")


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
        names = sorted(p.name for p in src.iterdir() if not p.name.startswith("."))
        raise InteropError(f"{src} holds none of the layouts revjax imports (model.pt + meta.json, model_<step>.pt + "
                           "meta_<step>.json, or a transformers NanoChat folder); it has "
                           f"{', '.join(names[:8]) or 'no files'}{' …' if len(names) > 8 else ''}")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise InteropError(f"{src} has no model_{step:06d}.pt (steps present: {steps})")
    meta = src / f"meta_{step:06d}.json"
    if not meta.is_file():
        raise InteropError(f"{src} has model_{step:06d}.pt but no {meta.name}")
    tokenizer = next((d for d in (src, src / "tokenizer") if (d / "tokenizer.pkl").is_file()),
                     src.parent.parent / "tokenizer")  # a hub copy keeps it beside the weights
    return src / f"model_{step:06d}.pt", meta, tokenizer, PHASES.get(src.parent.name)


def check_sizes(model_config: dict, path: Path) -> None:
    """Refuse absurd sizes and models this machine cannot hold before anything is built."""
    from revjax.memory import SizeError, check_dimensions, check_fits

    try:
        check_dimensions(model_config, f"the model_config of {path}")
        check_fits(model_config, "import", where=f"the model of {path}")
    except SizeError as err:
        raise InteropError(str(err)) from None


def read_meta(path: Path) -> dict:
    """onanchat's or nanochat's metadata, checking that ``model_config`` has the six GPTConfig keys (and at most
    nanochat's ``window_pattern`` besides, which makes it a 2026-recipe model)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InteropError(f"{path} is not readable JSON ({err})") from None
    model_config = meta.get("model_config") if isinstance(meta, dict) else None
    if not isinstance(model_config, dict):
        raise InteropError(f"{path} has no model_config object")
    unknown = sorted(set(model_config) - {*MODEL_CONFIG_KEYS, "window_pattern"})
    missing = [k for k in MODEL_CONFIG_KEYS if k not in model_config]
    if unknown:
        raise InteropError(f"{path} has model_config keys {unknown} that neither onanchat's GPT nor nanochat's "
                           f"(92d63d4) has (only {', '.join(MODEL_CONFIG_KEYS)}, window_pattern); this architecture "
                           "is not supported")
    if missing:
        raise InteropError(f"{path} lacks model_config key(s) {', '.join(missing)}")
    if not all(isinstance(model_config[k], int) and not isinstance(model_config[k], bool) and model_config[k] > 0
               for k in MODEL_CONFIG_KEYS):
        raise InteropError(f"{path} has a model_config with non-positive or non-integer values: {model_config}")
    pattern = model_config.get("window_pattern", "L")
    if not isinstance(pattern, str) or not pattern or set(pattern.upper()) - {"S", "L"}:
        raise InteropError(f"{path} has window_pattern {pattern!r}; nanochat's patterns are strings of S and L")
    check_sizes(model_config, path)
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


def revjax_config(model_config: dict, *, direction: str, phase: str, out_run_dir: Path,
                  model_options: Mapping | None = None, unit: str = "token") -> Config:
    """A full revjax config for the imported model: explicit dims (and further ``model.*`` options), its tokenizer
    in ``<out_run_dir>/tokenizer``."""
    T = model_config["sequence_len"]
    return Config.from_dict({
        "run_name": out_run_dir.name,
        "model": {"depth": None, **model_config, **(model_options or {})},
        "tokenizer": {"vocab_size": model_config["vocab_size"], "dir": str(out_run_dir / "tokenizer")},
        "direction": {"direction": direction, "unit": unit},
        "training": {"phase": phase, "total_batch_tokens": T * max(1, 524_288 // T)},
        "checkpoint": {"dir": str(out_run_dir)},
    }, source="the imported model_config")


class Source(NamedTuple):
    """A checkpoint to import, whatever its layout: its dimensions, tokenizer, metadata and (lazily) tensors."""

    where: Path
    model_config: dict[str, int]
    tokenizer: Tokenizer
    direction: str | None  # None: its metadata does not say
    step: int
    phase: str | None
    val_bpb: float | None
    tensors: Callable[[], dict[str, np.ndarray]]  # onanchat state_dict names → fp32 arrays
    model_options: Mapping = MappingProxyType({})  # further model.* settings (a transformers folder's RoPE base
    # and table dtype; nanochat's recipe and window pattern)
    unit: str = "token"  # the reversal unit a revjax export recorded (token where the metadata does not say)


def onanchat_source(folder: Path, step: int | None) -> Source:
    """An onanchat/nanochat PyTorch checkpoint (either layout of :func:`locate`)."""
    model_path, meta_path, tok_dir, phase = locate(folder, step)
    meta = read_meta(meta_path)
    number = meta.get("step", 0) if meta_path.name == "meta.json" else int(STEP_FILE.fullmatch(model_path.name)[1])
    keys = model_keys_from_checkpoint(meta["model_config"])  # the six, and nanochat's recipe and window pattern
    options = {k: v for k, v in keys.items() if k not in MODEL_CONFIG_KEYS}
    return Source(meta_path, {k: keys[k] for k in MODEL_CONFIG_KEYS}, Tokenizer.load(tok_dir), meta.get("direction"),
                  number, phase, meta.get("val_bpb"), lambda: read_state_dict(model_path), options,
                  meta.get("unit") or "token")


def hf_source(folder: Path, step: int | None) -> Source:
    """A transformers NanoChat folder; what a revjax export recorded under ``revjax`` in its config is kept."""
    if step is not None:
        raise InteropError(f"{folder} is a transformers folder with a single set of weights; leave out the step")
    model_config, options, info = hf_import.read_config(folder)
    check_sizes(model_config, folder / "config.json")
    number = info.get("step", 0)
    return Source(folder / "config.json", model_config, hf_import.read_tokenizer(folder), info.get("direction"),
                  number if isinstance(number, int) and number >= 0 else 0, info.get("phase"), info.get("val_bpb"),
                  lambda: hf_import.read_tensors(folder, model_config), options, info.get("unit") or "token")


def read_source(folder: Path, step: int | None) -> Source:
    return (hf_source if hf_import.is_hf_folder(folder) else onanchat_source)(folder, step)


def choose_direction(source: Source, name: str, given: str | None, ask: Callable[[str], str] | None) -> str:
    """The metadata's direction; else ``given``; else forward, unless the name says backward or bidirectional,
    which is asked about (``ask``) or refused with the option to pass, never guessed."""
    found = source.direction
    if found is not None and found not in DIRECTIONS:
        raise InteropError(f"{source.where} has direction {found!r}; expected one of {', '.join(DIRECTIONS)}")
    if found and given and found != given:
        raise InteropError(f"{source.where} says the model is {found}, not {given}; leave out --direction")
    if found or given:
        return found or given
    hint = next((d for d in ("bidirectional", "backward") if d in name.lower()), None)
    if hint is None:
        return "forward"
    question = (f"{name} has no direction in its metadata but its name says '{hint}'; is it forward, backward or "
                "bidirectional?")
    if ask is not None:
        answer = ask(question).strip().lower()
        if answer in DIRECTIONS:
            return answer
    raise InteropError(f"{question.rsplit(';', 1)[0]}; pass --direction {hint} (or forward) to say which")


def import_checkpoint(src: str | Path, out_run_dir: str | Path | None = None, *, phase: str | None = None,
                      step: int | None = None, force: bool = False, direction: str | None = None,
                      ask: Callable[[str], str] | None = None) -> Path:
    """Convert the checkpoint at ``src`` into a revjax run folder ``out_run_dir``; returns that folder.

    ``src`` is a local folder (onanchat's phase or flat layout, or a transformers NanoChat folder) or
    ``hf:OWNER/NAME[@REVISION]``, downloaded into ``<base dir>/hub`` (then ``out_run_dir`` defaults to
    ``<base dir>/checkpoints/NAME``). Nothing is written unless every check passes; the folder is assembled beside
    its destination and renamed into place. An existing folder is replaced only with ``force``, only when an
    earlier ``revjax import`` wrote it and no training holds it, and it is moved aside, never deleted
    (:mod:`revjax.replace`).
    """
    from revjax import sharding as shd
    from revjax.optim import build_optimizer
    from revjax.state import init_train_state

    base = Config().base_path()
    if hub.is_hub_spec(src):
        name = hub.repo_name(str(src))
        out = output_path(out_run_dir or base / "checkpoints" / name)
        check_replaceable(out, "import", force=force, sources=[], looks_like_old_output=is_old_import)
        folder = hub.download(str(src), base / "hub")
    else:
        if out_run_dir is None:
            raise InteropError("give the revjax run folder to create after the source folder (only hf:OWNER/NAME "
                               "has a default)")
        folder, name = Path(src).expanduser().resolve(), Path(src).name
        out = output_path(out_run_dir)
        check_replaceable(out, "import", force=force, sources=[folder], looks_like_old_output=is_old_import)
    source = read_source(folder, step)
    phase = phase or source.phase or "base"
    if phase not in PHASE_DIRS:
        raise InteropError(f"phase must be one of {', '.join(PHASE_DIRS)}, not {phase!r}")
    model_config, tokenizer = source.model_config, source.tokenizer
    if tokenizer.vocab_size != model_config["vocab_size"]:
        raise InteropError(f"the tokenizer has {tokenizer.vocab_size} tokens but model_config has vocab_size="
                           f"{model_config['vocab_size']} ({source.where}); the two do not belong together")
    direction = choose_direction(source, name, direction, ask)
    if source.unit not in UNITS:
        raise InteropError(f"{source.where} has reversal unit {source.unit!r}; expected one of {', '.join(UNITS)}")
    config = revjax_config(model_config, direction=direction, phase=phase, out_run_dir=out,
                           model_options=source.model_options, unit=source.unit)
    params = from_torch_layout(source.tensors(), config.model)

    mesh = shd.make_mesh(MeshConfig(data=1), jax.devices()[:1])
    tx = build_optimizer(config.optimizer, config.model, init_lr_frac=config.schedule.init_lr_frac)
    _, state, _ = init_train_state(config.model, tx, mesh, params=params)
    del params
    val_bpb = source.val_bpb
    metadata = build_metadata(
        step=source.step, direction=direction, unit=source.unit, phase=phase, model_config=config.model.gpt_config(),
        config=config.to_dict(), tokenizer_identity=tokenizer.identity(), tokenizer_path=str(out / "tokenizer"),
        val_bpb=val_bpb if isinstance(val_bpb, (int, float)) and np.isfinite(val_bpb) else None)

    def fill(tmp: Path) -> None:
        tokenizer.save(tmp / "tokenizer", token_bytes_method=config.tokenizer.token_bytes)
        with Checkpointer(tmp, async_save=False) as checkpointer:
            checkpointer.save(source.step, {"params": state.params, "opt_state": state.opt_state}, data_state=None,
                              metadata=metadata)

    publish_folder(out, "import", fill, force=force, sources=[folder], looks_like_old_output=is_old_import)
    return out


DESCRIPTION = ("``revjax import SRC [OUT_RUN_DIR]``: convert an onanchat/nanochat PyTorch checkpoint, a transformers "
               "NanoChat folder or a hub model (hf:OWNER/NAME[@REVISION]) into a revjax run folder.")


def ask_on_terminal(question: str) -> str:
    """Ask ``question`` when a person is at the terminal; otherwise answer nothing (the import then refuses)."""
    if not sys.stdin.isatty():
        return ""
    return input(f"{question} ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``SRC [OUT_RUN_DIR] [--phase PHASE] [--step N] [--direction D] [--force]``."""
    parser.add_argument("src", help="a <phase>_checkpoints/<tag> folder, a flat folder with model.pt + meta.json, a "
                                    "transformers NanoChat folder, or hf:OWNER/NAME[@REVISION] (downloaded into "
                                    "<base dir>/hub)")
    parser.add_argument("out_run_dir", nargs="?",
                        help="the revjax run folder to create (default for hf:OWNER/NAME: <base dir>/checkpoints/NAME)")
    parser.add_argument("--phase", choices=sorted(PHASE_DIRS), help="phase (default: from the metadata or the folder "
                                                                    "name, else base)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    parser.add_argument("--direction", choices=DIRECTIONS,
                        help="the model's direction when its metadata does not say (never overrides the metadata)")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT_RUN_DIR if an earlier revjax import wrote it and no training holds it; "
                             "it is moved aside to .<name>.replaced-<UTC time>, never deleted")


def run(args: argparse.Namespace) -> int:
    """Import the checkpoint ``args`` name; returns the exit code."""

    def body() -> None:
        path = import_checkpoint(args.src, args.out_run_dir, phase=args.phase, step=args.step, force=args.force,
                                 direction=args.direction, ask=ask_on_terminal)
        print(f"imported into {path}")

    return run_command("revjax import", body)


def main(argv: Sequence[str] | None = None) -> int:
    """``revjax import SRC [OUT_RUN_DIR]``: convert a PyTorch, transformers or hub checkpoint into a revjax run."""
    parser = argparse.ArgumentParser(prog="revjax import", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
