"""What several test modules share: the golden model configurations and their helpers, the tiny training and phase
runs' overrides and corpora, the miniature CORE bundle, the tiny chat run, and a YAML alias bomb.

Test modules import from here (and from :mod:`tests.torch_reference` and :mod:`tests.tiny_corpus`), never from one
another (tests/test_layout.py checks it). A fixture is used by importing it under its own name, e.g.
``from tests.helpers import base  # noqa: F401``.
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from revjax.config import ModelConfig, load_config
from revjax.interop.state_dict import load_params, model_params
from revjax.model import GPT, KVCache
from tests.conftest import GOLDEN_DIR
from tests.tiny_corpus import write_tiny_corpus

# ---- the model: the two golden configurations and their helpers ------------------------------------------------

# The two golden configurations (onanchat's own outputs exist for both): MHA and GQA.
CONFIGS = {
    "mha": ModelConfig(sequence_len=32, vocab_size=256, n_layer=2, n_head=1, n_kv_head=1, n_embd=64,
                       compute_dtype="float32"),
    "gqa": ModelConfig(sequence_len=32, vocab_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=128,
                       compute_dtype="float32"),
}
PREFIX = 10  # tokens prefilled through the KV cache before decoding one at a time


forward = nnx.jit(lambda model, ids: model(ids))
cached_forward = nnx.jit(lambda model, ids, cache: model(ids, cache))


def new_model(config: ModelConfig, seed: int = 0) -> GPT:
    return nnx.jit(lambda: GPT(config, rngs=nnx.Rngs(seed)))()


def perturbed_model(config: ModelConfig, seed: int = 0) -> GPT:
    """A model whose every parameter is non-zero (zero-initialised projections would hide layout errors)."""
    model = new_model(config, seed)
    params = model_params(model)
    rng = np.random.default_rng(seed)
    load_params(model, jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.02, p.shape).astype(np.float32), params))
    return model


def decode_with_cache(model: GPT, ids: jax.Array, prefix: int = PREFIX) -> jax.Array:
    cache = KVCache.zeros(model.config, ids.shape[0], ids.shape[1])
    logits, cache = cached_forward(model, ids[:, :prefix], cache)
    chunks = [logits]
    for t in range(prefix, ids.shape[1]):
        logits, cache = cached_forward(model, ids[:, t:t + 1], cache)
        chunks.append(logits)
    return jnp.concatenate(chunks, axis=1)


# ---- the tiny training run (tests/test_train.py and the tests that train like it) -----------------------------

STEPS, SAVE_EVERY = 8, 3


def train_overrides(base: Path, run: str, **extra) -> list[str]:
    values = {
        "base_dir": base, "run_name": run, "data.corpus": "parquet", "data.dir": base / "corpus",
        "tokenizer.vocab_size": 320, "model.depth": None, "model.n_layer": 2, "model.n_embd": 64, "model.n_head": 2,
        "model.sequence_len": 32, "model.compute_dtype": "float32", "training.device_batch_size": 1,
        "training.total_batch_tokens": 512, "training.num_iterations": STEPS, "training.eval_every": 4,
        "training.eval_tokens": 256, "training.sample_every": STEPS, "checkpoint.save_every": SAVE_EVERY,
        "logging.log_every": 1, "logging.progress": False, "data.tokenizer_threads": 1, "data.slices": 2,
        # fp32 Newton–Schulz: bf16 would amplify the cross-process summation order to ~1e-4 (see test_sharding)
        "optimizer.ns_dtype": "float32",
        # what `python -m revjax.train` reads from configs/default.yaml, so in-process and command-line runs agree
        "data.packing": "marked", "data.val_packing": "marked",
    }
    values.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny corpus and tokenizer of the training-run tests."""
    return write_tiny_corpus(tmp_path_factory.mktemp("train"))


# ---- the phase runs (tests/test_phases.py, tests/test_chain.py) ----------------------------------------------

WORDS = "what is plus the answer spell word letters who are you a language model seven twelve nineteen".split()
TRAIN_TASKS = '[{task: arithmetic, size: 48}, {task: identity, size: 16}]'
VAL_TASKS = '[{task: arithmetic, split: test, size: 8}]'


def phase_overrides(base: Path, run: str, **extra) -> list[str]:
    values = {
        "base_dir": base, "run_name": run, "data.corpus": "parquet", "data.dir": base / "corpus",
        "tokenizer.vocab_size": 400, "model.depth": None, "model.n_layer": 2, "model.n_embd": 64, "model.n_head": 2,
        "model.sequence_len": 64, "model.compute_dtype": "float32", "training.device_batch_size": 1,
        "training.total_batch_tokens": 512, "training.num_iterations": 4, "training.eval_every": 100,
        "training.eval_tokens": 512, "training.sample_every": 0, "logging.log_every": 1, "logging.progress": False,
        "optimizer.ns_dtype": "float32", "tasks.train": TRAIN_TASKS, "tasks.val": VAL_TASKS,
        "optimizer.muon_momentum_warmup_steps": 4,
    }
    values.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


