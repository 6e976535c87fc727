"""The optimizer: parameter groups, onanchat's golden optimizer steps, schedules, injected hyperparameters."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from revjax.config import ModelConfig, OptimizerConfig, ScheduleConfig
from revjax.interop.state_dict import build_model, from_torch_layout
from revjax.model import GPT, loss_fn
from revjax.optim import (
    ADAM_EMBEDDING,
    ADAM_HEAD,
    MUON,
    LabelError,
    build_optimizer,
    check_labels,
    get_schedule,
    group_learning_rates,
    lr_multiplier,
    muon_momentum,
    newton_schulz5,
    param_labels,
    set_schedule,
)

GOLDEN_MOMENTUM = 0.95
# bf16 Newton–Schulz amplifies any change of fp32 accumulation order or 1e-6 input noise to 1.5–3.5 % of the update
# (torch.compile on two CPUs differs as much); unfused bf16 rounding or gradient clipping give 6.5–15 %.
MUON_REL_TOL = 6e-2
TINY = ModelConfig(n_embd=8)


def tiny_params() -> dict:
    """A small parameter tree with the GPT's three kinds of parameters (block matrices of both aspect ratios)."""
    rng = np.random.default_rng(0)
    block = {"attn": {"c_q": {"kernel": (8, 8)}}, "mlp": {"c_fc": {"kernel": (8, 32)}}}
    shapes = {"wte": (16, 8), "blocks": {0: block}, "lm_head": {"kernel": (8, 16)}}
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


def tiny_grads(seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), tiny_params())


def leaf(tree, path: str):
    for key in path.split("/"):
        tree = tree[int(key) if key.isdigit() else key]
    return tree


# ---- parameter groups ---------------------------------------------------------------------------------------


def test_labels_cover_every_parameter_exactly_once():
    config = ModelConfig(sequence_len=32, vocab_size=256, n_layer=3, n_head=4, n_kv_head=2, n_embd=128)
    state = nnx.state(nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0))), nnx.Param)
    for params in (state, nnx.to_pure_dict(state)):
        labels = param_labels(params)
        check_labels(params, labels)
        flat = jax.tree.leaves(labels)
        assert len(flat) == len(jax.tree.leaves(params)) == 6 * config.n_layer + 2
        assert flat.count(MUON) == 6 * config.n_layer
        assert flat.count(ADAM_EMBEDDING) == flat.count(ADAM_HEAD) == 1
    pure = nnx.to_pure_dict(state)
    assert leaf(param_labels(pure), "blocks/2/mlp/c_proj/kernel") == MUON
    assert param_labels(pure)["wte"] == ADAM_EMBEDDING and param_labels(pure)["lm_head"]["kernel"] == ADAM_HEAD


def test_bad_labelling_is_refused_naming_the_parameter():
    params = tiny_params()
    labels = param_labels(params)
    missing = {**labels, "lm_head": {}}
    with pytest.raises(LabelError, match="'lm_head/kernel' has no optimizer group label"):
        check_labels(params, missing)
    with pytest.raises(LabelError, match="'wte' is labelled 'sgd'"):
        check_labels(params, {**labels, "wte": "sgd"})
    with pytest.raises(LabelError, match="'extra' names no parameter"):
        check_labels(params, {**labels, "extra": MUON})
    with pytest.raises(LabelError, match="'norm/scale' belongs to no optimizer group"):
        param_labels({**params, "norm": {"scale": jnp.ones(8)}})
    with pytest.raises(LabelError, match="'blocks/0/bias' has shape \\(8,\\), but Muon only trains matrices"):
        param_labels({**params, "blocks": {0: {"bias": jnp.ones(8)}}})


