"""Sizes checked before anything is allocated: exact parameter and KV-cache counts, the per-command estimate, the
refusal sentence, and absurd dimensions refused at every loader (import, checkpoint metadata, chat, eval)."""

import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from revjax import memory
from revjax.chat.session import load_model
from revjax.checkpoint import Checkpointer
from revjax.runs import build_metadata, read_params
from revjax.config import ConfigError, MeshConfig, ModelConfig, load_config
from revjax.eval.run import LoadedRun
from revjax.interop.export import InteropError
from revjax.interop.importer import import_checkpoint
from revjax.memory import SizeError
from revjax.model import GPT, KVCache, num_params
from revjax.optim import build_optimizer
from revjax.sharding import make_mesh
from revjax.state import train_state_shardings
from revjax.tokenizer import Tokenizer
from tests.conftest import GOLDEN_DIR

TOKENIZER_DIR = (GOLDEN_DIR / "tokenizer").resolve()
# n_layer 2, width 64, 2 query heads of 32, 1 kv head (GQA), vocab 320, 16 positions
TINY = ModelConfig(n_layer=2, n_embd=64, n_head=2, n_kv_head=1, vocab_size=320, sequence_len=16,
                   compute_dtype="float32")
# embedding 320·64 + head 64·320 + 2 layers × (c_q 64·64 + c_k 64·32 + c_v 64·32 + c_proj 64·64 + MLP 2·64·256)
TINY_PARAMS = 2 * 20480 + 2 * (4096 + 2048 + 2048 + 4096 + 32768)  # = 131072
# nanochat's d20: vocab 65536, width 1280, 10 heads of 128, no GQA, 2048 positions, bf16
D20 = ModelConfig(n_layer=20, n_embd=1280, n_head=10, n_kv_head=10, vocab_size=65536, sequence_len=2048)
D20_PARAMS = 2 * 65536 * 1280 + 20 * (4 * 1280 * 1280 + 8 * 1280 * 1280)  # = 560,988,160


@pytest.fixture(autouse=True)
def no_limit(monkeypatch):
    monkeypatch.delenv(memory.ENV_LIMIT, raising=False)


# ---- counts against the model and by hand -------------------------------------------------------------------


def test_param_count_matches_the_model_and_the_hand_count():
    assert TINY_PARAMS == 131072 and D20_PARAMS == 560_988_160
    assert memory.param_count(TINY) == TINY_PARAMS
    assert memory.param_count(D20) == D20_PARAMS == num_params(D20)
    assert memory.param_count(TINY.gpt_config()) == TINY_PARAMS  # onanchat's metadata mapping counts the same
    abstract = nnx.state(nnx.eval_shape(lambda: GPT(TINY, rngs=nnx.Rngs(0))))
    assert sum(x.size for x in jax.tree.leaves(abstract)) == TINY_PARAMS


def test_optimizer_count_matches_the_state_the_importer_builds():
    # Muon: one momentum per block parameter (90112); AdamW: two moments per embedding and head parameter (4·20480)
    assert memory.optimizer_count(TINY) == 90112 + 4 * 20480
    config = load_config(overrides=["tokenizer.vocab_size=320", "model.depth=null", "model.n_layer=2",
                                    "model.n_embd=64", "model.n_head=2", "model.n_kv_head=1",
                                    "model.sequence_len=16", "training.total_batch_tokens=512"])
    tx = build_optimizer(config.optimizer, config.model)
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    _, abstract, _ = train_state_shardings(config.model, tx, mesh)  # the layout init_train_state fills
    sizes = [x.size for x in jax.tree.leaves(abstract.opt_state) if x.ndim > 0]
    assert sum(sizes) == memory.optimizer_count(config.model)


def test_kv_cache_bytes_match_the_engine_cache_and_the_hand_count():
    # keys + values × 2 layers × batch 3 × 1 kv head × 100 positions rounded up to 128 × head 32 × fp32
    assert memory.kv_cache_bytes(TINY, 3, 100) == 2 * 2 * 3 * 1 * 128 * 32 * 4 == 196608
    cache = jax.eval_shape(lambda: KVCache.zeros(TINY, 3, memory.cache_len(100), dtype=jnp.float32))
    assert memory.kv_cache_bytes(TINY, 3, 100) == cache.k.size * 4 + cache.v.size * 4
    # d20 in bf16, one row at 2048: 2 × 20 × 10 × 2048 × 128 × 2 bytes = 200 MiB
    assert memory.kv_cache_bytes(D20, 1, 2048) == 209_715_200