def make_corpus(base: Path) -> Path:
    """A tiny parquet corpus and a 400-token tokenizer in ``base`` (the words of the conversations included)."""
    from revjax.data.shards import write_shards
    from revjax.tasks import get_task
    from revjax.tokenizer import train_tokenizer

    docs = [" ".join(WORDS[(i * 5 + 3 * j) % len(WORDS)] for j in range(20 + i % 13)) for i in range(100)]
    for name in ("arithmetic", "identity"):  # the conversations' own words, so the tokenizer reaches its size
        for conversation in get_task(name, size=100):
            docs.append(" ".join(part["text"] if isinstance(part, dict) else part
                                 for m in conversation["messages"]
                                 for part in (m["content"] if isinstance(m["content"], list) else [m["content"]])))
    write_shards(docs, base / "corpus", docs_per_shard=100)
    train_tokenizer(docs, base / "tokenizer", 400, progress=False)
    return base


# ---- a miniature CORE eval bundle (tests/test_eval.py, tests/test_compare.py, tests/test_report.py) -----------

MC_ITEMS = [
    {"query": "The sky is", "choices": ["blue", "green", "made of cheese"], "gold": 0},
    {"query": "Two plus two is", "choices": ["four", "five"], "gold": 0},
    {"query": "Water is", "choices": ["wet", "dry", "very loud"], "gold": 0},
    {"query": "The sun rises in the", "choices": ["east", "west"], "gold": 0},
    {"query": "Cats like to", "choices": ["sleep", "swim", "fly"], "gold": 1},
]
SCHEMA_ITEMS = [
    {"context_options": ["The cup fell because it was", "The cup fell because Sam was"],
     "continuation": "slippery.", "gold": 0},
    {"context_options": ["Anna thanked Maria because Anna", "Anna thanked Maria because Maria"],
     "continuation": "had helped her.", "gold": 1},
    {"context_options": ["The ball broke the window so the ball", "The ball broke the window so the window"],
     "continuation": "was in pieces.", "gold": 1},
]
LM_ITEMS = [
    {"context": "One, two, three,", "continuation": "four"},
    {"context": "Monday, Tuesday,  ", "continuation": "Wednesday"},
    {"context": "a b c d e", "continuation": "f g"},
]


def write_bundle(root: Path) -> Path:
    """A miniature eval bundle with the real layout: core.yaml, eval_meta_data.csv, eval_data/*.jsonl."""
    folder = root / "eval_bundle"
    (folder / "eval_data" / "sub").mkdir(parents=True)
    tasks = [("mini_mc", "multiple_choice", "mc.jsonl", 1, None, MC_ITEMS, 33.3),
             ("mini_schema", "schema", "sub/schema.jsonl", 0, None, SCHEMA_ITEMS, 50.0),
             ("mini_lm", "language_modeling", "lm.jsonl", 1, "\nAnswer: ", LM_ITEMS, 0.0)]
    entries = []
    with open(folder / "eval_meta_data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Eval Task", "Task Category", "Random baseline"])
        for label, kind, uri, shots, delim, items, baseline in tasks:
            writer.writerow([label, "test", baseline])
            (folder / "eval_data" / uri).write_text("".join(json.dumps(i) + "\n" for i in items))
            entry = {"label": label, "icl_task_type": kind, "dataset_uri": uri, "num_fewshot": [shots]}
            if delim is not None:
                entry["continuation_delimiter"] = delim
            entries.append(entry)
    import yaml

    (folder / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": entries}))
    archive = root / "eval_bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(root).as_posix())
    return archive


# ---- the tiny chat run (tests/test_chat.py, tests/test_serve_security.py) ------------------------------------

TOKENIZER_DIR = (GOLDEN_DIR / "tokenizer").resolve()
SEQ = 256


def make_run(folder: Path, direction: str, mode: str) -> None:
    """A revjax run folder holding a tiny model with random weights (2 layers, n_embd 64), golden tokenizer."""
    from revjax.checkpoint import Checkpointer
    from revjax.runs import build_metadata
    from revjax.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(TOKENIZER_DIR)
    config = load_config(overrides=[
        f"base_dir={folder}", "run_name=tiny-chat", "tokenizer.vocab_size=2048", f"tokenizer.dir={TOKENIZER_DIR}",
        "model.depth=null", "model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.n_kv_head=2",
        f"model.sequence_len={SEQ}", "model.compute_dtype=float32", f"direction.direction={direction}",
        f"direction.conversation={mode}", f"checkpoint.dir={folder}", "training.phase=sft"])
    _, state = nnx.split(nnx.eval_shape(lambda: GPT(config.model, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape).astype(np.float32)),
                          nnx.to_pure_dict(state))
    metadata = build_metadata(step=3, direction=direction, phase="sft", model_config=config.model.gpt_config(),
                              config=config.to_dict(), tokenizer_identity=tokenizer.identity(),
                              tokenizer_path=str(TOKENIZER_DIR), val_bpb=None)
    with Checkpointer(folder, async_save=False) as checkpointer:
        checkpointer.save(3, {"params": params}, data_state=None, metadata=metadata)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat") / "tiny-chat"
    make_run(folder, "bidirectional", "sequence")
    return folder


@pytest.fixture(scope="module")
def model(run_dir):
    from revjax.chat.session import load_model

    return load_model(run_dir)


# ---- the YAML loader (tests/test_config.py, tests/test_experiments.py) ---------------------------------------


def laughs(levels: int) -> str:
    """A "billion laughs" list in flow style: level k holds nine aliases of level k-1, so the last level alone
    expands to 9**levels strings, written in a few hundred characters."""
    names = "abcdefghijklmnop"
    parts = ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    parts += [f"&{names[k]} [{', '.join([f'*{names[k - 1]}'] * 9)}]" for k in range(1, levels)]
    return f"[{', '.join(parts)}]"
