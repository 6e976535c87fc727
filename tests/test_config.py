"""Typed configuration: YAML files, overrides, the depth rule, serialisation and one-sentence errors."""

import json
from pathlib import Path

import pytest

from revjax.config import Config, ConfigError, dims_from_depth, load_config, parse_override
from tests.helpers import laughs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "experiments"),
                         ids=lambda p: str(p.relative_to(CONFIGS)))  # experiments/ holds sweep files
def test_every_shipped_config_loads_and_round_trips(path):
    config = load_config([path])
    assert Config.from_dict(config.to_dict()) == config
    assert Config.from_dict(json.loads(config.to_json())) == config
    assert load_config([write_yaml(config)]) == config


def write_yaml(config: Config) -> Path:
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    handle.write(config.to_yaml())
    handle.close()
    return Path(handle.name)


@pytest.mark.parametrize("depth", [4, 8, 12, 16, 20, 26, 32])
def test_depth_rule(depth):
    model = load_config([CONFIGS / "model" / f"d{depth}.yaml"]).model
    assert (model.n_layer, model.n_embd) == (depth, 64 * depth)
    assert model.head_dim == 128 and model.n_kv_head == model.n_head
    assert dims_from_depth(depth)["n_head"] == model.n_head


def test_defaults_are_d20_and_vocab_comes_from_tokenizer():
    model = load_config().model
    assert (model.depth, model.n_layer, model.n_embd, model.n_head, model.vocab_size) == (20, 20, 1280, 10, 65536)
    assert load_config(overrides=["tokenizer.vocab_size=4096"]).model.vocab_size == 4096


def test_files_merge_in_order_with_includes_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "model:\n  depth: 4\ntraining:\n  seed: 1\n")
    top = write(tmp_path, "top.yaml", "include: base.yaml\ntraining:\n  seed: 2\n  device_batch_size: 4\n")
    config = load_config([top], ["training.seed=3", "optimizer.matrix_lr=1e-3", "direction.direction=backward"])
    assert config.model.n_layer == 4
    assert (config.training.seed, config.training.device_batch_size) == (3, 4)
    assert config.optimizer.matrix_lr == pytest.approx(1e-3)
    assert config.direction.direction == "backward"
    assert load_config([top, CONFIGS / "direction" / "bidirectional-compat.yaml"]).direction.layout == "compat"


def test_gqa_allowed_with_depth_and_explicit_dims_without_depth():
    assert load_config(overrides=["model.depth=4", "model.n_kv_head=1"]).model.n_kv_head == 1
    model = load_config(overrides=["model.n_layer=2", "model.n_embd=64", "model.n_head=1"]).model
    assert (model.depth, model.n_layer, model.n_kv_head) == (None, 2, 1)


@pytest.mark.parametrize(
    "text, overrides, pattern",
    [
        ("model:\n  n_embed: 64\n", [], r"unknown key 'model.n_embed' in .*bad.yaml.*did you mean 'model.n_embd'"),
        ("trainer:\n  seed: 1\n", [], r"unknown key 'trainer' in .*bad.yaml"),
        ("model:\n  n_layer: two\n", [], r"model.n_layer must be an integer or null, got 'two' in .*bad.yaml"),
        ("model:\n  n_layer: 2\n  n_embd: 100\n  n_head: 3\n", [],
         r"model.n_embd=100 is not divisible by model.n_head=3 \(from .*bad.yaml\)"),
        ("model:\n  depth: 4\n  n_head: 4\n  n_kv_head: 3\n", [], r"model.n_head=4 disagrees with model.depth=4"),
        ("direction:\n  direction: sideways\n", [], r"direction.direction must be one of 'forward', 'backward'"),
        ("schedule:\n  warmdown_ratio: 1.5\n", [], r"schedule.warmdown_ratio=1.5 must be between 0 and 1"),
        ("model: 3\n", [], r"model must be a mapping of keys, got 3"),
        ("training:\n  seed: 1\n", ["training.seed=1.5"], r"training.seed must be an integer, got 1.5 in the command line"),
        ("training:\n  seed: 1\n", ["mesh.data=0"], r"mesh.data=0 must be a positive size or -1"),
        ("training:\n  seed: 1\n", ["nonsense"], r"override 'nonsense' must look like key.sub=value"),
        ("model:\n  depth: 4\n", ["model.vocab_size=100"], r"model.vocab_size=100 differs from tokenizer.vocab_size"),
        ("training:\n  num_iterations: 0\n", [],
         r"training.num_iterations=0 must be a positive number of steps, or -1 .*\(from .*bad.yaml\)"),
        ("training:\n  num_iterations: -2\n", [], r"training.num_iterations=-2 must be .* or -1 .*\(from .*bad.yaml\)"),
        ("run_name: ''\n", [], r"run_name='' must be a plain folder name .*\(from .*bad.yaml\)"),
        ("run_name: '  '\n", [], r"run_name='  ' must be a plain folder name"),
        ("run_name: a/b\n", [], r"run_name='a/b' must be a plain folder name .*no path separators"),
        ("run_name: x\n", ["run_name=.."], r"run_name='\.\.' must be a plain folder name .*\(from the command line"),
        ("data:\n  fineweb_shards: 0\n", [],
         r"data.fineweb_shards=0 must be between 2 .* and 1823, .*\(from .*bad.yaml\)"),
        ("data:\n  fineweb_shards: 1824\n", [], r"data.fineweb_shards=1824 must be between 2 .* and 1823"),
        ("training:\n  seed: 1\n  device_batch_size: 4\n  seed: 2\n", [],
         r"config file .*bad.yaml sets the key 'seed' twice, on lines 2 and 4; keep one"),
        ("model:\n  depth: 4\nmodel:\n  depth: 8\n", [],
         r"config file .*bad.yaml sets the key 'model' twice, on lines 1 and 3"),
    ],
)
def test_errors_name_key_value_and_source(tmp_path, text, overrides, pattern):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config([path], overrides)
    assert "\n" not in str(info.value)


