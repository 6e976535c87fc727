"""Export to onanchat's PyTorch checkpoint layouts and import back: names, dtypes, logits, tokenizer, refusals."""

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from revjax.checkpoint import Checkpointer
from revjax.config import MeshConfig, load_config
from revjax.runs import build_metadata, read_params
from revjax.interop.export import InteropError, export_checkpoint, main as export_main
from revjax.interop.importer import import_checkpoint, main as import_main
from revjax.interop.state_dict import StateDictError, build_model, expected_shapes
from revjax.optim import build_optimizer
from revjax.runlock import RunLock
from revjax.sharding import make_mesh
from revjax.tokenizer import Tokenizer, TokenizerError, train_tokenizer
from revjax.train.setup import _init_from
from revjax.state import init_train_state, train_state_shardings
from tests.torch_reference import RefConfig, RefGPT

WORDS = "in the beginning god created heaven and earth to be or not to be that is the question".split()
STEP = 7
TEXT = "Héllo, wörld! 你好 🙂 <|bos|> <|user_start|>x<|assistant_end|>\n\t  12345 don't"


def overrides(base: Path) -> list[str]:
    return [f"base_dir={base}", "run_name=tiny", "tokenizer.vocab_size=320", "model.depth=null", "model.n_layer=2",
            "model.n_embd=64", "model.n_head=2", "model.n_kv_head=1", "model.sequence_len=16",
            "model.compute_dtype=float32", "direction.direction=backward", "training.phase=mid",
            "training.total_batch_tokens=512"]


def state_tree(state) -> dict:
    """The tree a revjax checkpoint holds for a train state."""
    return {"params": state.params, "opt_state": state.opt_state}


