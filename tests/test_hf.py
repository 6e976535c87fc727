"""``revjax export --format hf``: transformers' native NanoChat loads the folder and computes revjax's logits."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from revjax.checkpoint import Checkpointer
from revjax.config import MeshConfig, load_config
from revjax.interop.export import main as export_main
from revjax.interop.export import InteropError
from revjax.interop.hf import HFExportError, check_representable, export_hf, tokenizer_json
from revjax.interop.importer import import_checkpoint
from revjax.interop.state_dict import build_model
from revjax.optim import build_optimizer
from revjax.runs import build_metadata, load_run
from revjax.sharding import make_mesh
from revjax.state import init_train_state
from revjax.tokenizer import Tokenizer, train_tokenizer
from tests.helpers import TOKENIZER_DIR

import torch  # noqa: E402  (the test extra installs torch and transformers)
import transformers  # noqa: E402

WORDS = "in the beginning god created heaven and earth to be or not to be that is the question".split()
STEP = 5
DIRECTIONS = ("forward", "backward", "bidirectional")


def make_run(base: Path, direction: str, seed: int = 0):
    """A tiny revjax run (d=64, 2 layers, GQA 2:1) with one checkpoint whose every parameter is non-zero."""
    docs = [" ".join(WORDS[(i * 5 + 3 * j) % len(WORDS)] for j in range(20 + i % 7)) for i in range(200)]
    tokenizer = train_tokenizer(docs, base / "tokenizer", 320, progress=False)
    config = load_config(overrides=[
        f"base_dir={base}", "run_name=tiny", "tokenizer.vocab_size=320", "model.depth=null", "model.n_layer=2",
        "model.n_embd=64", "model.n_head=2", "model.n_kv_head=1", "model.sequence_len=16",
        "model.compute_dtype=float32", f"direction.direction={direction}", "training.phase=base",
        "training.total_batch_tokens=512"])
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    optimizer = build_optimizer(config.optimizer, config.model)
    _, fresh, _ = init_train_state(config.model, optimizer, mesh, seed=3)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.05, p.shape).astype(np.float32), fresh.params)
    _, state, _ = init_train_state(config.model, optimizer, mesh, params=params)
    metadata = build_metadata(step=STEP, direction=direction, phase="base", model_config=config.model.gpt_config(),
                              config=config.to_dict(), tokenizer_identity=tokenizer.identity(),
                              tokenizer_path=str(config.tokenizer_path()), val_bpb=1.5)
    with Checkpointer(config.checkpoint_path(), async_save=False) as checkpointer:
        checkpointer.save(STEP, {"params": state.params, "opt_state": state.opt_state}, data_state=None,
                          metadata=metadata)
    return config, tokenizer, params


@pytest.fixture(scope="module", params=DIRECTIONS)
def exported(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"hf-{request.param}")
    config, tokenizer, params = make_run(base, request.param, seed=DIRECTIONS.index(request.param))
    out = export_hf(config.checkpoint_path(), base / "hf")
    return request.param, config, tokenizer, params, out


def revjax_logits(config, params, ids: np.ndarray, rope_bf16: bool = False) -> np.ndarray:
    """revjax's logits, by default with RoPE tables in fp32 as transformers keeps them (model.rope_bf16=false)."""
    model = build_model(dataclasses.replace(config.model, rope_bf16=rope_bf16), params)
    return np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)))


def hf_logits(folder: Path, ids: np.ndarray) -> np.ndarray:
    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False,
                                                                    dtype=torch.float32, output_loading_info=True)
    assert type(model).__name__ == "NanoChatForCausalLM"
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


def test_transformers_loads_and_matches(exported):
    direction, config, tokenizer, params, out = exported
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["model.safetensors", "config.json", "generation_config.json", "README.md", "tokenizer.json",
         "tokenizer_config.json"])
    assert json.loads((out / "config.json").read_text())["model_type"] == "nanochat"
    rng = np.random.default_rng(1)
    ids = rng.integers(0, config.model.vocab_size, (2, 16)).astype(np.int64)
    ids[:, 0] = tokenizer.bos_id
    theirs = hf_logits(out, ids)
    ours = revjax_logits(config, params, ids)
    assert theirs.shape == ours.shape and np.abs(ours).max() > 0.5
    exact = np.abs(theirs - ours).max()
    # the 2025 recipe rounds its RoPE tables to bf16 as onanchat does; transformers keeps them in fp32
    bf16_tables = np.abs(theirs - revjax_logits(config, params, ids, rope_bf16=True)).max()
    print(f"{direction}: max |logits diff| {exact:.2e} (fp32 RoPE tables), {bf16_tables:.2e} (revjax's bf16 tables)")
    assert exact < 1e-4
    assert 1e-4 < bf16_tables < 2e-2