def reference_newton_schulz5(g: np.ndarray, steps: int = 5) -> np.ndarray:
    """nanochat's iteration in float64, in torch's (out, in) layout."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = g.astype(np.float64)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_newton_schulz_matches_float64_iteration():
    g = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)  # tall: iterated on its transpose
    ref = reference_newton_schulz5(g)
    out32, out16 = newton_schulz5(jnp.asarray(g), 5, jnp.float32), newton_schulz5(jnp.asarray(g))
    assert out32.dtype == jnp.float32 and out16.dtype == jnp.bfloat16
    assert np.linalg.norm(np.asarray(out32, np.float64) - ref) / np.linalg.norm(ref) < 1e-5
    assert np.linalg.norm(np.asarray(out16, np.float64) - ref) / np.linalg.norm(ref) < MUON_REL_TOL


# ---- onanchat's golden optimizer steps ----------------------------------------------------------------------


class Golden:
    """One optim_<name>.npz file as revjax parameters, with the jitted loss gradient and optimizer update. The
    steps start from model_<name>.npz's weights and batch (the same model), which the file does not repeat."""

    def __init__(self, path):
        data, model = np.load(path), np.load(path.with_name(path.name.replace("optim_", "model_")))
        self.config = ModelConfig(**json.loads(str(data["config"])), compute_dtype="float32")

        def weights(npz, prefix: str) -> dict:
            state_dict = {k[len(prefix):]: npz[k] for k in npz.files if k.startswith(prefix)}
            return from_torch_layout(state_dict, self.config)

        self.before, self.after1, self.after2 = weights(model, "w/"), weights(data, "after1/"), weights(data, "after2/")
        self.grad1 = weights(data, "grad/")
        # onanchat's Muon mixes Nesterov momentum into p.grad in place, so the stored block gradients are
        # (1-m)·g + m·(1-m)·g = (1-m²)·g.
        self.grad1["blocks"] = jax.tree.map(lambda g: g / np.float32(1 - GOLDEN_MOMENTUM**2), self.grad1["blocks"])
        self.loss1, self.loss2 = float(data["loss1"]), float(data["loss2"])
        graphdef, _ = nnx.split(build_model(self.config, self.before))
        ids, targets = jnp.asarray(model["ids"]), jnp.asarray(model["targets"])
        self.value_and_grad = jax.jit(jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p), ids, targets)))
        self.tx = build_optimizer(OptimizerConfig(grad_clip=0.0), self.config)
        self.update = jax.jit(self.tx.update)

    def step(self, grads, opt_state, params):
        updates, opt_state = self.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state


@functools.lru_cache(maxsize=None)
def load_golden(path) -> Golden:
    return Golden(path)


def assert_step_matches(ours: dict, golden: dict, start: dict, adam_rtol: float, adam_atol: float) -> None:
    """AdamW tensors to fp32 precision; Muon tensors within MUON_REL_TOL of the update's Frobenius norm."""
    for path, _ in jax.tree_util.tree_flatten_with_path(ours)[0]:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        a, g, s = (np.asarray(leaf(t, name), np.float64) for t in (ours, golden, start))
        if name.startswith("blocks/"):
            err = np.linalg.norm(a - g) / np.linalg.norm(g - s)
            assert err < MUON_REL_TOL, f"{name}: Muon update off by {err:.3g} of its norm"
        else:
            np.testing.assert_allclose(a, g, rtol=adam_rtol, atol=adam_atol, err_msg=name)


@pytest.mark.parametrize("name", ["mha", "gqa"])
def test_two_optimizer_steps_match_onanchat(name, golden_dir):
    golden = load_golden(golden_dir / f"optim_{name}.npz")
    loss0, grads = golden.value_and_grad(golden.before)
    assert float(loss0) == pytest.approx(golden.loss1, rel=1e-6)
    jax.tree.map(lambda ours, ref: np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4 * np.abs(ref).max()),
                 grads, golden.grad1)

    opt_state = set_schedule(golden.tx.init(golden.before), 1.0, GOLDEN_MOMENTUM)
    params1, opt_state = golden.step(golden.grad1, opt_state, golden.before)
    assert_step_matches(params1, golden.after1, golden.before, adam_rtol=1e-5, adam_atol=1e-6)

    # Step 2 from onanchat's step-1 weights; its gradients are not stored, so they are our model's.
    loss1, grads2 = golden.value_and_grad(golden.after1)
    assert float(loss1) == pytest.approx(golden.loss2, rel=1e-5)
    params2, _ = golden.step(grads2, opt_state, golden.after1)
    assert_step_matches(params2, golden.after2, golden.after1, adam_rtol=1e-5, adam_atol=1e-5)

    # base_train's grad_clip=1.0 was not applied (the gradient norm exceeds 1, which would change step 2).
    def clip(grads):
        norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in jax.tree.leaves(grads)))
        assert norm > 1.0
        return jax.tree.map(lambda g: g * np.float32(1.0 / norm), grads)

    clipped_state = set_schedule(golden.tx.init(golden.before), 1.0, GOLDEN_MOMENTUM)
    _, clipped_state = golden.step(clip(golden.grad1), clipped_state, golden.before)
    clipped2, _ = golden.step(clip(grads2), clipped_state, golden.after1)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(clipped2["wte"], golden.after2["wte"], rtol=1e-5, atol=1e-5)


