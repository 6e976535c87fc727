"""The HDF5 research log: diagnostics computed in the step against hand computations, the same update with and
without them, the file read back with plain h5py after a run, resume truncation, process 0 only, damaged files."""

from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from revjax.runs import read_params
from revjax.config import ConfigError, MeshConfig, ModelConfig, OptimizerConfig, load_config
from revjax.optim import build_optimizer
from revjax.sharding import make_mesh
from revjax.state import TrainState, init_train_state
from revjax.tracking import Trackers, TrackingError
from revjax.tracking import hdf5 as h5log
from revjax.train.diagnostics import GROUPS, PERCENTILES
from revjax.train.loop import train
from revjax.train.step import build_train_step, next_token_loss
from tests.helpers import base  # noqa: F401  (the tiny corpus and tokenizer fixture)
from tests.helpers import train_overrides as overrides

L, T, ACCUM, ROWS, V = 2, 32, 2, 8, 320


def tiny_step_setup(loss_chunk: int):
    config = ModelConfig(n_layer=L, n_embd=64, n_head=2, n_kv_head=2, vocab_size=V, sequence_len=T,
                         compute_dtype="float32", loss_chunk=loss_chunk)
    tx = build_optimizer(OptimizerConfig(ns_dtype="float32"), config)
    mesh = make_mesh(MeshConfig())
    graphdef, state, shardings = init_train_state(config, tx, mesh, seed=3)
    # nanochat's init zeroes the head and the output projections; perturb every weight so all gradients flow
    keys = iter(jax.random.split(jax.random.key(7), 64))
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), state.params)
    params = jax.device_put(params, shardings.params)
    state = TrainState(params, jax.jit(tx.init, out_shardings=shardings.opt_state)(params))
    rng = np.random.default_rng(0)
    data = rng.integers(0, V, (ACCUM, ROWS, T + 1), dtype=np.int32)
    targets = data[..., 1:].copy()
    targets[0, :3, :5] = -1  # unscored targets: position 0 is scored in 5 rows of 16, positions 1–4 in 13
    targets[1, :, 0] = -1
    batch = {"inputs": data[..., :-1], "targets": targets}
    return graphdef, tx, mesh, shardings, state, batch


def copy_state(state):
    return jax.tree.map(lambda x: x.copy(), state)


