"""Checkpoints: exact round trips, keep-N, interrupted saves, corruption, refusals, restores across device layouts."""

import gc
import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

from revjax.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointMismatch,
    DamagedCheckpoint,
    NoIntactCheckpoint,
    checksums,
)
from revjax.config import ModelConfig
from revjax.model import GPT
from revjax.runs import build_metadata, check_compatible

CONFIG = ModelConfig(sequence_len=32, vocab_size=256, n_layer=2, n_head=1, n_kv_head=1, n_embd=64,
                     compute_dtype="float32")
DATA_STATE = {"shard": 3, "offset": 12345, "epoch": 0, "files": ["a.parquet", "b.parquet"]}


def metadata_for(step: int, direction: str = "backward") -> dict:
    return build_metadata(step=step, direction=direction, phase="base", model_config=CONFIG.gpt_config(),
                          config={"train": {"lr": 0.02}}, tokenizer_identity="tok-abc",
                          tokenizer_path="/tmp/tok", val_bpb=1.25)


@pytest.fixture(scope="module")
def train_state():
    """A real GPT's ``nnx.state`` (random non-zero values), an adamw state after one update, and a bf16 copy."""
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)),
                          nnx.state(nnx.eval_shape(lambda: GPT(CONFIG, rngs=nnx.Rngs(0)))))
    tx = optax.adamw(1e-3)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape, np.float32)), params)
    _, opt_state = jax.jit(tx.update)(grads, tx.init(params), params)
    return {"model": params, "opt": opt_state, "bf16": host_map(lambda p: p.astype(jnp.bfloat16), params)}


def host_map(fn, tree, sharding=None):
    """``fn`` applied to each leaf on the host (numpy), put back on ``sharding`` (fast: no per-shape compiles)."""
    return jax.tree.map(lambda x: jax.device_put(fn(np.asarray(x)), sharding(x) if sharding else None), tree)


def abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.dtype == e.dtype and a.shape == e.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def saved(directory: Path, state, steps=(1, 2), keep: int = 5) -> Checkpointer:
    ckpt = Checkpointer(directory, keep=keep)
    for step in steps:
        ckpt.save(step, state, data_state=dict(DATA_STATE, step=step), metadata=metadata_for(step))
    ckpt.wait()
    return ckpt


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, train_state) -> Path:
    """Steps 1 and 2 of ``train_state``, saved once; tests that damage them work on a copy (:func:`copy_of`)."""
    directory = tmp_path_factory.mktemp("two_steps") / "run"
    saved(directory, train_state).close()
    return directory


def copy_of(directory: Path, tmp_path: Path) -> Checkpointer:
    shutil.copytree(directory, tmp_path, dirs_exist_ok=True)
    return Checkpointer(tmp_path)


SMALL = {"w": jnp.arange(64.0).reshape(8, 8), "count": jnp.asarray(3, jnp.int32)}


def test_round_trip_is_exact(tmp_path, train_state):
    state = host_map(lambda x: x, train_state)
    meta = metadata_for(10)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(10, state, data_state=DATA_STATE, metadata=meta)
        for leaf in jax.tree.leaves(state):  # the training step donates its buffers right after a save
            leaf.delete()
        meta20 = metadata_for(20)
        ckpt.save(20, train_state, data_state=None, metadata=meta20)
        ckpt.wait()
        restored, data_state, restored_meta = ckpt.restore(abstract(train_state), step=10)
        assert_trees_equal(restored, train_state)
        assert isinstance(restored["model"], nnx.State)
        assert int(restored["opt"][0].count) == 1
        sums = restored_meta.pop("checksums")
        assert sums == checksums(train_state) and len(sums) == len(jax.tree.leaves(train_state))
        assert restored_meta.pop("data_state_sha256") != ckpt.restore(abstract(train_state))[2]["data_state_sha256"]
        assert (data_state, restored_meta) == (DATA_STATE, meta)
        assert ckpt.restore(abstract(train_state))[1] is None
        assert ckpt.latest_step() == 20 and ckpt.steps() == [10, 20]
    custom = json.loads((tmp_path / "10" / "_CHECKPOINT_METADATA").read_text())["custom_metadata"]
    assert {k: v for k, v in custom.items() if k not in ("checksums", "data_state_sha256")} == meta


