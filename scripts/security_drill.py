"""Security drill: each way data could be destroyed or an attacker let in, tried at tiny size, with the verdict
"let in".

Usage: python scripts/security_drill.py [--only CASE …]

Each case plays a careless user or an attacker against one surface — the code grader's sandbox, the server, the
scripts a sweep writes, the loaders of configs and checkpoints — and checks what happened. It prints one table row
per case: what happened, and whether the attacker was let in (it must say "no" everywhere).
``tests/test_security.py`` runs the same cases.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass
class Outcome:
    case: str
    happened: str
    let_in: bool


Case = Callable[[Path], Outcome]  # a case gets a fresh empty work folder of its own


# ------------------------------------------------------------------------------------------ the code sandbox


# ------------------------------------------------------------------------------------------ the server


# ------------------------------------------------------------------------------------------ scripts and loaders


# ------------------------------------------------------------------------------------------ sizes

_SIZES_TINY_DIMS = {"sequence_len": 16, "vocab_size": 320, "n_layer": 2, "n_head": 2, "n_kv_head": 1, "n_embd": 64}


def _sizes_flat_release(folder: Path, **dims) -> Path:
    """An onanchat flat release folder whose meta.json declares ``dims`` (model.pt is an empty placeholder)."""
    import json

    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"")
    (folder / "meta.json").write_text(json.dumps({"model_config": {**_SIZES_TINY_DIMS, **dims}, "step": 0}))
    return folder


def _sizes_one_sentence(text: str, *needles: str) -> bool:
    """A refusal naming one of ``needles``, in one line, without a traceback."""
    return any(needle in text for needle in needles) and "\n" not in text.strip() and "Traceback" not in text


def _sizes_gist(text: str) -> str:
    """The part of a refusal after the (temporary) path it names."""
    text = text.strip()
    for word in ("gives", "needs"):
        if word in text:
            return text[text.find(word):][:100]
    return text[:100]


def sizes_import_n_layer(work: Path) -> Outcome:
    """``revjax import`` of a meta.json declaring 10⁹ layers (it used to allocate 10.8 GB for minutes)."""
    import os
    import subprocess

    case = "sizes: import meta.json n_layer 10⁹"
    src, out = _sizes_flat_release(work / "src", n_layer=10**9), work / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "revjax.interop.importer", str(src), str(out)], cwd=work,
                              env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return Outcome(case, "still running after 60 s (allocating for the layers)", let_in=True)
    took = time.perf_counter() - started
    refused = done.returncode != 0 and _sizes_one_sentence(done.stderr, "above the largest n_layer")
    written = out.exists()
    happened = (f"{'refused' if refused else 'not refused'} in {took:.1f} s (whole process, exit {done.returncode})"
                f"{', OUT written' if written else ', nothing written'}: {_sizes_gist(done.stderr)}")
    return Outcome(case, happened, let_in=not refused or written or took > 30)


def sizes_import_sequence_len(work: Path) -> Outcome:
    """``import_checkpoint`` of a meta.json declaring 10¹² positions (it used to import, then chat/eval died)."""
    from revjax.errors import RevjaxError
    from revjax.interop.importer import import_checkpoint

    case = "sizes: import meta.json sequence_len 10¹²"
    src, out = _sizes_flat_release(work / "src", sequence_len=10**12), work / "out"
    started = time.perf_counter()
    try:
        import_checkpoint(src, out)
    except RevjaxError as err:
        refused = _sizes_one_sentence(str(err), "above the largest sequence_len")
        written = "OUT written" if out.exists() else "nothing written"
        return Outcome(case, f"{'refused' if refused else 'stopped for another reason'} in "
                             f"{time.perf_counter() - started:.2f} s, {written}: {_sizes_gist(str(err))}",
                       let_in=not refused or out.exists())
    return Outcome(case, "imported", let_in=True)


def _sizes_tiny_run(folder: Path) -> Path:
    """A revjax run folder with a tiny random model (2 layers, width 64) and a tokenizer of its own."""
    import contextlib
    import io
    import warnings

    import jax
    import numpy as np
    from flax import nnx

    from revjax.checkpoint import Checkpointer, build_metadata
    from revjax.config import load_config
    from revjax.model import GPT
    from revjax.tokenizer import train_tokenizer

    words = "the cat sat on a mat while dogs ran far away from home".split()
    docs = [" ".join(words[(i * 3 + j) % len(words)] for j in range(12)) for i in range(60)]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # a small corpus gives fewer merges than asked for; the size is taken as is
        tokenizer = train_tokenizer(docs, folder / "tokenizer", 320, progress=False)
    config = load_config(overrides=[
        f"base_dir={folder}", "run_name=tiny", f"tokenizer.vocab_size={tokenizer.vocab_size}",
        f"tokenizer.dir={folder / 'tokenizer'}",
        "model.depth=null", "model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.n_kv_head=1",
        "model.sequence_len=16", "model.compute_dtype=float32", f"checkpoint.dir={folder}",
        "training.total_batch_tokens=128"])
    _, state = nnx.split(nnx.eval_shape(lambda: GPT(config.model, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), nnx.to_pure_dict(state))
    metadata = build_metadata(step=1, direction="forward", phase="base", model_config=config.model.gpt_config(),
                              config=config.to_dict(), tokenizer_identity=tokenizer.identity(),
                              tokenizer_path=str(folder / "tokenizer"), val_bpb=None)
    with Checkpointer(folder, async_save=False) as checkpointer:
        checkpointer.save(1, {"params": params}, data_state=None, metadata=metadata)
    return folder


def sizes_checkpoint_sequence_len(work: Path) -> Outcome:
    """A revjax checkpoint whose metadata says sequence_len 10¹², loaded by chat's load_model and eval's LoadedRun
    (chat used to die at its first reply on a 3.64 TiB allocation)."""
    import json

    from revjax.chat.session import load_model
    from revjax.errors import RevjaxError
    from revjax.eval.run import LoadedRun

    case = "sizes: checkpoint sequence_len 10¹² → chat, eval"
    run = _sizes_tiny_run(work / "run")
    meta_file = run / "1" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["model_config"]["sequence_len"] = meta["config"]["model"]["sequence_len"] = 10**12
    meta["config"]["training"]["total_batch_tokens"] = 10**12  # consistent, as an import of such a model writes it
    meta_file.write_text(json.dumps(meta))
    verdicts, let_in, last = [], False, ""
    for name, load in (("chat", load_model), ("eval", LoadedRun)):
        started = time.perf_counter()
        try:
            load(run)
        except RevjaxError as err:
            refused = _sizes_one_sentence(str(err), "above the largest sequence_len", "lower sequence_len")
            verdicts.append(f"{name} {'refused' if refused else 'stopped otherwise'} in "
                            f"{time.perf_counter() - started:.2f} s")
            let_in |= not refused
            last = str(err)
        else:
            verdicts.append(f"{name} loaded it")
            let_in = True
    return Outcome(case, "; ".join(verdicts) + (f": {_sizes_gist(last)}" if last else ""), let_in=let_in)




# ------------------------------------------------------------------------------------------ folders replaced


CASES: dict[str, Case] = {
    # sandbox

    # server

    # scripts and loaders

    # sizes
    "sizes-import-n-layer": sizes_import_n_layer,
    "sizes-import-sequence-len": sizes_import_sequence_len,
    "sizes-checkpoint-sequence-len": sizes_checkpoint_sequence_len,

    # folders replaced

}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="run only these cases")
    args = parser.parse_args(argv)
    outcomes = []
    for name in args.only or CASES:
        started = time.time()
        with tempfile.TemporaryDirectory(prefix=f"revjax-security-{name}-") as work:
            try:
                outcome = CASES[name](Path(work))
            except Exception as err:  # a case that cannot even run is reported, not hidden
                outcome = Outcome(name, f"drill error: {type(err).__name__}: {str(err)[:160]}", let_in=True)
        outcomes.append(outcome)
        print(f"{outcome.case:<48} | {'yes' if outcome.let_in else 'no':<3} | {time.time() - started:5.1f}s | "
              f"{outcome.happened}", flush=True)
    print("\n| case | what happened | let in |\n|---|---|---|")
    for o in outcomes:
        print(f"| {o.case} | {o.happened} | {'**yes**' if o.let_in else 'no'} |")
    return 1 if any(o.let_in for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