def save_checkpoint(config, tokenizer, params, folder: Path) -> None:
    """Save ``params`` (with a fresh optimizer state) as step STEP of a revjax checkpoint in ``folder``."""
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    _, state, _ = init_train_state(config.model, build_optimizer(config.optimizer, config.model), mesh, params=params)
    metadata = build_metadata(step=STEP, direction="backward", phase="mid", model_config=config.model.gpt_config(),
                              config=config.to_dict(), tokenizer_identity=tokenizer.identity(),
                              tokenizer_path=str(config.tokenizer_path()), val_bpb=1.25)
    with Checkpointer(folder, async_save=False) as checkpointer:
        checkpointer.save(STEP, state_tree(state), data_state=None, metadata=metadata)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A revjax run folder with one checkpoint whose every parameter is non-zero."""
    base = tmp_path_factory.mktemp("interop")
    docs = [" ".join(WORDS[(i * 5 + 3 * j) % len(WORDS)] for j in range(20 + i % 7)) for i in range(200)]
    tokenizer = train_tokenizer(docs, base / "tokenizer", 320, progress=False)
    config = load_config(overrides=overrides(base))
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    _, fresh, _ = init_train_state(config.model, build_optimizer(config.optimizer, config.model), mesh, seed=3)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.05, p.shape).astype(np.float32), fresh.params)
    save_checkpoint(config, tokenizer, params, config.checkpoint_path())
    return config, tokenizer, params


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    config, _, _ = run
    out = tmp_path_factory.mktemp("exports")
    default = export_checkpoint(config.checkpoint_path(), out / "onanchat")
    flat = export_checkpoint(config.checkpoint_path(), out / "flat", layout="flat", all_fp32=True)
    return default, flat


def revjax_logits(config, params, ids: np.ndarray) -> np.ndarray:
    model = build_model(config.model, params)
    return np.asarray(nnx.jit(lambda m, x: m(x))(model, jax.numpy.asarray(ids)))


def test_layouts_names_dtypes_and_meta(run, exported):
    config, _, _ = run
    default, flat = exported
    root = default.parents[2]
    assert default == root / "mid_checkpoints" / "d2_backward" / f"model_{STEP:06d}.pt"
    assert sorted(p.name for p in default.parent.iterdir()) == [f"meta_{STEP:06d}.json", f"model_{STEP:06d}.pt"]
    assert sorted(p.name for p in (root / "tokenizer").iterdir()) == ["token_bytes.pt", "tokenizer.pkl"]
    assert sorted(p.name for p in flat.parent.iterdir()) == [".revjax-output.json", "meta.json", "model.pt",
                                                             "token_bytes.pt", "tokenizer.pkl"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    shapes = expected_shapes(config.model)
    for path, wte_dtype in ((default, torch.bfloat16), (flat, torch.float32)):
        sd = torch.load(path, weights_only=True)
        assert list(sd) == list(shapes) and len(sd) == 2 + 6 * 2
        assert {k: tuple(v.shape) for k, v in sd.items()} == shapes
        assert sd["transformer.wte.weight"].dtype == wte_dtype
        assert all(v.dtype == torch.float32 and v.is_contiguous() for k, v in sd.items() if "wte" not in k)
    meta = json.loads((default.parent / f"meta_{STEP:06d}.json").read_text())
    assert meta["model_config"] == {"sequence_len": 16, "vocab_size": 320, "n_layer": 2, "n_head": 2,
                                    "n_kv_head": 1, "n_embd": 64}
    assert (meta["step"], meta["direction"], meta["val_bpb"]) == (STEP, "backward", 1.25)
    assert meta["dataloader_state_dict"] == {"output_batch_index": 0}
    assert meta["loop_state"] == {"min_val_bpb": 1.25, "smooth_train_loss": 0.0, "total_training_time": 0.0}
    assert (meta["device_batch_size"], meta["max_seq_len"]) == (config.training.device_batch_size, 16)
    assert isinstance(meta["user_config"], dict)
    assert json.loads((flat.parent / "meta.json").read_text()) == meta


def test_torch_reference_logits_match(run, exported):
    config, _, params = run
    _, flat = exported
    ref = RefGPT(RefConfig(**config.model.gpt_config()))
    ref.load_state_dict(torch.load(flat, weights_only=True), strict=True)
    ids = np.random.default_rng(1).integers(0, 320, (2, 16))
    with torch.no_grad():
        ref_logits, _ = ref.eval()(torch.from_numpy(ids))
    ours = revjax_logits(config, params, ids)
    assert np.abs(ref_logits.numpy() - ours).max() / np.abs(ours).max() < 1e-5


def test_tokenizer_files(run, exported):
    _, tokenizer, _ = run
    default, flat = exported
    for folder in (default.parents[2] / "tokenizer", flat.parent):
        script = ("import pickle, sys, json, tiktoken; enc = pickle.load(open(sys.argv[1], 'rb')); "
                  "assert type(enc) is tiktoken.Encoding; print(json.dumps(enc.encode_ordinary(sys.argv[2])))")
        done = subprocess.run([sys.executable, "-c", script, str(folder / "tokenizer.pkl"), TEXT],
                              capture_output=True, text=True, check=True)
        assert json.loads(done.stdout) == tokenizer.encode(TEXT)
        token_bytes = torch.load(folder / "token_bytes.pt", weights_only=True)
        assert token_bytes.dtype == torch.int32 and token_bytes.shape == (320,)
        np.testing.assert_array_equal(token_bytes.numpy(), tokenizer.token_bytes())


@pytest.mark.parametrize("which", ["default", "flat"])
def test_import_round_trip(run, exported, tmp_path, which):
    config, tokenizer, params = run
    default, flat = exported
    src = default.parent if which == "default" else flat.parent
    out = import_checkpoint(src, tmp_path / "imported")
    back, meta, imported = read_params(out)
    expected = jax.tree.map(np.asarray, params)
    if which == "default":
        wte = np.asarray(jax.numpy.asarray(expected["wte"]).astype(jax.numpy.bfloat16).astype(np.float32))
        expected = {**expected, "wte": wte}
    jax.tree.map(np.testing.assert_array_equal, back, expected)
    phase = "mid" if which == "default" else "base"  # a flat folder does not name its phase
    assert (meta["step"], meta["direction"], meta["phase"]) == (STEP, "backward", phase)
    assert meta["tokenizer_identity"] == tokenizer.identity()
    assert imported.model.gpt_config() == config.model.gpt_config() and imported.model.depth is None
    assert Tokenizer.load(out / "tokenizer").identity() == tokenizer.identity()
    # A later phase can start from it (training.init_from), and the full state restores.
    follow = load_config(overrides=[*overrides(config.base_path()), f"training.init_from={out}",
                                    f"tokenizer.dir={out / 'tokenizer'}"])
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    start, _ = _init_from(follow, tokenizer)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, start), expected)
    tx = build_optimizer(imported.optimizer, imported.model)
    _, abstract, _ = train_state_shardings(imported.model, tx, mesh)
    with Checkpointer(out) as checkpointer:
        state, data_state, _ = checkpointer.restore(state_tree(abstract))
    assert data_state is None and set(state) == {"params", "opt_state"}


def test_phase_from_folder_and_flag(exported, tmp_path):
    default, flat = exported
    assert Checkpointer(import_checkpoint(flat.parent, tmp_path / "a")).metadata()["phase"] == "base"
    assert Checkpointer(import_checkpoint(flat.parent, tmp_path / "b", phase="sft")).metadata()["phase"] == "sft"
    assert Checkpointer(import_checkpoint(default.parent, tmp_path / "c")).metadata()["phase"] == "mid"


def test_cli_and_overwrite_refusal(run, exported, tmp_path, capsys):
    config, _, _ = run
    _, flat = exported
    assert export_main([str(config.checkpoint_path()), str(flat.parent), "--flat"]) == 1
    assert "pass --force to replace it" in capsys.readouterr().err
    assert export_main([str(config.checkpoint_path()), str(tmp_path / "x"), "--phase", "sft", "--tag", "t",
                        "--fp32"]) == 0
    assert (tmp_path / "x" / "chatsft_checkpoints" / "t" / f"model_{STEP:06d}.pt").is_file()
    assert export_main([str(config.checkpoint_path()), str(tmp_path / "x"), "--phase", "sft", "--tag", "t"]) == 1
    assert export_main([str(config.checkpoint_path()), str(tmp_path / "x"), "--phase", "sft", "--tag", "t",
                        "--force"]) == 0
    assert import_main([str(flat.parent), str(tmp_path / "r")]) == 0
    assert import_main([str(flat.parent), str(tmp_path / "r")]) == 1
    assert "already holds an earlier revjax import; pass --force" in capsys.readouterr().err


def _digest(folder: Path) -> dict[str, bytes]:
    """Every file's bytes but the run lock's (the lock taken for the swap moves aside with the folder)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _asides(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f".{name}.replaced-*"))