def test_build_metadata_is_plain_json():
    meta = metadata_for(7)
    assert json.loads(json.dumps(meta)) == meta
    assert meta["step"] == 7 and meta["direction"] == "backward" and meta["val_bpb"] == 1.25
    assert meta["revjax_version"] and meta["time"]
    assert meta["git_commit"] is None or len(meta["git_commit"]) == 40


def test_keep_n_counts_only_valid_steps(tmp_path):
    ckpt = saved(tmp_path, SMALL, steps=(1, 2, 3, 4), keep=2)
    assert ckpt.steps() == [3, 4]
    (tmp_path / "4" / "meta" / "metadata").write_text("{garbled")
    ckpt.save(5, SMALL, data_state=None, metadata=metadata_for(5))
    ckpt.wait()
    assert ckpt.steps() == [3, 4, 5]  # step 4 is broken, so step 3 is still one of the two newest good ones
    ckpt.save(6, SMALL, data_state=None, metadata=metadata_for(6))
    ckpt.close()
    assert Checkpointer(tmp_path).steps() == [5, 6]
    sync = Checkpointer(tmp_path / "sync", keep=1, async_save=False)
    for step in (1, 2):
        sync.save(step, SMALL, data_state=None, metadata=metadata_for(step))
        assert sync.steps() == [step]


def test_unfinished_save_is_ignored_and_can_be_redone(tmp_path):
    ckpt = saved(tmp_path, SMALL, steps=(1,))
    shutil.copytree(tmp_path / "1", tmp_path / "2.orbax-checkpoint-tmp")  # a save of step 2 cut off mid-way
    shutil.rmtree(tmp_path / "2.orbax-checkpoint-tmp" / "meta")
    for view in (ckpt, Checkpointer(tmp_path)):
        assert view.steps() == [1] and view.latest_step() == 1
        assert view.restore(abstract(SMALL))[2]["step"] == 1
    ckpt.save(2, SMALL, data_state=None, metadata=metadata_for(2))
    ckpt.wait()
    assert ckpt.latest_step() == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


