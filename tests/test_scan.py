"""Scanned layers (``model.scan_layers``) and remat policies: the same numbers, checkpoints and exports as unrolled."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from revjax.checkpoint import Checkpointer
from revjax.runs import build_metadata, read_params
from revjax.config import ConfigError, load_config
from revjax.interop.export import torch_state_dict
from revjax.interop.state_dict import build_model, model_params
from revjax.model import REMAT_POLICIES, loss_fn
from revjax.optim import build_optimizer
from revjax.sharding import make_mesh
from revjax.state import init_train_state, train_state_shardings
from revjax.train.step import build_train_step
from tests.helpers import CONFIGS, decode_with_cache, forward, perturbed_model

CONFIG = CONFIGS["gqa"]  # 2 layers, 4 query heads over 2 kv heads, fp32
IDS = jax.random.randint(jax.random.key(7), (2, CONFIG.sequence_len), 0, CONFIG.vocab_size)
grad = nnx.jit(nnx.grad(lambda m, ids: loss_fn(m, ids, ids)))
stats = nnx.jit(lambda m, ids: m.features_with_stats(ids))


@pytest.fixture(scope="module")
def unrolled():
    model = perturbed_model(CONFIG)
    return model, model_params(model)


def max_diff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)))


@pytest.mark.parametrize("remat", ["none", "dots", "full"])
def test_scanned_logits_grads_and_stats_match_unrolled(unrolled, remat):
    model, params = unrolled
    scanned = build_model(dataclasses.replace(CONFIG, scan_layers=True, remat=remat), params)
    assert model_params(scanned).keys() == params.keys()  # one stored layout: per-layer blocks
    np.testing.assert_allclose(forward(scanned, IDS), forward(model, IDS), rtol=0, atol=1e-5)
    g_unrolled = model_params(grad(model, IDS))
    assert max(abs(float(np.abs(g).max())) for g in jax.tree.leaves(g_unrolled)) > 1e-3  # gradients are not trivial
    assert max_diff(model_params(grad(scanned, IDS)), g_unrolled) < 1e-6
    (h_s, rms_s), (h_u, rms_u) = stats(scanned, IDS), stats(model, IDS)
    np.testing.assert_allclose(h_s, h_u, rtol=0, atol=1e-5)
    np.testing.assert_allclose(rms_s, rms_u, rtol=1e-6)
    assert rms_s.shape == (CONFIG.n_layer,) and float(rms_s[1]) != float(rms_s[0])


def test_unrolled_remat_policies_keep_the_numbers(unrolled):
    model, params = unrolled
    g_plain = model_params(grad(model, IDS))
    for remat in ("dots", "full"):
        variant = build_model(dataclasses.replace(CONFIG, remat=remat), params)
        np.testing.assert_array_equal(forward(variant, IDS), forward(model, IDS))
        assert max_diff(model_params(grad(variant, IDS)), g_plain) < 1e-6
    assert REMAT_POLICIES[True] is REMAT_POLICIES["full"] and REMAT_POLICIES[False] is None


def test_scanned_kv_cache_decode_matches_full_forward(unrolled):
    model, params = unrolled
    scanned = build_model(dataclasses.replace(CONFIG, scan_layers=True), params)
    full = forward(model, IDS)
    np.testing.assert_allclose(decode_with_cache(scanned, IDS), full, rtol=0, atol=1e-5)


def test_remat_and_scan_config_keys():
    config = load_config(overrides=["model.remat=dots", "model.scan_layers=true"])
    assert (config.model.remat, config.model.scan_layers) == ("dots", True)
    assert load_config(overrides=["model.remat=true"]).model.remat is True  # older configs
    with pytest.raises(ConfigError, match="model.remat must be one of 'none', 'dots', 'full' or true or false"):
        load_config(overrides=["model.remat=some"])


STEP_OVERRIDES = ["model.depth=null", "model.n_layer=3", "model.n_embd=64", "model.n_head=2", "model.n_kv_head=1",
                  "model.sequence_len=16", "tokenizer.vocab_size=320", "model.compute_dtype=float32",
                  "optimizer.ns_dtype=float32", "training.device_batch_size=2", "training.total_batch_tokens=64"]


def train_one_step(config, params):
    """Parameters after one train step on a fixed batch, from ``params``, on a one-device mesh."""
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    tx = build_optimizer(config.optimizer, config.model)
    graphdef, _, shardings = train_state_shardings(config.model, tx, mesh)
    _, state, _ = init_train_state(config.model, tx, mesh, params=params)
    data = np.random.default_rng(0).integers(0, 320, (2, 2, 17), dtype=np.int32)
    step = build_train_step(graphdef, tx, mesh, shardings)
    state, metrics = step(state, {"inputs": data[..., :-1], "targets": data[..., 1:]}, np.float32(1.0),
                          np.float32(0.95))
    return state, float(metrics["loss"])


def test_train_step_checkpoint_and_export_interchange(tmp_path):
    unrolled_cfg = load_config(overrides=[*STEP_OVERRIDES, "mesh.data=1"])
    scanned_cfg = load_config(overrides=[*STEP_OVERRIDES, "mesh.data=1", "model.scan_layers=true",
                                         "model.remat=dots"])
    start = model_params(perturbed_model(unrolled_cfg.model, seed=1))
    state_u, loss_u = train_one_step(unrolled_cfg, start)
    state_s, loss_s = train_one_step(scanned_cfg, start)
    assert abs(loss_u - loss_s) < 1e-5 and loss_u > 1.0
    after_u, after_s = state_u.params, state_s.params
    assert max_diff(after_u["blocks"], start["blocks"]) > 1e-3  # the step moved the parameters
    assert max_diff(after_s["blocks"], after_u["blocks"]) < 1e-6
    assert max_diff(after_s["lm_head"], after_u["lm_head"]) < 1e-6
    # AdamW's first step is about lr·sign(g): embedding rows with tiny gradients amplify fp32 rounding
    assert max_diff(after_s["wte"], after_u["wte"]) < 1e-3

    # A checkpoint written by the scanned run is read by an unrolled one: the same tree, the same parameters.
    folder = tmp_path / "scanned-run"
    metadata = build_metadata(step=1, direction="forward", phase="base", model_config=scanned_cfg.model.gpt_config(),
                              config=scanned_cfg.to_dict(), tokenizer_identity="none", tokenizer_path=str(tmp_path),
                              val_bpb=None)
    with Checkpointer(folder, async_save=False) as checkpointer:
        checkpointer.save(1, {"params": state_s.params, "opt_state": state_s.opt_state}, data_state=None,
                          metadata=metadata)
    tx = build_optimizer(unrolled_cfg.optimizer, unrolled_cfg.model)
    mesh = make_mesh(unrolled_cfg.mesh, jax.devices()[:1])
    _, abstract, _ = train_state_shardings(unrolled_cfg.model, tx, mesh)
    with Checkpointer(folder, async_save=False) as checkpointer:
        restored, _, _ = checkpointer.restore({"params": abstract.params, "opt_state": abstract.opt_state})
    assert max_diff(restored["params"], state_s.params) == 0.0
    params, _, stored_cfg = read_params(folder)
    assert stored_cfg.model.scan_layers is True
    ids = jnp.asarray(np.arange(32).reshape(2, 16) % 320)
    np.testing.assert_allclose(forward(build_model(unrolled_cfg.model, params), ids),
                               forward(build_model(scanned_cfg.model, params), ids), rtol=0, atol=1e-5)

    # Both modes export the same PyTorch state_dict.
    export_u, export_s = torch_state_dict(params, unrolled_cfg), torch_state_dict(params, scanned_cfg)
    assert list(export_u) == list(export_s)
    assert all(export_u[k].dtype == export_s[k].dtype and bool((export_u[k] == export_s[k]).all()) for k in export_u)