def test_greedy_generation_through_the_cache_matches(exported):
    """transformers' generate (its KV cache) continues a prompt as revjax's logits do, token for token."""
    direction, config, tokenizer, params, out = exported
    prompt = [tokenizer.bos_id] + tokenizer.encoding.encode_ordinary("to be or not")[::-1]
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = model.generate(torch.tensor([prompt]), max_new_tokens=16 - len(prompt), do_sample=False,
                                min_new_tokens=16 - len(prompt))[0].tolist()
    ours = list(prompt)
    while len(ours) < len(theirs):
        ours.append(int(revjax_logits(config, params, np.asarray([ours]))[0, -1].argmax()))
    assert theirs == ours


def test_bf16_export(exported, tmp_path):
    direction, config, _, params, _ = exported
    from safetensors import safe_open

    out = export_hf(config.checkpoint_path(), tmp_path / "bf16", fp32=False)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    back = load_run(import_checkpoint(out, tmp_path / "back"))  # the import rounds nothing further
    for got, want in zip(jax.tree.leaves(back.arrays), jax.tree.leaves(params)):
        np.testing.assert_array_equal(got, np.asarray(jnp.asarray(want).astype(jnp.bfloat16).astype(jnp.float32)))


def test_model_card_names_direction_step_and_bpb(exported):
    direction, _, tokenizer, _, out = exported
    card = (out / "README.md").read_text()
    assert f"direction: {direction}" in card and "step: 5" in card and "1.5000" in card
    if direction == "bidirectional":
        assert f"[{tokenizer.bos_id}, {tokenizer.forward_id}]" in card
    if direction == "backward":
        assert "reversed" in card


TEXT = "Héllo, wörld! 你好 🙂 in the beginning\n\n\t  12345 don't DON'T   be or not\r\n"


def test_tokenizer_encodes_as_revjax(exported):
    _, _, tokenizer, _, out = exported
    hf = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer.encoding.encode_ordinary(TEXT)
    assert hf.encode(TEXT, add_special_tokens=False) == ids
    assert hf.decode(ids) == TEXT
    assert hf.convert_tokens_to_ids(["<|bos|>", "<|forward|>", "<|backward|>"]) == [
        tokenizer.bos_id, tokenizer.forward_id, tokenizer.backward_id]
    the = tokenizer.encoding.encode_ordinary("the")
    assert hf.encode("<|bos|>the", add_special_tokens=False) == [tokenizer.bos_id] + the
    assert len(hf) == tokenizer.vocab_size


def test_tokenizer_json_of_the_golden_tokenizer():
    """The 2048-token golden tokenizer: tokenizer.json encodes its recorded cases to the recorded ids."""
    import tokenizers
    tokenizer = Tokenizer.load(TOKENIZER_DIR)
    hf = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json(tokenizer.encoding)))
    cases = json.loads((TOKENIZER_DIR / "encode_cases.json").read_text())
    plain = [case for case in cases if "<|" not in case["text"]]  # tokenizers reads special spellings as specials
    assert len(plain) >= len(cases) - 1
    for case in plain:
        assert [tokenizer.bos_id] + hf.encode(case["text"], add_special_tokens=False).ids == case["ids"], case["text"]
        assert hf.decode(case["ids"][1:], skip_special_tokens=False) == case["text"]
    assert hf.get_vocab_size() == tokenizer.vocab_size


def test_refuses_an_unrepresentable_model(exported):
    _, config, _, _, _ = exported

    with pytest.raises(HFExportError, match="n_kv_head"):
        check_representable(dataclasses.replace(config.model, n_head=4, n_kv_head=3))
    check_representable(config.model)


