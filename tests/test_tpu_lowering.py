"""The compiled programs lower for TPU on this CPU (``jax.export(..., platforms=["tpu"])``): a kernel or sharding
change that cannot lower there fails here. The 2026 recipe at tiny size (windows, value embeddings, smear…), with
``model.attention=auto`` traced for TPU, so the training forward runs the Pallas splash kernel with its local masks,
lowered to Mosaic (a ``tpu_custom_call``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax import export

from revjax import engine as engine_module
from revjax.attention import lowering_for
from revjax.config import MeshConfig, ModelConfig, load_config
from revjax.optim import build_optimizer, schedule_names
from revjax.sharding import make_mesh
from revjax.state import init_train_state
from revjax.train.step import build_train_step
from revjax.eval import scorer as scorer_module
from revjax.model import GPT

CONFIG = ModelConfig(depth=None, sequence_len=256, vocab_size=300, n_layer=4, n_head=2, n_kv_head=1, n_embd=64,
                     recipe="nanochat-2026", compute_dtype="bfloat16", attention="auto")


@pytest.fixture(scope="module")
def model_parts():
    return nnx.split(GPT(CONFIG, rngs=nnx.Rngs(0)))


def lower_for_tpu(jitted, *args, **kwargs) -> str:
    """The StableHLO text of ``jitted(*args)`` exported for TPU."""
    with lowering_for("tpu"):
        exported = export.export(jitted, platforms=["tpu"])(*args, **kwargs)
    assert exported.platforms == ("tpu",)
    return exported.mlir_module()


def recorded_calls(module, name: str, run):
    """Run ``run()`` and return the arguments of every call it made to ``module.name`` (a jitted function)."""
    original, calls = getattr(module, name), []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    setattr(module, name, record)
    try:
        run()
    finally:
        setattr(module, name, original)
    assert calls, f"{name} was never called"
    return original, calls


def test_training_forward_and_backward_use_splash_with_local_masks(model_parts):
    graphdef, state = model_parts
    ids = jnp.zeros((2, CONFIG.sequence_len), jnp.int32)

    def loss(state, ids):
        logits = nnx.merge(graphdef, state)(ids)
        return jnp.mean(logits.astype(jnp.float32) ** 2)

    text = lower_for_tpu(jax.jit(jax.grad(loss)), state, ids)
    assert text.count("tpu_custom_call") >= 2  # splash forward and its backward kernels, in Mosaic
    with lowering_for("cpu"):  # the same program traced for this CPU has no Mosaic kernel: the check can fail
        assert "tpu_custom_call" not in jax.jit(jax.grad(loss)).lower(state, ids).as_text()


def test_the_scorer_packed_rows_lower_for_tpu(model_parts):
    graphdef, state = model_parts
    requests = [scorer_module.Request(ids=list(range(1, 40)), first=20, last=39),
                scorer_module.Request(ids=list(range(1, 20)) + [7, 8, 9], first=19, last=22)]
    scorer = scorer_module.Scorer(graphdef, state, tokens_per_call=256)
    jitted, calls = recorded_calls(scorer_module, "_target_scores", lambda: scorer.score(requests, groups=[[0, 1]]))
    args, kwargs = calls[0]
    assert "stablehlo" in lower_for_tpu(jitted, *args, **kwargs)


def test_a_decode_step_lowers_for_tpu(model_parts):
    graphdef, state = model_parts
    eng = engine_module.Engine(graphdef, state, chunk_size=2)
    jitted, calls = recorded_calls(engine_module, "_decode", lambda: eng.generate([[1, 2, 3, 4, 5]], 3))
    args, kwargs = calls[0]
    text = lower_for_tpu(jitted, *args, **kwargs)
    assert "stablehlo" in text


def test_the_sharded_train_step_lowers_for_tpu():
    """The whole training step of the 2026 recipe (NorMuon and its AdamW groups included) on an FSDP×TP mesh of 8
    devices, splash running per shard through shard_map."""
    config = load_config(overrides=["model.recipe=nanochat-2026", "model.depth=null", "model.n_layer=4",
                                    "model.n_embd=64", "model.n_head=2", "model.n_kv_head=1",
                                    "model.sequence_len=256", "tokenizer.vocab_size=300"])
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    tx = build_optimizer(config.optimizer, config.model, batch_tokens=2 * 4 * 256)
    with lowering_for("tpu"):
        graphdef, state, shardings = init_train_state(config.model, tx, mesh)
        step = build_train_step(graphdef, tx, mesh, shardings)
    batch = {"inputs": jnp.zeros((2, 4, 256), jnp.int32), "targets": jnp.zeros((2, 4, 256), jnp.int32)}
    scalars = [jnp.float32(1.0) for _ in schedule_names(state.opt_state)]
    with jax.set_mesh(mesh):
        text = lower_for_tpu(step.jitted, state, batch, *scalars)
    assert text.count("tpu_custom_call") >= 2 and "sharding" in text
