"""The revjax command: config printing, tokenizer training on a parquet corpus, and clear errors."""

from pathlib import Path

import pytest
import yaml

from revjax.cli import main
from revjax.data.shards import write_shards
from revjax.tokenizer import Tokenizer

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards hum and judges vex quietly".split()


@pytest.fixture()
def corpus(tmp_path):
    docs = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(40 + i % 9)) + "." for i in range(240)]
    write_shards(docs, tmp_path / "corpus", docs_per_shard=120)
    return tmp_path


def test_config_prints_resolved_yaml(capsys):
    main(["config", "--config", "default", "training.seed=7"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["training"]["seed"] == 7 and printed["model"]["n_layer"] == 4


def test_tokenizer_command_trains_and_saves(corpus, capsys):
    main(["tokenizer", "data.corpus=parquet", f"data.dir={corpus / 'corpus'}", f"base_dir={corpus}",
          "tokenizer.vocab_size=300"])
    out = capsys.readouterr().out
    assert "compression on eval texts" in out
    assert Tokenizer.load(corpus / "tokenizer").vocab_size == 300


def test_errors_are_one_sentence_with_exit_codes(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["config", "model.n_embed=3"])
    assert info.value.code == 2
    assert "did you mean 'model.n_embd'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["prepare", "data.corpus=parquet", f"data.dir={tmp_path}"])
    assert info.value.code == 1
    assert f"no parquet shards found in {tmp_path}" in capsys.readouterr().err


def test_export_and_import_are_reachable_from_the_revjax_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["import", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert info.value.code == 1
    assert "is not a folder holding an onanchat checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_configs_are_package_data_found_from_any_folder(tmp_path, monkeypatch):
    import revjax
    from revjax.config_args import find_config

    monkeypatch.chdir(tmp_path)
    for name in ("d20", "direction/backward", "phase/sft", "experiments/directions"):
        assert find_config(name).is_relative_to(Path(revjax.__file__).parent / "configs")


def test_commands_keep_a_compilation_cache_under_the_base_dir(tmp_path):
    """``revjax eval``/``compare`` and training put jax's persistent compilation cache in <base dir>/jax_cache,
    unless jax's own JAX_COMPILATION_CACHE_DIR names one."""
    import os
    import subprocess
    import sys

    code = ("import jax; from revjax.compilation import use_compilation_cache; use_compilation_cache(); "
            "print(jax.config.jax_compilation_cache_dir)")
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    run = lambda extra: subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True,
                                       text=True, check=True).stdout.strip()
    assert run({"REVJAX_BASE_DIR": str(tmp_path)}) == str(tmp_path / "jax_cache")
    assert run({"REVJAX_BASE_DIR": str(tmp_path), "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "own")}) \
        == str(tmp_path / "own")

    # training, in a process that has compiled before: the run's base dir, and new programs are written there
    train = ("import jax, jax.numpy as jnp; import revjax.train.loop as loop; import revjax.train.setup as setup\n"
             "from revjax.config import Config\n"
             "jax.jit(lambda x: x + 1)(jnp.ones(3))\n"
             "def stop(config): raise SystemExit(0)\n"
             "setup.prepare_run = stop\n"
             "try:\n    loop.train(Config(base_dir=%r))\n"
             "finally:\n    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
             "    jax.jit(lambda x: x * 3 - 1)(jnp.ones(5)).block_until_ready()\n") % str(tmp_path / "run-base")
    subprocess.run([sys.executable, "-c", train], env={**env, "REVJAX_BASE_DIR": str(tmp_path)}, check=True)
    assert any((tmp_path / "run-base" / "jax_cache").iterdir())