def test_num_iterations_auto_and_full_fineweb_are_accepted():
    config = load_config(overrides=["training.num_iterations=-1", "data.fineweb_shards=1823", "run_name=d20-back_2"])
    assert (config.training.num_iterations, config.data.fineweb_shards) == (-1, 1823)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "missing.yaml"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([write(tmp_path, "broken.yaml", "model: [1,\n")])
    loop = write(tmp_path, "loop.yaml", "include: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config([loop])


def test_parse_override_values():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("--a.b=true") == ("a.b", True)
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=x=y") == ("a", "x=y")


def test_paths_follow_base_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("REVJAX_BASE_DIR", str(tmp_path))
    config = load_config(overrides=["run_name=r1"])
    assert config.tokenizer_path() == tmp_path / "tokenizer"
    assert config.data_path() == tmp_path / "data" / "default"
    assert config.checkpoint_path() == tmp_path / "checkpoints" / "r1"
    assert load_config(overrides=["data.dir=/x/y"]).data_path() == Path("/x/y")
    placed = load_config(overrides=["data.dir={base_dir}/data/facts", "checkpoint.dir={base_dir}/runs/a"])
    assert placed.data_path() == tmp_path / "data" / "facts" and placed.checkpoint_path() == tmp_path / "runs" / "a"
    assert placed.with_absolute_paths().data.dir == str(tmp_path.resolve() / "data" / "facts")
    from revjax.experiments.spec import load_sweep

    reversal = load_sweep("reversal", tmp_path / "exp").runs[0].config
    assert reversal.data_path() == tmp_path / "data" / "reversal"  # where scripts/reversal_study.py prepare writes


def test_phase_names_are_the_phase_tables():
    import typing

    from revjax.phases import PHASES, PhaseName

    assert set(typing.get_args(PhaseName)) == set(PHASES) == {"base", "mid", "sft", "rl"}
    assert {p.export_dir for p in PHASES.values()} == {"base_checkpoints", "mid_checkpoints", "chatsft_checkpoints",
                                                       "chatrl_checkpoints"}


def test_checkpoints_store_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(overrides=["base_dir=runs", "data.dir=corpus/x", "training.init_from=../parent"])
    absolute = config.with_absolute_paths()
    assert absolute.base_dir == str(tmp_path / "runs") and absolute.data.dir == str(tmp_path / "corpus" / "x")
    assert absolute.training.init_from == str(tmp_path.parent / "parent") and absolute.tokenizer.dir is None
    assert absolute.tokenizer_path() == config.tokenizer_path().resolve()


# ---- the YAML loader: aliases bounded -------------------------------------------------------------------------


def test_an_alias_bomb_in_a_config_file_is_refused_at_once_with_little_memory(tmp_path):
    import time
    import tracemalloc

    # a bounded bomb: read naively, its value alone is ~25 MB of text in the error message
    path = write(tmp_path, "bomb.yaml", f"logging:\n  project: {laughs(7)}\n")
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match=r"config file .*bomb.yaml expands to more than 100,000 values through "
                                              r"its aliases .*; write the values out") as err:
            load_config([path])
        elapsed, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5 and peak < 4 * 2**20 and len(str(err.value)) < 300
    # the same bomb as a command-line override, and an alias inside its own value
    with pytest.raises(ConfigError, match=r"override 'logging.project=\[&a .* expands to more than 100,000 values"):
        load_config(overrides=[f"logging.project={laughs(7)}"])
    with pytest.raises(ConfigError, match=r"loop.yaml holds an alias that refers to a value containing it"):
        load_config([write(tmp_path, "loop.yaml", "logging:\n  project: &p [*p]\n")])
    # ordinary aliases still work
    shared = write(tmp_path, "shared.yaml", "optimizer:\n  matrix_lr: &lr 0.03\n  embedding_lr: *lr\n")
    assert load_config([shared]).optimizer.embedding_lr == 0.03
