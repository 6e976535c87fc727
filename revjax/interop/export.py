"""Export a revjax checkpoint as an onanchat/nanochat PyTorch checkpoint.

Two layouts: ``onanchat`` writes ``<out>/<phase>_checkpoints/<tag>/model_<step:06d>.pt`` and
``meta_<step:06d>.json`` plus ``<out>/tokenizer/{tokenizer.pkl,token_bytes.pt}``, as onanchat's
``checkpoint_manager`` reads them; ``flat`` writes ``model.pt``, ``meta.json``, ``tokenizer.pkl`` and
``token_bytes.pt`` side by side, as the Hugging Face releases do. Only the parameters are exported. The command's
``--format hf`` writes a folder for transformers' native NanoChat model instead (:mod:`revjax.interop.hf`).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import pickle
import shutil
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal, Sequence


from revjax.config import Config
from revjax.errors import RevjaxError, require, run_command
from revjax.interop.state_dict import check_finite, checkpoint_model_config, to_torch_layout
from revjax.phases import EXPORT_DIRS
from revjax.replace import check_replaceable, move_aside, output_path, overlaps, publish_folder, temp_dir
from revjax.runs import TrainedRun, load_run
from revjax.tokenizer import Tokenizer, TokenizerError

PHASE_DIRS = EXPORT_DIRS  # onanchat's checkpoint folder per phase, from the phase table
MODEL_CONFIG_KEYS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
BF16_TENSORS = ("transformer.wte.weight",)  # and the value embeddings (nanochat keeps both in the compute dtype)
Layout = Literal["onanchat", "flat"]


class InteropError(RevjaxError, ValueError):
    """An export or import that cannot be done, described in one sentence."""


def torch_for(command: str):
    """The torch module, or a MissingDependency telling the user of ``command`` to install ``revjax[torch]``."""
    return require("torch", "torch", command)


def onanchat_meta(meta: dict, config: Config) -> dict:
    """onanchat's checkpoint metadata: step, direction, revjax's reversal unit (``unit``, which onanchat ignores),
    the six-key model_config (with nanochat's ``window_pattern`` for a nanochat-2026 model) and the base-phase resume
    fields."""
    val_bpb = meta.get("val_bpb")
    t = config.training
    return {
        "step": int(meta["step"]),
        "direction": meta["direction"],
        "unit": meta.get("unit") or config.direction.unit,
        "val_bpb": val_bpb,
        "model_config": checkpoint_model_config(config.model),
        "user_config": {
            "run": config.run_name, "depth": config.model.n_layer, "max_seq_len": config.model.sequence_len,
            "num_iterations": t.num_iterations, "target_flops": t.target_flops,
            "target_param_data_ratio": t.target_param_data_ratio, "device_batch_size": t.device_batch_size,
            "total_batch_size": t.total_batch_tokens, "embedding_lr": config.optimizer.embedding_lr,
            "unembedding_lr": config.optimizer.unembedding_lr, "weight_decay": config.optimizer.weight_decay,
            "matrix_lr": config.optimizer.matrix_lr, "direction": meta["direction"],
            "revjax_config": config.to_dict(),
        },
        "device_batch_size": t.device_batch_size,
        "max_seq_len": config.model.sequence_len,
        "dataloader_state_dict": {"output_batch_index": 0},
        "loop_state": {"min_val_bpb": float("inf") if val_bpb is None else float(val_bpb),
                       "smooth_train_loss": 0.0, "total_training_time": 0.0},
    }


def torch_state_dict(params: dict, config: Config, *, all_fp32: bool = False) -> "OrderedDict[str, Any]":
    """The onanchat state_dict as torch tensors: wte and value embeddings bf16 (torch's round-to-nearest cast) and
    the rest fp32.

    A parameter holding a NaN or an infinity is refused (StateDictError)."""
    torch = torch_for("revjax export")
    arrays = to_torch_layout(params, config.model)
    check_finite(arrays)
    out: OrderedDict[str, Any] = OrderedDict()
    for name, array in arrays.items():
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
        bf16 = name in BF16_TENSORS or name.startswith("value_embeds.")
        out[name] = tensor.to(torch.bfloat16) if bf16 and not all_fp32 else tensor
    return out


def _torch_bytes(obj: Any) -> bytes:
    torch = torch_for("revjax export")

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def _write_files(folder: Path, files: dict[str, bytes | str], state_dict: dict, model_name: str,
                 safetensors: bool) -> None:
    """``files`` plus the state_dict as ``model_name`` (and optionally its safetensors twin) into ``folder``."""
    torch = torch_for("revjax export")

    for name, data in files.items():
        _write(folder / name, data)
    with open(folder / model_name, "wb") as f:
        torch.save(state_dict, f)
        f.flush()
        os.fsync(f.fileno())
    if safetensors:
        from safetensors.torch import save_file

        save_file(dict(state_dict), str(folder / model_name.replace(".pt", ".safetensors")))


def export_checkpoint(
    run_dir: str | Path,
    out: str | Path,
    *,
    step: int | None = None,
    layout: Layout = "onanchat",
    phase: str | None = None,
    tag: str | None = None,
    all_fp32: bool = False,
    safetensors: bool = False,
    force: bool = False,
) -> Path:
    """Export step ``step`` (default: newest) of the revjax checkpoint folder ``run_dir``; returns the model file.

    Everything is written into a temporary folder first and moved into place only when complete. A flat folder is
    replaced only with ``force`` and only when an earlier ``revjax export`` wrote it (:mod:`revjax.replace`); in
    onanchat's layout ``force`` replaces the same step's files and a different tokenizer. What is replaced is
    moved aside, never deleted, and the output may not overlap the run being read.
    """
    torch_for("revjax export")  # fail before reading anything when torch is missing
    if layout not in ("onanchat", "flat"):
        raise InteropError(f"layout must be 'onanchat' or 'flat', not {layout!r}")
    if safetensors and importlib.util.find_spec("safetensors") is None:
        raise InteropError("safetensors export needs the safetensors package, which is not installed")
    out = output_path(out)
    source = Path(run_dir).expanduser().resolve()
    if not source.is_dir():
        raise InteropError(f"{run_dir} is not a folder; give a revjax run's checkpoint folder")
    if layout == "flat":
        check_replaceable(out, "export", force=force, sources=[source], looks_like_old_output=is_flat_export)
    elif overlaps(out.resolve(), source):  # onanchat's layout writes files into a base folder: no marker there
        raise InteropError(f"{out} is (or holds, or lies inside) the run {source} being exported; choose another "
                           "output folder")
    # under the run lock: no training may save or set steps aside while they are read
    run = load_run(source, step, lock=True, command="export")
    return _export(run, out, source, layout=layout, phase=phase, tag=tag, all_fp32=all_fp32,
                   safetensors=safetensors, force=force)


def is_flat_export(folder: Path) -> bool:
    """True for a folder laid out as a flat export (``model.pt`` and ``meta.json`` side by side)."""
    return (folder / "model.pt").is_file() and (folder / "meta.json").is_file()


def _export(run: TrainedRun, out: Path, source: Path, *, layout: Layout, phase: str | None, tag: str | None,
            all_fp32: bool, safetensors: bool, force: bool) -> Path:
    torch = torch_for("revjax export")
    meta, config, tokenizer = run.meta, run.config, run.tokenizer
    phase = phase or meta.get("phase") or config.training.phase
    if phase not in PHASE_DIRS:
        raise InteropError(f"phase must be one of {', '.join(PHASE_DIRS)}, not {phase!r}")
    n = int(meta["step"])
    tag = tag or f"d{config.model.n_layer}_{meta['direction']}"
    folder = out / PHASE_DIRS[phase] / tag
    if layout == "onanchat" and (folder / f"model_{n:06d}.pt").exists() and not force:
        raise InteropError(f"{folder / f'model_{n:06d}.pt'} already exists; pass --force (revjax export --force) to replace it")
    if tokenizer.vocab_size != config.model.vocab_size:
        raise InteropError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model has "
                           f"vocab_size={config.model.vocab_size}")
    state_dict = torch_state_dict(run.arrays, config, all_fp32=all_fp32)
    run.arrays = None  # the numpy copy is no longer needed
    tok_files = {"tokenizer.pkl": pickle.dumps(tokenizer.encoding),
                 "token_bytes.pt": _torch_bytes(torch.from_numpy(tokenizer.token_bytes(config.tokenizer.token_bytes)))}
    meta_text = json.dumps(onanchat_meta(meta, config), indent=2)
    if layout == "flat":
        files = {"meta.json": meta_text, **tok_files}
        publish_folder(out, "export", lambda tmp: _write_files(tmp, files, state_dict, "model.pt", safetensors),
                       force=force, sources=[source], looks_like_old_output=is_flat_export)
        return out / "model.pt"
    _publish_onanchat(out, folder, f"model_{n:06d}.pt", {f"meta_{n:06d}.json": meta_text}, tok_files, state_dict,
                      safetensors, force)
    return folder / f"model_{n:06d}.pt"


def _publish_onanchat(out: Path, folder: Path, model_name: str, files: dict, tok_files: dict, state_dict: dict,
                      safetensors: bool, force: bool) -> None:
    """Move the tokenizer, then the metadata, then the model into place (onanchat lists steps by model file); with
    ``force``, a file replaced is first moved aside (:func:`move_aside`)."""
    tok_dir = out / "tokenizer"
    existing = tok_dir / "tokenizer.pkl"
    new_tokenizer = existing.exists() and existing.read_bytes() != tok_files["tokenizer.pkl"]
    if new_tokenizer:
        try:
            same = Tokenizer.load(tok_dir).identity() == Tokenizer(pickle.loads(tok_files["tokenizer.pkl"])).identity()
        except TokenizerError:
            same = False
        if same:
            new_tokenizer = False
        elif not force:
            raise InteropError(f"{tok_dir} already holds a different tokenizer; pass --force to replace it (the old "
                               "one is moved aside, not deleted)")
    out.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out, ".export-")
    try:
        _write_files(tmp / "model", files, state_dict, model_name, safetensors)
        for name, data in tok_files.items():
            _write(tmp / "tokenizer" / name, data)
        if new_tokenizer:
            _report_aside(move_aside(tok_dir))
        tok_dir.mkdir(parents=True, exist_ok=True)
        for name in tok_files:
            os.replace(tmp / "tokenizer" / name, tok_dir / name)
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted((tmp / "model").iterdir(), key=lambda p: p.name.startswith("model_")):
            if (folder / path.name).exists():
                _report_aside(move_aside(folder / path.name))
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _report_aside(path: Path) -> None:
    print(f"moved what this export replaces aside to {path}")


DESCRIPTION = "``revjax export RUN_DIR OUT``: write a revjax checkpoint in onanchat's PyTorch format."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``RUN_DIR OUT [--step N] [--format {onanchat,flat,hf}] [--flat] [--phase PHASE] [--tag TAG] [--fp32]
    [--bf16] [--safetensors] [--force]``."""
    parser.add_argument("run_dir", help="a revjax run's checkpoint folder")
    parser.add_argument("out", help="onanchat base dir (or, with --flat, the folder to create)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    parser.add_argument("--format", choices=("onanchat", "flat", "hf"), default=None,
                        help="onanchat: onanchat's base-dir layout (default); flat: model.pt/meta.json/tokenizer side "
                             "by side (HF release); hf: a folder transformers' native NanoChat model loads")
    parser.add_argument("--flat", action="store_true", help="the same as --format flat")
    parser.add_argument("--phase", choices=sorted(PHASE_DIRS), help="onanchat phase folder (default: the run's)")
    parser.add_argument("--tag", help="model tag folder (default: d<n_layer>_<direction>)")
    parser.add_argument("--fp32", action="store_true", help="store wte as fp32 too (default: bf16 wte)")
    parser.add_argument("--bf16", action="store_true", help="--format hf: store the weights in bf16 (default: fp32)")
    parser.add_argument("--safetensors", action="store_true", help="also write a .safetensors copy of the model")
    parser.add_argument("--force", action="store_true",
                        help="replace an earlier revjax export at OUT (with --flat: the whole folder, only if an "
                             "earlier revjax export wrote it; otherwise: the same step's files and a different "
                             "tokenizer); what is replaced is moved aside to .<name>.replaced-<UTC time>, never "
                             "deleted")


def run(args: argparse.Namespace) -> int:
    """Export the run ``args`` name; returns the exit code."""

    fmt = args.format or ("flat" if args.flat else "onanchat")
    if args.flat and fmt != "flat":
        print(f"revjax export: error: --flat contradicts --format {fmt}", file=sys.stderr)
        return 2
    if args.bf16 and fmt != "hf":
        print("revjax export: error: --bf16 belongs to --format hf (the onanchat and flat formats store bf16 weights "
              "already, except wte, which --fp32 keeps)", file=sys.stderr)
        return 2
    if fmt == "hf" and (args.phase or args.tag or args.safetensors):
        print("revjax export: error: --phase, --tag and --safetensors belong to the onanchat and flat formats; "
              "--format hf always writes model.safetensors", file=sys.stderr)
        return 2

    def body() -> None:
        if fmt == "hf":
            from revjax.interop.hf import export_hf

            print(f"exported {export_hf(args.run_dir, args.out, fp32=not args.bf16, force=args.force, step=args.step)}")
            return
        path = export_checkpoint(args.run_dir, args.out, step=args.step, layout=fmt,
                                 phase=args.phase, tag=args.tag, all_fp32=args.fp32, safetensors=args.safetensors,
                                 force=args.force)
        print(f"exported {path}")

    return run_command("revjax export", body)


def main(argv: Sequence[str] | None = None) -> int:
    """``revjax export RUN_DIR OUT``: write a revjax checkpoint in onanchat's PyTorch format."""
    parser = argparse.ArgumentParser(prog="revjax export", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