def test_nnx_optimizer_reproduces_golden_step(golden_dir):
    golden = load_golden(golden_dir / "optim_mha.npz")
    model = build_model(golden.config, golden.before)
    optimizer = nnx.Optimizer(model, golden.tx, wrt=nnx.Param)
    set_schedule(optimizer.opt_state, 0.5, 0.85)  # written in place
    assert get_schedule(optimizer.opt_state) == pytest.approx((0.5, 0.85))
    step = nnx.jit(lambda optimizer, model, grads: optimizer.update(model, grads))
    step(optimizer, model, nnx.state(build_model(golden.config, golden.grad1), nnx.Param))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    # Half the learning rate: half of onanchat's first step (which does not depend on the momentum).
    half_step = jax.tree.map(lambda b, a: b + 0.5 * (a - b), golden.before, golden.after1)
    assert_step_matches(params, half_step, golden.before, adam_rtol=1e-5, adam_atol=1e-6)


# ---- schedules ----------------------------------------------------------------------------------------------


def test_base_lr_schedule_key_points():
    sched = ScheduleConfig(warmup_ratio=0.1, warmdown_ratio=0.2, final_lr_frac=0.1)
    n = 100
    assert lr_multiplier(0, n, sched) == pytest.approx(0.1)
    assert lr_multiplier(9, n, sched) == 1.0  # last warmup step
    assert lr_multiplier(10, n, sched) == 1.0
    assert lr_multiplier(80, n, sched) == 1.0  # it = N - warmdown: still flat
    assert lr_multiplier(81, n, sched) == pytest.approx(0.95 + 0.05 * 0.1)
    assert lr_multiplier(90, n, sched) == pytest.approx(0.5 + 0.5 * 0.1)
    assert lr_multiplier(n, n, sched) == pytest.approx(0.1)
    defaults = ScheduleConfig()  # no warmup, 20 % warmdown to 0
    assert lr_multiplier(0, 1000, defaults) == 1.0
    assert lr_multiplier(800, 1000, defaults) == 1.0
    assert lr_multiplier(1000, 1000, defaults) == 0.0


def test_mid_and_linear_schedules_and_refusals():
    sched = ScheduleConfig()
    assert lr_multiplier(0, 100, sched, kind="mid") == 1.0
    assert lr_multiplier(79, 100, sched, kind="mid") == 1.0
    assert lr_multiplier(90, 100, sched, kind="mid") == pytest.approx(0.5)
    assert lr_multiplier(100, 100, sched, kind="mid") == pytest.approx(0.0)
    assert lr_multiplier(0, 200, sched, kind="linear") == 1.0
    assert lr_multiplier(50, 200, sched, kind="linear") == 0.75
    with pytest.raises(ValueError, match="unknown LR schedule kind 'cosine'"):
        lr_multiplier(0, 10, sched, kind="cosine")
    with pytest.raises(ValueError, match="num_iterations=0 must be positive"):
        lr_multiplier(0, 0, sched)