def test_estimates_per_command_by_hand():
    params = 4 * TINY_PARAMS  # 524288 bytes
    assert memory.estimate(TINY, "chat").parts == {"parameters": params, "KV cache": 2 * 2 * 64 * 32 * 4,
                                                   "token buffer": 4 * 64}
    assert memory.estimate(TINY, "serve", batch=8).parts["KV cache"] == 8 * 2 * 2 * 64 * 32 * 4
    assert memory.estimate(TINY, "import").parts == {"parameters": 2 * params, "optimizer state": 4 * 172032}
    assert memory.estimate(TINY, "export").total == 2 * params
    # eval: 8 rows × 16 tokens × 16 widths × 64 × fp32 of activations + all 128 tokens' logits (loss_chunk 4096)
    assert memory.estimate(TINY, "eval").parts == {"parameters": params,
                                                   "working set": 128 * 16 * 64 * 4 + 128 * 320 * 4}


def test_sizes_print_and_parse():
    assert [memory.format_bytes(b) for b in (512, 8192, 209_715_200, 2_453_676_032, 4 * 10**12, 23 << 30)] == [
        "512 B", "8.0 KiB", "200 MiB", "2.3 GiB", "3.6 TiB", "23 GiB"]
    assert [memory.parse_bytes(t) for t in ("1234", "8G", "8GiB", "512m", "1.5T", "100kb")] == [
        1234, 8 << 30, 8 << 30, 512 << 20, 3 << 39, 102400]
    with pytest.raises(SizeError, match=r"^REVJAX_MEMORY_LIMIT='lots' is not a size; give bytes or a number with a "
                                        r"suffix, e.g. 8G or 512M$"):
        memory.parse_bytes("lots")


# ---- the refusal --------------------------------------------------------------------------------------------


def test_refusal_sentence_gives_the_figure_and_what_the_machine_has(monkeypatch):
    monkeypatch.setenv(memory.ENV_LIMIT, "1G")
    with pytest.raises(SizeError) as err:
        memory.check_fits(D20, "chat")
    assert str(err.value) == (
        "this model needs about 2.3 GiB to chat (parameters 2.1 GiB, KV cache 200 MiB, token buffer 8.0 KiB for "
        "1 × 2,048 tokens) but REVJAX_MEMORY_LIMIT allows 1.0 GiB; lower sequence_len or the batch, or use a larger "
        "machine (REVJAX_MEMORY_LIMIT overrides the figure)")
    monkeypatch.setenv(memory.ENV_LIMIT, "3G")
    assert memory.check_fits(D20, "chat").total == 4 * D20_PARAMS + 209_715_200 + 8192


def test_without_override_the_machine_figure_is_used(monkeypatch):
    have, whose = memory.available_memory("export")
    assert whose == "this machine has" and have and have <= memory.host_memory() + (1 << 30)
    monkeypatch.setattr(memory, "host_memory", lambda: 1 << 20)
    monkeypatch.setattr(memory, "accelerator_memory", lambda: None)
    with pytest.raises(SizeError, match=r"needs about 4\.2 GiB to export .* but this machine has 1\.0 MiB; use a "
                                        r"smaller model, or use a larger machine"):
        memory.check_fits(D20, "export")


def test_accelerator_figure_for_the_commands_that_compute_on_it(monkeypatch):
    monkeypatch.setattr(memory, "accelerator_memory", lambda: (80 << 30, "NVIDIA H100"))
    monkeypatch.setattr(memory, "host_memory", lambda: 20 << 30)
    assert memory.available_memory("chat") == (80 << 30, "the NVIDIA H100 has")
    assert memory.available_memory("import") == (80 << 30, "the NVIDIA H100 has")
    assert memory.available_memory("export") == (20 << 30, "this machine has")  # export never uses the device
    monkeypatch.setenv(memory.ENV_LIMIT, "2G")
    assert memory.available_memory("chat") == (2 << 30, "REVJAX_MEMORY_LIMIT allows")