def test_force_replaces_only_its_own_output_and_moves_it_aside(run, exported, tmp_path, capsys):
    config, _, _ = run
    _, flat = exported
    source = config.checkpoint_path()
    before = _digest(source)
    # someone else's folder, the run being exported, a folder inside it, a folder holding it: refused, untouched
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    for out, words in ((foreign, "did not write (thesis.tex)"), (source, "reads from"),
                       (source / "inside", "reads from"), (source.parent, "reads from")):
        assert export_main([str(source), str(out), "--flat", "--force"]) == 1, out
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    assert (foreign / "thesis.tex").read_text() == "years of work" and _digest(source) == before
    assert not (source / "inside").exists()
    assert export_main([str(source), str(source), "--force"]) == 1  # onanchat's layout into the run itself
    assert "being exported" in capsys.readouterr().err and _digest(source) == before

    # an earlier export is replaced with --force, moved aside (printed), never deleted
    out = tmp_path / "release"
    assert export_main([str(source), str(out), "--flat"]) == 0
    first = _digest(out)
    capsys.readouterr()
    assert export_main([str(source), str(out), "--flat", "--fp32", "--force"]) == 0
    printed = capsys.readouterr().out
    [aside] = _asides(tmp_path, "release")
    assert str(aside) in printed and _digest(aside) == first and _digest(out) != first
    # an export made before the marker existed: one sentence saying how to replace it deliberately
    (out / ".revjax-output.json").unlink()
    assert export_main([str(source), str(out), "--flat", "--force"]) == 1
    assert f"mv {out} {out}.old" in capsys.readouterr().err and len(_asides(tmp_path, "release")) == 1

    # import: over a folder it did not write, refused; over a run a training holds, refused; its own, moved aside
    assert import_main([str(flat.parent), str(foreign), "--force"]) == 1
    assert "did not write" in capsys.readouterr().err and (foreign / "thesis.tex").exists()
    target = tmp_path / "imported"
    assert import_main([str(flat.parent), str(target)]) == 0
    imported = _digest(target)
    with RunLock(target, "training"):
        assert import_main([str(flat.parent), str(target), "--force"]) == 1
        assert "is in use by" in capsys.readouterr().err
    assert _digest(target) == imported and not _asides(tmp_path, "imported")
    assert import_main([str(flat.parent), str(target), "--force"]) == 0
    [aside] = _asides(tmp_path, "imported")
    assert str(aside) in capsys.readouterr().out
    assert _digest(aside) == imported


def _edit_model(folder: Path, change) -> None:
    sd = torch.load(folder / "model.pt", weights_only=True)
    change(sd)
    torch.save(sd, folder / "model.pt")


def _edit_meta(folder: Path, change) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