def test_muon_momentum_ramp_and_group_learning_rates():
    opt = OptimizerConfig()
    assert muon_momentum(0, opt) == pytest.approx(0.85)
    assert muon_momentum(150, opt) == pytest.approx(0.90)
    assert muon_momentum(300, opt) == pytest.approx(0.95)
    assert muon_momentum(5000, opt) == pytest.approx(0.95)
    assert muon_momentum(0, OptimizerConfig(muon_momentum_warmup_steps=0)) == pytest.approx(0.95)
    lrs = group_learning_rates(opt, ModelConfig(n_embd=1280))
    assert lrs[MUON] == 0.02
    assert lrs[ADAM_EMBEDDING] == pytest.approx(0.154919, rel=1e-5)
    assert lrs[ADAM_HEAD] == pytest.approx(0.0030984, rel=1e-4)
    sft = group_learning_rates(opt, ModelConfig(n_embd=1280), init_lr_frac=0.02)
    assert all(sft[k] == pytest.approx(0.02 * lrs[k]) for k in lrs)


# ---- injected hyperparameters, state, weight decay ----------------------------------------------------------


def test_schedule_changes_do_not_recompile_and_take_effect():
    tx = build_optimizer(OptimizerConfig(), TINY)
    params, grads = tiny_params(), tiny_grads()
    traces = []

    @jax.jit
    def update(opt_state, grads, lrm, momentum):
        traces.append(None)
        return tx.update(grads, set_schedule(opt_state, lrm, momentum), params)

    state0 = tx.init(params)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state0))
    full, state1 = update(state0, grads, 1.0, 0.95)
    half, _ = update(state0, grads, 0.5, 0.95)
    # Muon's first step is independent of the momentum (NS5 normalises); the second is not.
    second, _ = update(state1, tiny_grads(2), 1.0, 0.95)
    restored = jax.tree.map(np.asarray, state1)  # as from a checkpoint
    other_momentum, state2 = update(restored, tiny_grads(2), 1.0, 0.85)
    assert len(traces) == 1
    jax.tree.map(lambda h, f: np.testing.assert_allclose(h, 0.5 * f, rtol=1e-6), half, full)
    muon_path = "blocks/0/mlp/c_fc/kernel"
    change = np.abs(leaf(other_momentum, muon_path) - leaf(second, muon_path)).max()
    assert change > 0.1 * np.abs(leaf(second, muon_path)).max()
    np.testing.assert_array_equal(other_momentum["wte"], second["wte"])
    assert get_schedule(state2) == pytest.approx((1.0, 0.85))
    with pytest.raises(TypeError, match="needs the state of build_optimizer"):
        set_schedule(optax.adam(1e-3).init(params), 1.0, 0.95)


def test_weight_decay_only_on_adam_groups():
    params, wd, lrm = tiny_params(), 0.1, 0.5
    lrs = group_learning_rates(OptimizerConfig(), TINY)
    tx = build_optimizer(OptimizerConfig(weight_decay=wd, grad_clip=0.0), TINY)
    opt_state = set_schedule(tx.init(params), lrm, 0.9)  # on the host, before the jitted update
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), opt_state, params)
    new = optax.apply_updates(params, updates)
    for path, group in (("wte", ADAM_EMBEDDING), ("lm_head/kernel", ADAM_HEAD)):
        np.testing.assert_allclose(leaf(new, path), leaf(params, path) * (1 - lrm * lrs[group] * wd), rtol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, new["blocks"], params["blocks"])


def test_optimizer_state_is_sharded_like_the_params():
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    sharding = NamedSharding(mesh, P("data", "model"))
    params = jax.device_put(tiny_params(), sharding)
    tx = build_optimizer(OptimizerConfig(), TINY)
    opt_state = tx.init(params)
    _, opt_state = jax.jit(tx.update)(jax.device_put(tiny_grads(), sharding), opt_state, params)
    buffers = [x for x in jax.tree.leaves(opt_state) if x.ndim]
    assert len(buffers) == 2 + 2 + 2  # AdamW mu/nu for wte and lm_head, a Muon buffer per block matrix
    assert all(x.sharding.is_equivalent_to(sharding, x.ndim) for x in buffers)