@pytest.mark.parametrize("key, value, message", [
    ("n_layer", 10**9, "n_layer=1,000,000,000, above the largest n_layer revjax loads (1,024)"),
    ("sequence_len", 10**12, "sequence_len=1,000,000,000,000, above the largest sequence_len revjax loads"),
    ("vocab_size", 1 << 30, "vocab_size=1,073,741,824, above the largest vocab_size"),
    ("n_embd", 0, "n_embd=0, but model dimensions must be positive"),
    ("n_kv_head", 3, "n_head=2, which n_kv_head=3 does not divide"),
    ("n_head", 3, "n_embd=64, which n_head=3 does not divide"),
    ("n_layer", 2.5, "n_layer=2.5, which is not an integer"),
])
def test_dimensions_refused(key, value, message):
    with pytest.raises(SizeError, match="^" + re.escape(f"the file gives {message}")):
        memory.check_dimensions({**TINY.gpt_config(), key: value}, "the file")
    memory.check_dimensions(TINY.gpt_config(), "the file")  # a usable model passes


@pytest.mark.parametrize("override, message", [
    ("model.n_layer=1000000000", "model.n_layer=1,000,000,000 is above the largest n_layer revjax builds (1,024)"),
    ("model.sequence_len=1000000000000", "model.sequence_len=1,000,000,000,000 is above the largest sequence_len"),
    ("model.depth=1000000000", "model.depth=1,000,000,000 is above the largest depth revjax builds (1,024)"),
    ("tokenizer.vocab_size=100000000", "model.vocab_size=100,000,000 is above the largest vocab_size"),
])
def test_config_refuses_absurd_dimensions(override, message):
    base = ["model.depth=null", "model.n_layer=2", "model.n_embd=64", "model.n_head=2"]
    if override.startswith("model.depth"):
        base = []
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_config(overrides=[*base, override])


# ---- import ---------------------------------------------------------------------------------------------------


def _flat_release(folder: Path, **dims) -> Path:
    """A flat onanchat release folder whose meta.json declares ``dims`` (model.pt is a placeholder)."""
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"")
    model_config = {**TINY.gpt_config(), **dims}
    (folder / "meta.json").write_text(json.dumps({"model_config": model_config, "step": 0}))
    return folder


@pytest.mark.parametrize("dims, message", [
    ({"n_layer": 10**9}, r"meta\.json gives n_layer=1,000,000,000, above the largest n_layer revjax loads"),
    ({"sequence_len": 10**12}, r"meta\.json gives sequence_len=1,000,000,000,000, above the largest"),
])
def test_import_refuses_absurd_meta_at_once(tmp_path, dims, message):
    src = _flat_release(tmp_path / "src", **dims)
    started = time.perf_counter()
    with pytest.raises(InteropError, match=message):
        import_checkpoint(src, tmp_path / "out")
    assert time.perf_counter() - started < 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written


def test_import_refuses_a_model_the_machine_cannot_hold(tmp_path, monkeypatch):
    monkeypatch.setenv(memory.ENV_LIMIT, "1M")  # import needs 2 × 512 KiB + 672 KiB
    src = _flat_release(tmp_path / "src")
    with pytest.raises(InteropError, match=r"needs about 1\.7 MiB to import \(parameters 1\.0 MiB, optimizer state "
                                           r"672 KiB \(the state dict read and the train state, fp32\)\) but "
                                           r"REVJAX_MEMORY_LIMIT allows 1\.0 MiB"):
        import_checkpoint(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# ---- checkpoints: chat, eval, export -----------------------------------------------------------------------------

SEQ = 32


def make_run(folder: Path) -> Path:
    """A revjax run folder holding a tiny random model (2 layers, width 64) with the golden tokenizer."""
    tokenizer = Tokenizer.load(TOKENIZER_DIR)
    config = load_config(overrides=[
        f"base_dir={folder}", "run_name=tiny", "tokenizer.vocab_size=2048", f"tokenizer.dir={TOKENIZER_DIR}",
        "model.depth=null", "model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.n_kv_head=1",
        f"model.sequence_len={SEQ}", "model.compute_dtype=float32", f"checkpoint.dir={folder}",
        f"training.total_batch_tokens={SEQ * 8}"])
    _, state = nnx.split(nnx.eval_shape(lambda: GPT(config.model, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape).astype(np.float32)),
                          nnx.to_pure_dict(state))
    metadata = build_metadata(step=3, direction="forward", phase="base", model_config=config.model.gpt_config(),
                              config=config.to_dict(), tokenizer_identity=tokenizer.identity(),
                              tokenizer_path=str(TOKENIZER_DIR), val_bpb=None)
    with Checkpointer(folder, async_save=False) as checkpointer:
        checkpointer.save(3, {"params": params}, data_state=None, metadata=metadata)
    return folder


def edit_metadata(run: Path, **dims) -> None:
    """Set model dimensions in both places a checkpoint's metadata holds them (what a tampered file would do)."""
    path = run / "3" / "meta" / "metadata"  # the JSON item Orbax wrote
    meta = json.loads(path.read_text())
    meta["model_config"].update(dims)
    meta["config"]["model"].update(dims)
    if "sequence_len" in dims:  # consistent, as an import of such a model writes it
        meta["config"]["training"]["total_batch_tokens"] = dims["sequence_len"]
    path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("memory") / "tiny")