REFUSALS = {
    "missing tensor": (StateDictError, "lacks 1 tensor",
                       lambda f: _edit_model(f, lambda sd: sd.pop("lm_head.weight"))),
    "extra tensor": (StateDictError, "does not use",
                     lambda f: _edit_model(f, lambda sd: sd.update({"transformer.h.0.attn.bias": torch.zeros(3)}))),
    "bad shape": (StateDictError, "shape",
                  lambda f: _edit_model(f, lambda sd: sd.update({"lm_head.weight": sd["lm_head.weight"][:, :-1]}))),
    "unknown key": (InteropError, "model_config keys",
                    lambda f: _edit_meta(f, lambda m: m["model_config"].update({"n_experts": 8}))),
    "2026 meta, 2025 weights": (StateDictError, "lacks .* tensor",
                                lambda f: _edit_meta(f, lambda m: m["model_config"].update({"window_pattern": "L"}))),
    "vocab": (InteropError, "tokens but model_config",
              lambda f: _edit_meta(f, lambda m: m["model_config"].update({"vocab_size": 321}))),
    "pickle": (TokenizerError, "only a pickled tiktoken.Encoding",
               lambda f: (f / "tokenizer.pkl").write_bytes(pickle.dumps(Evil()))),
    "no model": (InteropError, "has no model.pt", lambda f: (f / "model.pt").unlink()),
    "no tokenizer": (TokenizerError, "no tokenizer found", lambda f: (f / "tokenizer.pkl").unlink()),
    "fractional step": (InteropError, r"meta.json has step 7.5, but a step must be a non-negative integer",
                        lambda f: _edit_meta(f, lambda m: m.update({"step": 7.5}))),
    "text step": (InteropError, r"meta.json has step 'seven', but a step must be a non-negative integer",
                  lambda f: _edit_meta(f, lambda m: m.update({"step": "seven"}))),
    "nan weight": (StateDictError, r"tensor 'transformer.h.1.mlp.c_fc.weight' holds 1 NaN or infinite value\(s\)",
                   lambda f: _edit_model(f, lambda sd: sd["transformer.h.1.mlp.c_fc.weight"][0, 3:4].fill_(np.nan))),
    "inf weight": (StateDictError, r"tensor 'lm_head.weight' holds 2 NaN or infinite value\(s\); the weights are",
                   lambda f: _edit_model(f, lambda sd: sd["lm_head.weight"][5, :2].fill_(-np.inf))),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_import_refusals(exported, tmp_path, case):
    _, flat = exported
    error, match, damage = REFUSALS[case]
    src = tmp_path / "src"
    shutil.copytree(flat.parent, src)
    damage(src)
    with pytest.raises(error, match=match):
        import_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]


def test_meta_without_direction_imports_as_forward(exported, tmp_path):
    _, flat = exported
    src = tmp_path / "src"
    shutil.copytree(flat.parent, src)
    _edit_meta(src, lambda m: m.pop("direction"))
    out = import_checkpoint(src, tmp_path / "out")
    _, meta, config = read_params(out)
    assert (meta["direction"], config.direction.direction, meta["step"]) == ("forward", "forward", STEP)


@pytest.mark.parametrize("command", ["export", "import"])
def test_missing_torch_names_the_extra(run, exported, tmp_path, monkeypatch, capsys, command):
    config, _, _ = run
    _, flat = exported
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    if command == "export":
        code = export_main([str(config.checkpoint_path()), str(tmp_path / "out"), "--flat"])
    else:
        code = import_main([str(flat.parent), str(tmp_path / "out")])
    assert code == 1
    assert capsys.readouterr().err == (f"revjax {command}: error: revjax {command} needs the 'torch' package, which is "
                                       "not installed; install it with pip install 'revjax[torch]'\n")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_nan_weights(run, tmp_path):
    config, tokenizer, params = run
    broken = jax.tree.map(np.array, params)
    broken["blocks"][0]["attn"]["c_q"]["kernel"][1, 2] = np.nan
    save_checkpoint(config, tokenizer, broken, tmp_path / "run")
    with pytest.raises(StateDictError, match=r"tensor 'transformer.h.0.attn.c_q.weight' holds 1 NaN or infinite"):
        export_checkpoint(tmp_path / "run", tmp_path / "out", layout="flat")
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_import_refuses_missing_source_and_step(exported, tmp_path):
    default, _ = exported
    with pytest.raises(InteropError, match="not a folder"):
        import_checkpoint(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(InteropError, match="no model_000003.pt"):
        import_checkpoint(default.parent, tmp_path / "out", step=3)
    with pytest.raises(InteropError, match="none of the layouts revjax imports"):
        import_checkpoint(default.parents[2], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refusals(run, tmp_path):
    config, _, _ = run
    with pytest.raises(InteropError, match="not a folder"):
        export_checkpoint(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(InteropError, match="layout"):
        export_checkpoint(config.checkpoint_path(), tmp_path / "out", layout="hf")
    with pytest.raises(InteropError, match="phase"):
        export_checkpoint(config.checkpoint_path(), tmp_path / "out", phase="pretrain")
    assert list(tmp_path.iterdir()) == []


def test_safetensors_copy(run, tmp_path):
    config, _, _ = run
    try:
        import safetensors.torch
    except ImportError:
        with pytest.raises(InteropError, match="safetensors"):
            export_checkpoint(config.checkpoint_path(), tmp_path / "out", layout="flat", safetensors=True)
        assert list(tmp_path.iterdir()) == []
        return
    path = export_checkpoint(config.checkpoint_path(), tmp_path / "out", layout="flat", safetensors=True)
    tensors = safetensors.torch.load_file(path.with_suffix(".safetensors"))
    sd = torch.load(path, weights_only=True)
    assert sorted(tensors) == sorted(sd)
    assert all(torch.equal(tensors[k], sd[k]) for k in sd)