def test_cli_format_hf_and_force(exported, tmp_path, capsys):
    direction, config, _, _, out = exported
    target = tmp_path / "cli"
    assert export_main([str(config.checkpoint_path()), str(target), "--format", "hf"]) == 0
    assert (target / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert export_main([str(config.checkpoint_path()), str(target), "--format", "hf"]) != 0
    assert "--force" in capsys.readouterr().err
    assert export_main([str(config.checkpoint_path()), str(target), "--format", "hf", "--force"]) == 0
    assert export_main([str(config.checkpoint_path()), str(target), "--format", "onanchat", "--flat"]) == 2
    assert export_main([str(config.checkpoint_path()), str(target), "--format", "hf", "--tag", "x"]) == 2
    assert export_main([str(config.checkpoint_path()), str(tmp_path / "b"), "--flat", "--bf16"]) == 2
    assert export_main([str(config.checkpoint_path()), str(tmp_path / "b"), "--format", "hf", "--bf16"]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["dtype"] == "bfloat16"
    flat = tmp_path / "flat"
    assert export_main([str(config.checkpoint_path()), str(flat), "--format", "flat"]) == 0
    assert (flat / "model.pt").is_file()
    assert export_main([str(config.checkpoint_path()), str(tmp_path / "flat2"), "--flat"]) == 0
    assert (tmp_path / "flat2" / "model.pt").read_bytes() == (flat / "model.pt").read_bytes()


def test_import_of_an_fp32_export_is_bit_identical(exported, tmp_path):
    """revjax export --format hf, then revjax import of that folder: every weight, the tokenizer and the metadata
    come back unchanged."""
    direction, config, tokenizer, params, out = exported
    back = load_run(import_checkpoint(out, tmp_path / "back"))
    assert (back.meta["direction"], back.meta["phase"], back.step, back.meta["val_bpb"]) == (direction, "base", STEP, 1.5)
    assert back.tokenizer.identity() == tokenizer.identity()
    assert back.config.model.gpt_config() == config.model.gpt_config()
    assert (back.config.model.rope_bf16, back.config.model.rope_base) == (True, 10_000.0)
    pairs = zip(jax.tree.leaves_with_path(back.arrays), jax.tree.leaves_with_path(params))
    for (path, got), (path2, want) in pairs:
        assert path == path2 and got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("key, value, named", [
    ("hidden_act", "gelu", "the MLP activation"), ("final_logit_softcapping", 30.0, "the logit softcap"),
    ("intermediate_size", 100, "the MLP width"), ("tie_word_embeddings", True, "tied embeddings")])
def test_import_refuses_a_config_revjax_computes_differently(exported, tmp_path, key, value, named):
    _, _, _, _, out = exported
    import shutil

    src = tmp_path / "src"
    shutil.copytree(out, src)
    config = json.loads((src / "config.json").read_text())
    config[key] = value
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(InteropError, match=f"differs in {named}"):
        import_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_refuses_tensors_of_another_architecture(exported, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, _, _, _, out = exported
    import shutil

    src = tmp_path / "src"
    shutil.copytree(out, src)
    tensors = load_file(str(src / "model.safetensors"))
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(32, np.float32)
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(InteropError, match="q_norm.weight.*different architecture"):
        import_checkpoint(src, tmp_path / "out")


def test_a_foreign_transformers_folder_imports_to_the_same_logits(exported, tmp_path):
    """A NanoChat folder revjax did not write (no revjax entry, another RoPE base) imports as a model that computes
    what transformers computes: fp32 RoPE tables and its rope_theta."""
    import shutil

    _, config, _, _, out = exported
    src = tmp_path / "foreign"
    shutil.copytree(out, src)
    foreign = json.loads((src / "config.json").read_text())
    del foreign["revjax"]
    foreign["rope_parameters"] = {"rope_type": "default", "rope_theta": 50_000.0}
    (src / "config.json").write_text(json.dumps(foreign))
    back = load_run(import_checkpoint(src, tmp_path / "back"))
    # no metadata and a name that says nothing: forward
    assert (back.meta["direction"], back.config.model.rope_base, back.config.model.rope_bf16) == (
        "forward", 50_000.0, False)
    ids = np.random.default_rng(2).integers(0, config.model.vocab_size, (1, 16)).astype(np.int64)
    model = build_model(dataclasses.replace(back.config.model, compute_dtype="float32"), back.arrays)
    ours = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)))
    assert np.abs(hf_logits(src, ids) - ours).max() < 1e-4
    assert np.abs(hf_logits(out, ids) - ours).max() > 1e-3  # the base matters: the check above can fail


def test_the_2026_recipe_is_refused_naming_what_transformers_lacks():
    from revjax.config import ModelConfig

    m = ModelConfig(depth=None, sequence_len=512, vocab_size=300, n_layer=4, n_head=2, n_kv_head=1, n_embd=64,
                    recipe="nanochat-2026")
    with pytest.raises(HFExportError, match=r"sliding-window attention \(window_pattern=SSSL\), value embeddings, "
                                            r"per-layer resid/x0 lambdas, smear, backout, a Q/K scale of 1.2, a "
                                            r"vocabulary padded to 320 rows"):
        check_representable(m)
    check_representable(dataclasses.replace(m, recipe="onanchat-2025"))


def test_missing_safetensors_is_one_sentence_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "safetensors", None)  # import safetensors raises ImportError
    run_dir, target = tmp_path / "run", tmp_path / "no-safetensors"
    run_dir.mkdir()  # refused before the run is even read
    assert export_main([str(run_dir), str(target), "--format", "hf"]) != 0
    err = capsys.readouterr().err
    assert "needs the 'safetensors' package" in err and "pip install 'revjax[torch]'" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