@pytest.mark.parametrize("loss_chunk", [0])
def test_diagnostic_step_matches_hand_computation_and_applies_the_same_update(loss_chunk):
    graphdef, tx, mesh, shardings, state, batch = tiny_step_setup(loss_chunk)
    params0 = jax.device_get(state.params)
    plain = build_train_step(graphdef, tx, mesh, shardings)
    diag = build_train_step(graphdef, tx, mesh, shardings, diagnostics=True)
    lrm, mom = np.float32(0.7), np.float32(0.9)
    state_a, metrics_a = plain(copy_state(state), batch, lrm, mom)
    state_b, metrics_b = diag(copy_state(state), batch, lrm, mom, np.bool_(True))
    state_c, metrics_c = diag(copy_state(state), batch, lrm, mom, np.bool_(False))
    assert "diagnostics" not in metrics_a
    # the same update: bitwise equal parameters, optimizer state and loss, whether diagnostics run or not
    for a, b, c in zip(*(jax.tree.leaves(jax.device_get(s)) for s in (state_a, state_b, state_c))):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert float(metrics_a["loss"]) == float(metrics_b["loss"]) == float(metrics_c["loss"])
    assert all(np.all(x == 0) for x in jax.tree.leaves(jax.device_get(metrics_c["diagnostics"])))  # skipped
    tokens = jax.device_get(metrics_b["diagnostics"]["tokens"])
    layers = jax.device_get(metrics_b["diagnostics"]["layers"])

    # per-token losses by hand: full logits in numpy, log-softmax, gather
    model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, params0))
    logits = np.stack([np.asarray(model(jnp.asarray(batch["inputs"][a]))) for a in range(ACCUM)]).astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = batch["targets"] >= 0
    nll = -np.take_along_axis(logp, np.where(valid, batch["targets"], 0)[..., None], -1)[..., 0]
    correct = (logp.argmax(-1) == batch["targets"]) & valid
    scored = nll[valid]
    count_by_position = valid.sum((0, 1))
    assert list(count_by_position[:6]) == [5, 13, 13, 13, 13, 16]
    by_position = np.where(valid, nll, 0).sum((0, 1)) / count_by_position
    np.testing.assert_allclose(tokens["loss_by_position"], by_position, rtol=1e-5)
    np.testing.assert_allclose(tokens["accuracy_by_position"], correct.sum((0, 1)) / count_by_position, atol=1e-7)
    np.testing.assert_array_equal(tokens["count_by_position"], count_by_position)
    assert tokens["count"] == valid.sum() and tokens["accuracy"] == pytest.approx(correct.sum() / valid.sum())
    assert tokens["mean"] == pytest.approx(scored.mean(), rel=1e-5)
    assert tokens["mean"] == pytest.approx(float(metrics_b["loss"]), rel=1e-5)  # the loss the step trained on
    assert tokens["std"] == pytest.approx(scored.std(), rel=1e-4)
    assert tokens["max"] == pytest.approx(scored.max(), rel=1e-5)
    np.testing.assert_allclose(tokens["percentiles"], np.percentile(scored, PERCENTILES), rtol=1e-5)

    # gradient norms against optax.tree.norm of the matching subtrees of the step's gradients
    n_scored = valid.sum()
    grad_fn = jax.grad(lambda p, micro: next_token_loss(nnx.merge(graphdef, p), micro) / n_scored)
    micro = lambda a: {k: jnp.asarray(v[a]) for k, v in batch.items()}  # noqa: E731
    params0 = jax.tree.map(jnp.asarray, params0)
    grads = jax.tree.map(jnp.add, grad_fn(params0, micro(0)), grad_fn(params0, micro(1)))
    blocks = grads["blocks"]
    expect = {"embedding": grads["wte"], "head": grads["lm_head"], "attention": [blocks[i]["attn"] for i in range(L)],
              "mlp": [blocks[i]["mlp"] for i in range(L)], "scalars": []}
    for name in GROUPS:
        assert layers[name] == pytest.approx(float(optax.tree.norm(expect[name])), rel=1e-5), name
    for key, sub in (("layer", lambda i: blocks[i]), ("layer_attention", lambda i: blocks[i]["attn"]),
                     ("layer_mlp", lambda i: blocks[i]["mlp"])):
        np.testing.assert_allclose(layers[key], [float(optax.tree.norm(sub(i))) for i in range(L)], rtol=1e-5)
    assert float(optax.tree.norm(grads)) == pytest.approx(float(metrics_b["grad_norm"]), rel=1e-5)
    # activation RMS: the residual stream after each block over both micro-batches
    rms = np.stack([np.asarray(model.features_with_stats(jnp.asarray(batch["inputs"][a]))[1]) for a in range(ACCUM)])
    np.testing.assert_allclose(layers["activation_rms"], np.sqrt((rms ** 2).mean(0)), rtol=1e-6)
    assert np.all(layers["layer"] > 0) and np.all(layers["activation_rms"] > 0)


def test_stacked_layer_gradients_give_the_same_norms():
    from revjax.train.diagnostics import gradient_norms

    rng = np.random.default_rng(1)
    per_layer = {i: {"attn": {"c_q": {"kernel": rng.normal(size=(4, 4))}}, "mlp": {"c_fc": {"kernel": rng.normal(
        size=(4, 8))}}} for i in range(3)}
    grads = {"wte": rng.normal(size=(5, 4)), "lm_head": {"kernel": rng.normal(size=(4, 5))}, "blocks": per_layer}
    stacked = {**grads, "blocks": jax.tree.map(lambda *xs: np.stack(xs), *[per_layer[i] for i in range(3)])}
    a, b = gradient_norms(grads, 3), gradient_norms(stacked, 3)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6)
    mlp_norms = [np.linalg.norm(per_layer[i]["mlp"]["c_fc"]["kernel"]) for i in range(3)]
    np.testing.assert_allclose(a["layer_mlp"], mlp_norms, rtol=1e-6)


# ---- the research log after a training run -------------------------------------------------------------------

STEPS = 5
RUN = {"training.num_iterations": STEPS, "training.eval_every": 0, "training.sample_every": 0,
       "checkpoint.save_every": 2, "checkpoint.keep": 4, "logging.log_every": 2,
       "data.packing": "stream"}  # rows cut anywhere: every target scored, so each position counts every row
DIAG = {"logging.hdf5": "true", "logging.hdf5_every": 2, "logging.hdf5_layers_every": 3}


def jsonl_losses(run_dir: Path) -> dict[int, float]:
    import json

    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


@pytest.fixture(scope="module")
def logged(base):  # noqa: F811
    return train(load_config(overrides=overrides(base, "hdf5", **RUN, **DIAG)))