@pytest.fixture()
def tampered(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(run_dir, copy)
    return copy


LOADERS = {
    "chat": lambda run: load_model(run),
    "serve": lambda run: load_model(run, batch=8, command="serve"),
    "eval": lambda run: LoadedRun(run),
    "export": lambda run: read_params(run),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("dims, message", [
    ({"sequence_len": 10**12}, "sequence_len=1,000,000,000,000, above the largest sequence_len revjax loads"),
    ({"n_layer": 10**9}, "n_layer=1,000,000,000, above the largest n_layer revjax loads"),
])
def test_checkpoint_metadata_with_absurd_sizes_is_refused(tampered, loader, dims, message):
    edit_metadata(tampered, **dims)
    started = time.perf_counter()
    with pytest.raises(SizeError) as err:
        LOADERS[loader](tampered)
    assert time.perf_counter() - started < 5.0
    text = str(err.value)
    assert text.startswith(f"the metadata of {tampered / '3'} gives {message}") and "\n" not in text


@pytest.mark.parametrize("loader, need", [
    ("chat", "needs about 1.4 MiB to chat (parameters 1.3 MiB, KV cache 32 KiB, token buffer 256 B for 1 × 32 "),
    ("serve", "needs about 1.6 MiB to serve (parameters 1.3 MiB, KV cache 256 KiB, token buffer 2.0 KiB for 8 × 32 "),
    ("eval", "needs about 4.3 MiB to eval (parameters 1.3 MiB, working set 3.0 MiB for 8 × 32 tokens)"),
    ("export", "needs about 2.7 MiB to export (parameters 1.3 MiB, torch copy 1.3 MiB)"),
])
def test_loaders_refuse_a_model_the_machine_cannot_hold(run_dir, monkeypatch, loader, need):
    # parameters: 4 bytes × (2·2048·64 + 2·45056) = 1,409,024;
    # chat's cache: 2·2 layers·1 kv head·64·32·4 = 32 KiB;
    # eval: 8·32 tokens × (16·64 + 2048 logits) × 4 = 3 MiB
    monkeypatch.setenv(memory.ENV_LIMIT, "300K")
    with pytest.raises(SizeError) as err:
        LOADERS[loader](run_dir)
    assert str(err.value).startswith(f"the model of {run_dir / '3'} {need}")
    fix = "use a smaller model" if loader == "export" else "lower sequence_len or the batch"
    assert str(err.value).endswith(f"but REVJAX_MEMORY_LIMIT allows 300 KiB; {fix}, or use a larger machine "
                                   "(REVJAX_MEMORY_LIMIT overrides the figure)")


def test_a_model_that_fits_still_loads(run_dir):
    model = load_model(run_dir)
    assert model.max_len == SEQ and model.step == 3
    run = LoadedRun(run_dir)
    assert run.step == 3 and run.config.model.n_layer == 2
    params, _, _ = read_params(run_dir)
    assert sum(x.size for x in jax.tree.leaves(params)) == memory.param_count(run.config.model)