def garble_meta(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").write_text('{"step": 2, "dir')


def truncate_arrays(step_dir: Path) -> None:
    for f in (step_dir / "state").rglob("d/*"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def delete_arrays(step_dir: Path) -> None:
    for f in (step_dir / "state" / "ocdbt.process_0" / "d").iterdir():
        f.unlink()


def wrong_checksum(step_dir: Path) -> None:
    meta_file = step_dir / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    name = sorted(meta["checksums"])[0]
    meta["checksums"][name] = "0" * 16
    meta_file.write_text(json.dumps(meta))


def flip_a_byte(step_dir: Path) -> None:
    biggest = max((step_dir / "state").rglob("d/*"), key=lambda f: f.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x10
    biggest.write_bytes(bytes(data))


def wrong_data_state(step_dir: Path) -> None:
    meta_file = step_dir / "data" / "metadata"
    meta_file.write_text(meta_file.read_text().replace("12345", "12346"))


CORRUPTIONS = {  # name: (damage, whether latest_step() can tell without reading arrays)
    "garbled metadata": (garble_meta, True),
    "missing metadata item": (lambda d: shutil.rmtree(d / "meta"), True),
    "missing state item": (lambda d: shutil.rmtree(d / "state"), True),
    "missing data item": (lambda d: shutil.rmtree(d / "data"), True),
    "truncated array files": (truncate_arrays, False),
    "deleted array files": (delete_arrays, False),
    "garbled array index": (lambda d: (d / "state" / "_METADATA").write_text("{"), False),
    "wrong checksum": (wrong_checksum, False),
    "flipped byte": (flip_a_byte, False),
    "changed data state": (wrong_data_state, False),
}


# A failed Orbax read leaves coroutines behind that report "exception ignored" when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_damaged_step_is_skipped_for_the_newest_intact_one(tmp_path, train_state, two_steps, name):
    damage, visible = CORRUPTIONS[name]
    ckpt = copy_of(two_steps, tmp_path)
    damage(tmp_path / "2")
    with pytest.raises(DamagedCheckpoint, match=rf"step 2 at {re.escape(str(tmp_path / '2'))} is damaged"):
        ckpt.restore(abstract(train_state), step=2)
    assert ckpt.latest_step() == (1 if visible else 2)
    with pytest.warns(UserWarning, match="skipping damaged checkpoint step 2"):
        restored, data_state, meta = ckpt.restore(abstract(train_state))
    assert meta["step"] == 1 and data_state["step"] == 1
    assert_trees_equal(restored, train_state)
    damage(tmp_path / "1")
    with pytest.warns(UserWarning), pytest.raises(NoIntactCheckpoint, match=r"none of the checkpoint steps \[2, 1\]"):
        ckpt.restore(abstract(train_state))
    gc.collect()


def test_checksums_match_a_hand_computation_on_any_layout():
    x = np.array([[1.5, -2.0], [0.0, 3.25]], np.float32)
    words = x.view(np.uint32).reshape(-1).astype(np.uint64)
    plain = int(words.sum() % 2**32)
    weighted = int((words * np.arange(1, 5, dtype=np.uint64)).sum() % 2**32)
    want = f"{plain:08x}{weighted:08x}"
    bf = np.array([1.0, 2.0], jnp.bfloat16)
    bf_words = bf.view(np.uint16).astype(np.uint64)
    bf_want = f"{int(bf_words.sum()):08x}{int(bf_words[0] + 2 * bf_words[1]):08x}"
    assert checksums({"a": x, "b": bf}) == {"a": want, "b": bf_want}
    mesh = Mesh(np.array(jax.devices()[:2]), ("d",))
    sharded = jax.device_put(x, NamedSharding(mesh, P("d")))
    assert checksums({"a": sharded})["a"] == want
    swapped = x.reshape(-1)[[1, 0, 2, 3]].reshape(2, 2)
    assert checksums({"a": swapped})["a"][:8] == want[:8] and checksums({"a": swapped})["a"] != want


def test_missing_step_and_empty_directory(tmp_path, train_state, two_steps):
    ckpt = Checkpointer(tmp_path / "new")
    assert ckpt.latest_step() is None and ckpt.steps() == []
    with pytest.raises(CheckpointError, match=rf"no checkpoint found in {re.escape(str(tmp_path / 'new'))}"):
        ckpt.restore(abstract(train_state))
    ckpt = Checkpointer(two_steps)
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 5 .*available steps: \[1, 2\]"):
        ckpt.metadata(5)


def test_committed_step_is_never_rewritten_and_a_damaged_one_is_set_aside(tmp_path):
    ckpt = saved(tmp_path, SMALL, steps=(5,))
    doubled = host_map(lambda x: x * 2, SMALL)
    assert ckpt.save(5, doubled, data_state=None, metadata=metadata_for(5)) is False
    assert_trees_equal(ckpt.restore(abstract(SMALL))[0], SMALL)
    garble_meta(tmp_path / "5")
    with pytest.warns(UserWarning, match=r"moved checkpoint step 5 to .*set-aside/5-damaged-"):
        assert ckpt.save(5, doubled, data_state=None, metadata=metadata_for(5)) is True
    ckpt.wait()
    assert_trees_equal(ckpt.restore(abstract(SMALL))[0], doubled)
    [aside] = (tmp_path / "set-aside").iterdir()
    assert (aside / "state").is_dir() and ckpt.steps() == [5]


def test_metadata_that_is_not_json_is_refused(tmp_path, train_state):
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="metadata for checkpoint step 1 .* not JSON-serializable"):
        ckpt.save(1, train_state, data_state=None, metadata={"lr": jnp.float32(0.1)})
    assert ckpt.steps() == []


def test_metadata_is_read_without_arrays(tmp_path, two_steps):
    ckpt = copy_of(two_steps, tmp_path)
    for step in (1, 2):
        shutil.rmtree(tmp_path / str(step) / "state" / "ocdbt.process_0")
    assert ckpt.metadata() == ckpt.metadata(2) and ckpt.metadata(2)["step"] == 2
    assert ckpt.metadata(1)["direction"] == "backward"


def test_shape_and_dtype_mismatch_is_explained(train_state, two_steps):
    ckpt = Checkpointer(two_steps)
    target = abstract(train_state)
    wider = jax.tree_util.tree_map_with_path(
        lambda path, x: x.update(shape=(512, 64)) if jax.tree_util.keystr(path) == "['model']['wte'].value" else x,
        target)
    with pytest.raises(CheckpointError, match=r"model\.wte\.value has shape \(256, 64\) in the checkpoint but "
                                              r"\(512, 64\) expected\); check that the model"):
        ckpt.restore(wider)
    fp32 = target | {"bf16": jax.tree.map(lambda x: x.update(dtype=jnp.float32), target["bf16"])}
    with pytest.raises(CheckpointError, match=r"bf16\.blocks\.0\.attn\.c_k\.kernel\.value has dtype bfloat16 in the "
                                              r"checkpoint but float32 expected; .*; and 11 more\)"):
        ckpt.restore(fp32)
    without_bf16 = {k: v for k, v in target.items() if k != "bf16"}
    with pytest.raises(CheckpointError, match=r"bf16\.\S+ is in the checkpoint but not in the expected state"):
        ckpt.restore(without_bf16)
    with pytest.raises(CheckpointError, match=r"ema\.\S+ is missing from the checkpoint"):
        ckpt.restore(target | {"ema": target["bf16"]})


def test_check_compatible_refuses_other_direction_or_tokenizer():
    meta = metadata_for(100, direction="forward")
    check_compatible(meta, direction="forward", tokenizer_identity="tok-abc")
    with pytest.raises(CheckpointMismatch, match=r"step 100 .*direction is 'forward' in the checkpoint but "
                                                 r"'backward' in this run\); set checkpoint.force=true"):
        check_compatible(meta, direction="backward", tokenizer_identity="tok-abc")
    with pytest.raises(CheckpointError, match="tokenizer_identity is 'tok-abc' in the checkpoint but 'tok-xyz'"):
        check_compatible(meta, direction="forward", tokenizer_identity="tok-xyz")
    with pytest.warns(UserWarning, match="because force is set"):
        check_compatible(meta, direction="bidirectional", tokenizer_identity="tok-xyz", force=True)
    longer = dict(CONFIG.gpt_config(), sequence_len=64)
    with pytest.raises(CheckpointMismatch, match="model.sequence_len is 32 in the checkpoint but 64 in this run"):
        check_compatible(meta, direction="forward", tokenizer_identity="tok-abc", model_config=longer)


def test_restore_across_device_layouts(tmp_path, train_state):
    assert jax.device_count() == 8
    devices = np.array(jax.devices())
    mesh8 = Mesh(devices, ("data",))
    mesh24 = Mesh(devices.reshape(2, 4), ("a", "b"))
    one = SingleDeviceSharding(jax.devices()[0])

    def over8(x):
        return NamedSharding(mesh8, P("data") if x.ndim and x.shape[0] % 8 == 0 else P())

    def over2x4(x):
        return NamedSharding(mesh24, P("a", "b") if x.ndim == 2 else P())

    def target(sharding_for):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_for(x)), train_state)

    on8 = host_map(lambda x: x, train_state, over8)
    assert on8["model"]["wte"][...].sharding.spec == P("data")
    ckpt = saved(tmp_path / "from8", on8, steps=(1,))
    for sharding_for in (lambda x: one, over2x4):
        restored = ckpt.restore(target(sharding_for))[0]
        assert_trees_equal(restored, train_state)
        for leaf in jax.tree.leaves(restored):
            assert leaf.sharding.is_equivalent_to(sharding_for(leaf), leaf.ndim)

    ckpt = saved(tmp_path / "from1", train_state, steps=(1,))
    assert jax.tree.leaves(train_state)[0].sharding == one
    restored = ckpt.restore(target(over8))[0]
    assert_trees_equal(restored, train_state)
    assert restored["model"]["wte"][...].sharding == NamedSharding(mesh8, P("data"))


def test_a_step_folder_that_is_a_symbolic_link_is_one_sentence(two_steps, tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    shutil.copytree(two_steps, run)
    shutil.move(str(run / "2"), str(elsewhere))
    (run / "2").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CheckpointError, match=r"checkpoint step 2 at .*/run/2 is a symbolic link, but revjax keeps "
                                              r"every step as a folder of its own run folder .*; replace the link"):
        Checkpointer(run).steps()
    assert (run / "2").is_symlink() and any(elsewhere.iterdir())  # nothing moved or deleted