def test_research_log_reads_back_with_h5py(logged):
    with h5py.File(logged.run_dir / "research.h5", "r") as f:
        assert f.attrs["schema"] == "revjax-research-log" and f.attrs["version"] == 1
        assert f.attrs["n_layer"] == L and f.attrs["sequence_len"] == T and f.attrs["direction"] == "forward"
        np.testing.assert_array_equal(f.attrs["percentiles"], PERCENTILES)
        train_ = f["train"]
        np.testing.assert_array_equal(train_["step"][...], np.arange(STEPS))
        np.testing.assert_array_equal(train_["loss"][...], [logged.losses[s] for s in range(STEPS)])
        assert {s: train_["loss"][s] for s in (0, 2, 4)} == jsonl_losses(logged.run_dir)  # JSONL: log_every 2
        assert np.all(train_["tokens_per_s"][...] > 0) and np.all(train_["lr_multiplier"][...] == 1.0)
        tokens, layers = f["tokens"], f["layers"]
        np.testing.assert_array_equal(tokens["step"][...], [0, 2, 4])  # every 2 and the last step
        np.testing.assert_array_equal(layers["step"][...], [0, 3, 4])  # every 3 and the last step
        assert tokens["loss_by_position"].shape == tokens["accuracy_by_position"].shape == (3, T)
        assert tokens["percentiles"].shape == (3, len(PERCENTILES))
        np.testing.assert_allclose(tokens["mean"][...], train_["loss"][[0, 2, 4]], rtol=1e-5)
        # every target of a base row is scored: each position counts all rows of the step
        rows = 512 // T
        np.testing.assert_array_equal(tokens["count_by_position"][...], np.full((3, T), rows))
        assert layers["layer"].shape == layers["activation_rms"].shape == (3, L)
        for name in GROUPS:
            assert layers[name].shape == (3,)
        np.testing.assert_array_equal(f["eval"]["step"][...], [STEPS])
        assert f["eval"]["val_bpb"][0] == pytest.approx(logged.val_bpb)


def test_schema_is_what_the_module_documents(logged):
    doc = h5log.__doc__
    with h5py.File(logged.run_dir / "research.h5", "r") as f:
        assert set(f) == set(h5log.GROUPS)
        for group in f.values():
            assert f"``/{group.name.strip('/')}``" in doc
            n = group["step"].shape[0]
            for name, ds in group.items():
                assert f"``{name}``" in doc or name in ("step", "val_bpb", "val_loss"), name
                assert ds.shape[0] == n and ds.maxshape[0] is None and ds.compression == "gzip"
        for key in f.attrs:
            assert f"``{key}``" in doc, key


def test_diagnostics_leave_the_run_unchanged_and_resume_truncates(base, logged):  # noqa: F811
    plain = train(load_config(overrides=overrides(base, "no-hdf5", **RUN)))
    assert plain.losses == logged.losses
    assert not (plain.run_dir / "research.h5").exists()
    for a, b in zip(jax.tree.leaves(read_params(plain.run_dir)[0]), jax.tree.leaves(read_params(logged.run_dir)[0])):
        np.testing.assert_array_equal(a, b)
    # continue the logged run from step 2: every group keeps its rows of steps < 2, then steps 2… are logged again
    again = train(load_config(overrides=overrides(base, "hdf5", **RUN, **DIAG, **{"checkpoint.resume_step": 2})))
    assert again.losses == {s: logged.losses[s] for s in range(2, STEPS)}
    with h5py.File(logged.run_dir / "research.h5", "r") as f:
        np.testing.assert_array_equal(f["train"]["step"][...], np.arange(STEPS))
        np.testing.assert_array_equal(f["train"]["loss"][...], [logged.losses[s] for s in range(STEPS)])
        np.testing.assert_array_equal(f["tokens"]["step"][...], [0, 2, 4])
        np.testing.assert_array_equal(f["layers"]["step"][...], [0, 3, 4])
        np.testing.assert_array_equal(f["eval"]["step"][...], [STEPS])


# ---- the tracker on its own ----------------------------------------------------------------------------------


def row(step: int, diagnostics=None) -> dict:
    out = {"step": step, "loss": 10.0 - step, "lr_multiplier": 1.0, "muon_momentum": 0.9, "grad_norm": 1.0,
           "scored_tokens": 64, "tokens_per_s": 100.0, "step_seconds": 0.5}
    if diagnostics is not None:
        out["diagnostics"] = diagnostics
    return out


def tokens_row(step: int) -> dict:
    return {"tokens": {"mean": np.float32(step), "loss_by_position": np.full(4, step, np.float32),
                       "count_by_position": np.arange(4)}}


def test_resume_truncates_every_group(tmp_path):
    path = tmp_path / "research.h5"
    tracker = h5log.Hdf5Tracker(path, 0)
    for s in range(10):
        tracker.log(row(s, tokens_row(s) if s % 3 == 0 else None))
        if s % 4 == 0:
            tracker.log({"step": s, "val_bpb": 1.0 / (s + 1)})
    tracker.log({"step": 8, "val_reward": 0.5, "core/arc": 0.25, "note": None})  # late columns: NaN before
    tracker.close()
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["eval"]["step"][...], [0, 4, 8, 8])
        np.testing.assert_array_equal(f["eval"]["val_reward"][...], [np.nan, np.nan, np.nan, 0.5])
        np.testing.assert_array_equal(f["eval"]["val_bpb"][...], [1.0, 0.2, 1 / 9, np.nan])
        np.testing.assert_array_equal(f["eval"]["core.arc"][...], [np.nan, np.nan, np.nan, 0.25])
        assert "note" not in f["eval"]
    h5log.Hdf5Tracker(path, 5).close()
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["train"]["step"][...], np.arange(5))
        np.testing.assert_array_equal(f["train"]["loss"][...], 10.0 - np.arange(5))
        np.testing.assert_array_equal(f["tokens"]["step"][...], [0, 3])
        np.testing.assert_array_equal(f["tokens"]["loss_by_position"][...], [[0] * 4, [3] * 4])
        np.testing.assert_array_equal(f["tokens"]["count_by_position"][...], [np.arange(4)] * 2)
        np.testing.assert_array_equal(f["eval"]["step"][...], [0, 4])
        assert f["eval"]["val_reward"].shape == (2,)
    with pytest.warns(UserWarning, match="starts from step 0"):  # start over: the old log is kept aside
        h5log.Hdf5Tracker(path, 0).close()
    [aside] = (tmp_path / "set-aside").iterdir()
    with h5py.File(aside, "r") as old, h5py.File(path, "r") as new:
        assert old["train"]["step"].shape == (5,) and "step" not in new["train"]


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    tracker = h5log.Hdf5Tracker(tmp_path / "research.h5", 0)
    tracker.log(row(0, tokens_row(0)))
    tracker.close()
    assert not (tmp_path / "research.h5").exists()


def test_fan_out_gives_diagnostics_and_unscheduled_rows_only_to_the_research_log(tmp_path):
    seen = []

    class Plain:
        def log(self, r):
            seen.append(r)

        def close(self):
            pass

    research = h5log.Hdf5Tracker(tmp_path / "research.h5", 0)
    fan = Trackers([Plain(), research])
    fan.log(row(0, tokens_row(0)), scheduled=True)
    fan.log(row(1), scheduled=False)
    fan.close()
    assert [r["step"] for r in seen] == [0] and "diagnostics" not in seen[0]
    with h5py.File(tmp_path / "research.h5", "r") as f:
        np.testing.assert_array_equal(f["train"]["step"][...], [0, 1])
        np.testing.assert_array_equal(f["tokens"]["step"][...], [0])


def test_damaged_file_is_set_aside(tmp_path):
    path = tmp_path / "research.h5"
    path.write_bytes(b"not an HDF5 file" * 10)
    with pytest.warns(UserWarning, match="moved the research log"):
        tracker = h5log.Hdf5Tracker(path, 3)
    tracker.log(row(3))
    tracker.close()
    assert [p.read_bytes()[:16] for p in (tmp_path / "set-aside").iterdir()] == [b"not an HDF5 file"]
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["train"]["step"][...], [3])


def test_a_write_failure_is_reported_with_one_sentence(tmp_path):
    tracker = h5log.Hdf5Tracker(tmp_path / "research.h5", 0)
    tracker.log(row(0, {"tokens": {"mean": np.float32(1.0)}}))
    tracker.log(row(1, {"tokens": {"mean": np.zeros(3, np.float32)}}))  # a column changing shape cannot be written
    with pytest.raises(TrackingError, match="cannot write the research log"):
        tracker.close()


@pytest.mark.parametrize("key", ["hdf5_every", "hdf5_layers_every"])
def test_negative_cadence_is_refused(key):
    with pytest.raises(ConfigError, match=f"logging.{key}=-1 must be a number of steps"):
        load_config(overrides=[f"logging.{key}=-1"])
