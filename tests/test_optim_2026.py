"""The nanochat-2026 optimizer: its groups and first step against nanochat's own (92d63d4), NorMuon and cautious
weight decay by hand, the schedules and the horizon by hand, the recipe's configuration, and the train step's
injected scalars."""

import json
import math
import shutil
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax import nnx
from jax.sharding import PartitionSpec as P

from revjax import horizon
from revjax.config import ConfigError, MeshConfig, ModelConfig, OptimizerConfig, load_config
from revjax.interop.state_dict import build_model, from_torch_layout, model_params, name_map, to_torch_layout
from revjax.model import loss_fn
from revjax.optim import build_optimizer, get_schedule, schedule_names, set_schedule
from revjax.optim_2026 import (
    GROUPS,
    MUON,
    MUON_WEIGHT_DECAY,
    GroupError,
    group_of,
    group_settings,
    param_labels,
    polar_express,
)
from revjax.phases import PHASES
from revjax.sharding import make_mesh
from revjax.state import init_train_state
from revjax.optim_2026 import run_horizon
from revjax.train.loop import schedule, train
from revjax.train.step import build_train_step
from tests.conftest import GOLDEN_DIR
from tests.helpers import STEPS, base, new_model, perturbed_model, train_overrides  # noqa: F401  (base: a fixture)

GOLDEN = GOLDEN_DIR / "nanochat-2026"
FILES = ("small_mha", "windows_gqa")
# nanochat's setup_optimizer() defaults, which the golden steps ran with (base_train passes its own)
GOLDEN_LRS = {"embedding_lr": 0.2, "unembedding_lr": 0.004, "matrix_lr": 0.02, "scalar_lr": 0.5}
GOLDEN_MOMENTUM = 0.95
# fp32 throughout: AdamW and Polar Express agree with nanochat's to rounding (measured ≤ 7.2e-7 on weights ≤ ~2.5)
ATOL, RTOL = 1e-6, 1e-6
# bf16 Polar Express against nanochat's fp32 one: the update of each matrix within this relative Frobenius error
# (measured at most 6.1 % on small_mha, 2.9 % on windows_gqa)
BF16_REL_TOL = 0.1
# the second step's AdamW updates from revjax's own gradient: within STEP2_ATOL but for at most 1 element in 500
# (measured 27 of 40,960 on windows_gqa, none on small_mha), all within STEP2_AMPLIFIED (measured 6.5e-5)
STEP2_ATOL, STEP2_AMPLIFIED = 1e-5, 2e-4


class Golden:
    """nanochat's two optimizer steps on model_<name>.npz's weights and batch: optim_<name>.npz's groups,
    gradient, weights after each step and losses, as revjax parameter trees (through the state_dict name map)."""

    def __init__(self, name: str):
        model, data = np.load(GOLDEN / f"model_{name}.npz"), np.load(GOLDEN / f"optim_{name}.npz")
        config = json.loads(str(data["config"]))
        self.weight_decay = config["weight_decay"]
        self.model = ModelConfig(**{k: config[k] for k in ("sequence_len", "vocab_size", "n_layer", "n_head",
                                                          "n_kv_head", "n_embd", "window_pattern")},
                                 recipe="nanochat-2026", compute_dtype="float32", attention="xla")
        self.groups = json.loads(str(data["groups"]))
        self.stored = {f"before/{k[2:]}": model[k] for k in model.files if k.startswith("w/")}
        self.stored.update({k: data[k] for k in data.files})
        self.names = sorted(k[len("before/"):] for k in self.stored if k.startswith("before/"))
        self.ndim = {n: self.stored[f"before/{n}"].ndim for n in self.names}
        self.muon = {n for n in self.names if group_of(n, self.ndim[n]) == MUON}
        self.ids, self.targets = jnp.asarray(model["ids"]), jnp.asarray(model["targets"])
        self.losses = float(data["loss1"]), float(data["loss2"])
        self.before, self.grad = self.tree("before"), self.tree("grad")
        self._optimizers: dict = {}

    def tree(self, prefix: str) -> dict:
        return from_torch_layout({n: self.stored[f"{prefix}/{n}"] for n in self.names}, self.model)

    def state_dict(self, params) -> dict[str, np.ndarray]:
        return to_torch_layout(jax.tree.map(np.asarray, params), self.model)

    def opt_cfg(self, ns_dtype: str = "float32") -> OptimizerConfig:
        return OptimizerConfig(recipe="nanochat-2026", **GOLDEN_LRS, weight_decay=self.weight_decay,
                               muon_momentum=GOLDEN_MOMENTUM, grad_clip=0.0, ns_dtype=ns_dtype)

    def optimizer(self, ns_dtype: str = "float32"):
        """(the optimizer nanochat's steps ran, its jitted update), built once per Polar Express dtype."""
        if ns_dtype not in self._optimizers:
            tx = build_optimizer(self.opt_cfg(ns_dtype), self.model)
            self._optimizers[ns_dtype] = tx, jax.jit(tx.update)
        return self._optimizers[ns_dtype]

    def first_step(self, ns_dtype: str = "float32"):
        """(weights after one step from the stored gradient in nanochat's names and layout, optimizer state)."""
        tx, update = self.optimizer(ns_dtype)
        updates, state = update(self.grad, tx.init(self.before), self.before)
        return self.state_dict(optax.apply_updates(self.before, updates)), state


@pytest.fixture(scope="module", params=FILES)
def golden(request) -> Golden:
    return Golden(request.param)


def close_but_for_cautious_flips(golden: Golden, name: str, got: np.ndarray, want: np.ndarray, start: np.ndarray,
                                 atol: float = ATOL) -> int:
    """Assert ``got`` ≈ ``want`` to fp32 rounding, but for Muon elements whose cautious-decay mask fell the other
    way (an update of ~1e-7 whose sign rounding decides): those differ by exactly their decay lr·wd·|p|. Returns
    how many there were."""
    err = np.abs(got - want)
    off = err > atol + RTOL * np.abs(want)
    if off.any():
        assert name in golden.muon and golden.weight_decay > 0, f"{name}: max error {err.max():.3g}"
        lr = GOLDEN_LRS["matrix_lr"] * math.sqrt(max(1.0, want.shape[0] / want.shape[1]))
        np.testing.assert_allclose(err[off], lr * golden.weight_decay * np.abs(start[off]), rtol=1e-2)
    return int(off.sum())


def muon_size(golden: Golden) -> int:
    return sum(golden.stored[f"before/{n}"].size for n in golden.muon)


# ---- groups -------------------------------------------------------------------------------------------------


def test_every_parameter_lands_in_nanochats_group_with_its_settings(golden):
    """Each name of nanochat's groups, and the revjax parameter the state_dict map gives it, is labelled with a
    group whose settings are that group's."""
    settings = group_settings(golden.opt_cfg(), golden.model)
    labels = param_labels(golden.before)
    revjax_path = {name: path for name, path, _ in name_map(golden.model)}
    members: dict[str, set[str]] = {}
    for group in golden.groups:
        expected = {k: v for k, v in group.items() if k != "names"}
        for name in group["names"]:
            ours = group_of(name, golden.ndim[name])
            leaf = labels
            for key in revjax_path[name]:
                leaf = leaf[key]
            assert leaf == ours, name
            members.setdefault(ours, set()).add(name)
            got = settings[ours]
            assert got.keys() == expected.keys(), name
            assert got["lr"] == pytest.approx(expected["lr"], rel=1e-12), name
            assert {k: list(v) if isinstance(v, tuple) else v for k, v in got.items() if k != "lr"} == \
                {k: v for k, v in expected.items() if k != "lr"}, name
    assert set().union(*members.values()) == set(golden.names)
    adamw = {frozenset(g["names"]) for g in golden.groups if g["kind"] == "adamw"}
    assert {frozenset(v) for k, v in members.items() if k != MUON} == adamw and len(adamw) == 6
    assert members[MUON] == {n for g in golden.groups if g["kind"] == "muon" for n in g["names"]}
    assert any("ve_gate" in n for n in members[MUON])  # the value-embedding gates are Muon's
    model_labels = param_labels(model_params(new_model(golden.model)))  # a fresh model: the same tree
    assert jax.tree.structure(model_labels) == jax.tree.structure(labels) and model_labels == labels


def test_revjax_names_take_the_same_groups():
    tree = {"wte": jnp.zeros((8, 4)), "lm_head": {"kernel": jnp.zeros((4, 8)), "padding": jnp.zeros((4, 2))},
            "value_embeds": {"1": jnp.zeros((8, 4))}, "resid_lambdas": jnp.zeros(2), "x0_lambdas": jnp.zeros(2),
            "smear_gate": {"kernel": jnp.zeros((4, 1))}, "smear_lambda": jnp.zeros(1), "backout_lambda": jnp.zeros(1),
            "blocks": {1: {"attn": {"c_q": {"kernel": jnp.zeros((4, 4))}, "ve_gate": {"kernel": jnp.zeros((4, 1))}}}}}
    labels = param_labels(tree)
    assert labels["wte"] == "embedding" and labels["lm_head"] == {"kernel": "lm_head", "padding": "lm_head"}
    assert labels["value_embeds"]["1"] == "value_embeds" and labels["smear_gate"]["kernel"] == "smear"
    assert (labels["resid_lambdas"], labels["x0_lambdas"]) == ("resid_lambdas", "x0_lambdas")
    assert labels["smear_lambda"] == labels["backout_lambda"] == "smear"
    assert labels["blocks"][1]["attn"] == {"c_q": {"kernel": MUON}, "ve_gate": {"kernel": MUON}}
    assert set(jax.tree.leaves(labels)) == set(GROUPS)
    with pytest.raises(GroupError, match="'norm/scale' belongs to no group of the nanochat-2026 optimizer"):
        param_labels({"norm": {"scale": jnp.ones(4)}})
    with pytest.raises(GroupError, match="'blocks/0/bias' has 1 dimension\\(s\\), but Muon only trains matrices"):
        param_labels({"blocks": {0: {"bias": jnp.ones(4)}}})


# ---- nanochat's steps ---------------------------------------------------------------------------------------


def test_first_step_matches_nanochat(golden):
    """AdamW groups and Muon (fp32 Polar Express, as nanochat runs it when it computes in fp32) to fp32 rounding,
    on revjax's parameter tree; at most one cautious-mask flip in 10,000 Muon elements."""
    after, _ = golden.first_step()
    flips = sum(close_but_for_cautious_flips(golden, n, after[n], golden.stored[f"after1/{n}"],
                                             golden.stored[f"before/{n}"]) for n in golden.names)
    assert flips <= muon_size(golden) // 10_000


def test_first_step_with_bf16_polar_express_is_within_bf16_tolerance(golden):
    after, _ = golden.first_step("bfloat16")
    for name in golden.muon:
        start = golden.stored[f"before/{name}"]
        want = golden.stored[f"after1/{name}"] - start
        assert np.linalg.norm(after[name] - start - want) <= BF16_REL_TOL * np.linalg.norm(want), name


def test_second_step_from_the_models_gradient_matches_nanochat(golden):
    """revjax's loss and gradient at the starting weights are nanochat's. The second step starts from nanochat's
    weights after the first (ours may differ by a cautious-mask flip, which the forward pass spreads) with the
    state of our first step, takes revjax's gradient there (nanochat's second loss) and reaches nanochat's
    weights: Muon to fp32 rounding; AdamW too but for elements whose two gradients nearly cancel in Adam's first
    moment, which turn the ~1e-4 relative fp32 noise of a ~1e-6 gradient into up to ~1e-4 of weight."""
    graphdef, _ = nnx.split(build_model(golden.model, golden.before))
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda p: loss_fn(nnx.merge(graphdef, p), golden.ids, golden.targets)))
    loss1, grads = value_and_grad(golden.before)
    assert float(loss1) == pytest.approx(golden.losses[0], rel=1e-5)
    got = golden.state_dict(grads)
    for name in golden.names:
        want = golden.stored[f"grad/{name}"]
        assert np.abs(got[name] - want).max() <= 1e-4 * np.abs(want).max(), name  # the model: ~1e-5
    _, state = golden.first_step()
    after1 = golden.tree("after1")
    loss2, grads = value_and_grad(after1)
    assert float(loss2) == pytest.approx(golden.losses[1], rel=1e-5)
    updates, _ = golden.optimizer()[1](grads, state, after1)
    after2 = golden.state_dict(optax.apply_updates(after1, updates))
    loose, adamw_size = 0, 0
    for name in golden.names:
        want = golden.stored[f"after2/{name}"]
        if name in golden.muon:
            close_but_for_cautious_flips(golden, name, after2[name], want, golden.stored[f"after1/{name}"])
            continue
        err = np.abs(after2[name] - want)
        assert err.max() <= STEP2_AMPLIFIED, f"{name}: {err.max():.3g}"
        loose += int(np.sum(err > STEP2_ATOL + RTOL * np.abs(want)))
        adamw_size += want.size
    assert loose <= adamw_size // 500


# ---- Muon by hand -------------------------------------------------------------------------------------------


def reference_polar_express(g: np.ndarray, steps: int = 5) -> np.ndarray:
    """MuonEq, normalisation and Polar Express in float64, in torch's (out, in) layout."""
    from revjax.optim_2026 import POLAR_EXPRESS

    x = g.astype(np.float64)
    x = x * (np.linalg.norm(x) / math.sqrt(x.shape[0]) / np.linalg.norm(x, axis=-1, keepdims=True))
    x = x / (np.linalg.norm(x) * 1.01 + 1e-6)
    for a, b, c in POLAR_EXPRESS[:steps]:
        if x.shape[0] > x.shape[1]:
            gram = x.T @ x
            x = a * x + x @ (b * gram + c * gram @ gram)
        else:
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
    return x


@pytest.mark.parametrize("shape", [(24, 8), (8, 24)], ids=["tall", "wide"])
def test_polar_express_matches_float64(shape):
    g = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    ref = reference_polar_express(g)
    rel = lambda out: np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref)  # noqa: E731
    assert rel(polar_express(jnp.asarray(g), 5, jnp.float32)) < 1e-5
    assert rel(polar_express(jnp.asarray(g), 5, jnp.bfloat16)) < 5e-2
    singular = np.linalg.svd(ref, compute_uv=False)
    assert 0.6 < singular.min() and singular.max() < 1.3  # about orthogonal


def muon_only():
    """A Muon-only 2026 optimizer (every parameter under ``blocks``) with fp32 Polar Express."""
    opt = OptimizerConfig(recipe="nanochat-2026", matrix_lr=0.02, weight_decay=0.3, grad_clip=0.0, ns_dtype="float32")
    return build_optimizer(opt, ModelConfig(n_embd=768))


def test_vectors_step_by_their_gradients_sign_with_cautious_decay():
    """A 1×n or n×1 matrix: Polar Express and Muon+ give the unit gradient, NorMuon then makes every entry
    ±1/√n, whatever the moment's history; the decay acts only where the update and the weight share a sign. The
    tall matrix's LR is × √n."""
    n, lrm, momentum, wd = 8, 0.5, 0.9, 0.3
    rng = np.random.default_rng(1)
    params = {"blocks": {"wide": jnp.asarray(rng.normal(size=(n, 1)), jnp.float32),  # torch (1, n)
                         "tall": jnp.asarray(rng.normal(size=(1, n)), jnp.float32)}}  # torch (n, 1)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    tx = muon_only()
    state = set_schedule(tx.init(params), lrm, momentum, wd)
    expected = jax.tree.map(np.asarray, params)
    for _ in range(2):  # the same gradient twice: the moment and momentum change, the step does not
        updates, state = jax.jit(tx.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
        for key, lr in (("wide", 0.02 * lrm), ("tall", 0.02 * lrm * math.sqrt(n))):
            p, g = expected["blocks"][key], np.asarray(grads["blocks"][key])
            expected["blocks"][key] = p - lr * np.sign(g) / math.sqrt(n) - lr * wd * p * (g * p >= 0)
            np.testing.assert_allclose(params["blocks"][key], expected["blocks"][key], rtol=1e-6, atol=1e-7)
    second = state.inner_state.inner_states[MUON].inner_state.second_moment["blocks"]
    assert second["wide"].shape == second["tall"].shape == (n,)


def test_zero_gradient_only_decays_by_the_injected_weight_decay():
    params = {"blocks": {"up": jnp.full((4, 8), 0.5), "down": jnp.full((8, 4), -0.25)}}
    tx = muon_only()
    state = set_schedule(tx.init(params), 1.0, 0.95, 0.1)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    after = optax.apply_updates(params, updates)
    # kernel (4, 8) is torch's (8, 4): √2 on its LR
    np.testing.assert_allclose(after["blocks"]["up"], 0.5 * (1 - 0.02 * math.sqrt(2) * 0.1), rtol=1e-6)
    np.testing.assert_allclose(after["blocks"]["down"], -0.25 * (1 - 0.02 * 0.1), rtol=1e-6)


# ---- schedules and the horizon, by hand ---------------------------------------------------------------------


def test_lr_multiplier_warms_up_for_40_steps_and_warms_down_over_65_percent_to_5_percent():
    lrm = lambda it: horizon.lr_multiplier(it, 1000, 40, 0.65, 0.05)  # noqa: E731
    assert lrm(0) == 1 / 40 and lrm(39) == 1.0 and lrm(40) == 1.0
    assert lrm(350) == 1.0  # N − round(0.65·N) = 350: the last flat step
    assert lrm(351) == pytest.approx(649 / 650 + (1 / 650) * 0.05)
    assert lrm(675) == pytest.approx(0.525)
    assert lrm(1000) == pytest.approx(0.05)


def test_muon_momentum_warms_to_097_then_cools_to_090_over_the_warmdown():
    mom = lambda it, n=2000: horizon.muon_momentum(it, n, 0.65)  # noqa: E731
    assert mom(0) == pytest.approx(0.85) and mom(100) == pytest.approx(0.88)
    assert mom(399) == pytest.approx(0.85 + 0.12 * 399 / 400)
    assert mom(400) == mom(699) == mom(700) == 0.97  # the warmdown starts at 2000 − 1300 = 700
    assert mom(1350) == pytest.approx(0.935) and mom(2000) == pytest.approx(0.90)
    assert mom(50, 100) == pytest.approx(0.865)  # a short run: still warming up inside its warmdown


def test_muon_weight_decay_follows_half_a_cosine_to_zero():
    assert horizon.muon_weight_decay(0, 100, 0.2) == 0.2
    assert horizon.muon_weight_decay(25, 100, 0.2) == pytest.approx(0.1 * (1 + math.sqrt(0.5)))
    assert horizon.muon_weight_decay(50, 100, 0.2) == pytest.approx(0.1)
    assert horizon.muon_weight_decay(100, 100, 0.2) == pytest.approx(0.0, abs=1e-17)


def recipe_model(depth: int, vocab: int = 32768) -> ModelConfig:
    return ModelConfig(recipe="nanochat-2026", vocab_size=vocab, sequence_len=2048, **horizon.depth_dims(depth))


def test_depth_rule_rounds_the_width_up_to_whole_128_dim_heads():
    assert horizon.depth_dims(12) == {"n_layer": 12, "n_embd": 768, "n_head": 6, "n_kv_head": 6}
    assert horizon.depth_dims(20) == {"n_layer": 20, "n_embd": 1280, "n_head": 10, "n_kv_head": 10}
    assert horizon.depth_dims(25) == {"n_layer": 25, "n_embd": 1664, "n_head": 13, "n_kv_head": 13}  # 1600 → 1664


def test_scaling_parameters_count_block_matrices_gates_and_padded_head(golden):
    stored = sum(golden.stored[f"before/{n}"].size for n in golden.names
                 if n.startswith("transformer.h.") or n == "lm_head.weight")
    assert horizon.scaling_params(golden.model) == stored
    # d12 by hand: 12 layers × 12·768², gates 12·6 on layers 1, 3, …, 11, head 32,768 × 768
    assert horizon.scaling_params(recipe_model(12)) == 12 * 12 * 768**2 + 6 * 12 * 6 + 32768 * 768 == 110_100_912
    # windows_gqa by hand: 4 × (64·64·2 + 64·32·2 + 2·64·256), gates 12·1 on layers 1 and 3, head 320 × 64
    assert horizon.scaling_params(dict(recipe="nanochat-2026", n_layer=4, n_embd=64, n_head=2, n_kv_head=1,
                                       vocab_size=300, sequence_len=512)) == 4 * 45056 + 24 + 320 * 64


def test_batch_lr_and_weight_decay_from_the_horizon():
    d12, d24, d32 = 110_100_912, 24 * 12 * 1536**2 + 12 * 12 * 12 + 32768 * 1536, 32 * 12 * 2048**2 + 16 * 12 * 16 \
        + 32768 * 2048
    assert horizon.scaling_params(recipe_model(24)) == d24 == 729_810_624
    # d24: B_ref·(d24/d12)^0.383 = 2^(19 + 0.383·log2 6.6286) = 2^20.045 → 2^20
    h24 = horizon.horizon(recipe_model(24), 12, None, 0.28)
    assert (h24.tokens, h24.reference_tokens, h24.batch_tokens) == (12 * d24, 12 * d12, 2**20)
    assert h24.lr_scale == pytest.approx(math.sqrt(2))
    assert h24.weight_decay == pytest.approx(0.28 * math.sqrt(2) * d12 / d24)
    # d32: 2^(19 + 0.383·log2 15.238) = 2^20.505 → 2^21
    assert horizon.horizon(recipe_model(32), 12, None, 0.28).batch_tokens == 2**21 and d32 == 1_677_724_672
    # the exponent itself: 0.383·log2 14.5 = 1.478 → 2^20 but 0.383·log2 16 = 1.532 → 2^21; 0.383·(−6) → 2^17
    assert [horizon.auto_batch_tokens(r, 1.0) for r in (14.5, 16.0, 1 / 64)] == [2**20, 2**21, 2**17]
    h12 = horizon.horizon(recipe_model(12), 20, None, 0.28)  # the reference itself, at any ratio
    assert (h12.batch_tokens, h12.lr_scale, h12.weight_decay) == (2**19, 1.0, pytest.approx(0.28))
    given = horizon.horizon(recipe_model(12), 12, 2**17, 0.28)  # a given batch: LR × ½, decay × ½
    assert (given.batch_tokens, given.lr_scale, given.weight_decay) == (2**17, 0.5, pytest.approx(0.14))


# ---- configuration, dispatch, the step's scalars --------------------------------------------------------------


RECIPE = ["model.recipe=nanochat-2026", "model.depth=12", "tokenizer.vocab_size=32768",
          "training.total_batch_tokens=524288"]


def test_the_recipe_switch_brings_nanochats_optimizer_and_schedule_settings():
    today = load_config()
    assert today.optimizer == OptimizerConfig() and (today.schedule.warmup_steps, today.schedule.warmdown_ratio) \
        == (-1, 0.2)
    config = load_config(overrides=RECIPE + ["optimizer.embedding_lr=0.25"])
    o, s = config.optimizer, config.schedule
    assert (o.embedding_lr, o.unembedding_lr, o.matrix_lr, o.scalar_lr) == (0.25, 0.008, 0.02, 0.5)  # set: kept
    assert (o.weight_decay, o.grad_clip, o.muon_beta2, o.ns_dtype) == (0.28, 0.0, 0.9, "bfloat16")
    assert (o.muon_momentum_start, o.muon_momentum, o.muon_momentum_final, o.muon_momentum_warmup_steps) == \
        (0.85, 0.97, 0.90, 400)
    assert (s.warmup_steps, s.warmdown_ratio, s.final_lr_frac) == (40, 0.65, 0.05)
    assert load_config(overrides=RECIPE + ["model.compute_dtype=float32"]).optimizer.ns_dtype == "float32"
    assert load_config(overrides=["optimizer.recipe=nanochat-2026"]).optimizer.weight_decay == 0.28
    assert config.from_dict(config.to_dict()) == config


def test_the_recipe_sizes_the_batch_from_the_horizon_unless_given():
    auto = RECIPE[:-1]  # no batch given: nanochat's, for a horizon of 12 tokens per scaling parameter
    d12, d24 = load_config(overrides=auto), load_config(overrides=auto[:1] + ["model.depth=24"] + auto[2:])
    assert d12.training.target_param_data_ratio == 12.0
    assert (d12.training.total_batch_tokens, d24.training.total_batch_tokens) == (2**19, 2**20)
    assert load_config(overrides=RECIPE).training.total_batch_tokens == 2**19 * 1  # given
    # onanchat-2025 may ask for it too: d20 (20·12·1280² + 65,536·1280) against d12 (12·12·768² + 65,536·768),
    # 2^(19 + 0.383·log2 3.527) = 2^19.70 → 2^20
    today = load_config(overrides=["training.total_batch_tokens=-1"])
    assert today.training.target_param_data_ratio == 20.0 and today.training.total_batch_tokens == 2**20
    with pytest.raises(ConfigError, match="training.total_batch_tokens=-1 gives 524,288 tokens for this model, not "
                                          "a multiple of model.sequence_len=3000"):
        load_config(overrides=auto + ["model.sequence_len=3000"])


@pytest.mark.parametrize("override, message", [
    ("optimizer.recipe=onanchat-2025", "optimizer.recipe=onanchat-2025 trains only wte, lm_head and block matrices, "
                                       "but the model has value_embeds, layer_lambdas, smear, backout"),
    ("optimizer.scalar_lr=0", "optimizer.scalar_lr=0.0 must be a positive number"),
    ("optimizer.muon_beta2=1", "optimizer.muon_beta2=1.0 must be in \\[0, 1\\)"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay=-0.1 must be a number, 0 or more"),
    ("schedule.warmup_steps=-2", "schedule.warmup_steps=-2 must be a number of steps, or -1"),
])
def test_bad_optimizer_settings_are_refused_in_one_sentence(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=RECIPE + [override])


def test_build_optimizer_follows_the_recipe_and_scales_every_lr_but_smears_with_the_batch():
    assert schedule_names(build_optimizer(OptimizerConfig(), ModelConfig(n_embd=8)).init({"wte": jnp.zeros((2, 2))})) == \
        ("lr_multiplier", "muon_momentum")
    opt = load_config(overrides=RECIPE).optimizer
    params = {"lm_head": {"kernel": jnp.zeros((4, 8))}, "smear_lambda": jnp.zeros(1), "x0_lambdas": jnp.zeros(3)}
    grads = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(2).normal(size=p.shape), jnp.float32), params)
    tx = build_optimizer(opt, recipe_model(12), batch_tokens=2**21)  # auto: the model's recipe; LRs × 2
    state = tx.init(params)
    assert schedule_names(state) == ("lr_multiplier", "muon_momentum", MUON_WEIGHT_DECAY)
    assert get_schedule(state) == pytest.approx((1.0, 0.97, 0.28))
    updates, _ = tx.update(grads, set_schedule(state, 0.5, 0.9, 0.1), params)
    # a first AdamW step from zero weights is −lr·sign(g): head 0.008·2·½, x0 0.5·2·½, smear 0.2·½ (no batch factor)
    for key, lr in (("lm_head", 0.008), ("x0_lambdas", 0.5), ("smear_lambda", 0.1)):
        got, g = jax.tree.leaves(updates[key])[0], jax.tree.leaves(grads[key])[0]
        np.testing.assert_allclose(got, -lr * np.sign(g), rtol=1e-6)
    assert get_schedule(set_schedule(state, 1.0, 0.95)) == pytest.approx((1.0, 0.95, 0.28))  # the decay is kept
    today = build_optimizer(OptimizerConfig(), ModelConfig(n_embd=8)).init({"wte": jnp.zeros((2, 2))})
    with pytest.raises(TypeError, match="this optimizer \\(onanchat-2025's\\) schedules no Muon weight decay"):
        set_schedule(today, 1.0, 0.95, 0.1)


def test_the_loop_feeds_nanochats_three_schedules_in_pretraining_and_none_of_its_decay_later():
    config = load_config(overrides=RECIPE)  # d12 at the reference batch: λ = 0.28 exactly
    base = SimpleNamespace(config=config, num_iterations=100, phase=PHASES["base"])
    assert schedule(base, 10) == pytest.approx((11 / 40, 0.85 + 0.12 * 10 / 400, 0.14 * (1 + math.cos(0.1 * math.pi))))
    # the last step: LR at the end of its warmdown (W = 65); momentum still warming (step < 400 comes first)
    assert schedule(base, 99) == pytest.approx((1 / 65 + 64 / 65 * 0.05, 0.85 + 0.12 * 99 / 400,
                                                0.14 * (1 + math.cos(0.99 * math.pi))))
    longer = SimpleNamespace(config=config, num_iterations=2000, phase=PHASES["base"])
    assert schedule(longer, 1350)[1] == pytest.approx(0.935)  # halfway through the warmdown 700 … 2000
    sft = SimpleNamespace(config=config, num_iterations=100, phase=PHASES["sft"])
    assert schedule(sft, 10) == pytest.approx((0.9, 0.97, 0.0))
    today = SimpleNamespace(config=load_config(), num_iterations=100, phase=PHASES["base"])
    assert schedule(today, 10) == pytest.approx((1.0, 0.85 + 0.10 * 10 / 300))


TINY_RECIPE = ["model.recipe=nanochat-2026", "model.depth=null", "model.n_layer=2", "model.n_embd=64",
               "model.n_head=2", "model.sequence_len=32", "model.compute_dtype=float32", "tokenizer.vocab_size=300"]


def run_steps(config, params, mesh, schedules):
    tx = build_optimizer(config.optimizer, config.model, batch_tokens=config.training.total_batch_tokens)
    graphdef, state, shardings = init_train_state(config.model, tx, mesh, params=params)
    step = build_train_step(graphdef, tx, mesh, shardings)
    batch = np.random.default_rng(0).integers(0, 300, (8, 33)).astype(np.int32)
    rows = {"inputs": batch[None, :, :-1], "targets": batch[None, :, 1:]}  # the same batch each step
    losses, seen = [], []
    for scalars in schedules:
        state, metrics = step(state, rows, *(np.float32(v) for v in scalars))
        losses.append(float(metrics["loss"]))
        seen.append(tuple(float(metrics[k]) for k in ("lr_multiplier", "muon_momentum", MUON_WEIGHT_DECAY)))
    return np.array(losses), seen, state, step


def test_the_train_step_takes_the_muon_weight_decay_as_an_input_and_shards_the_state():
    """One compiled step for every schedule value; an FSDP×TP mesh (NorMuon's second moments replicated, the
    rest placed like the parameters) reproduces the one-device run. The weights are perturbed: from nanochat's
    initialisation (zero projections) some gradients are fp32 noise, whose sign Adam's first step follows."""
    config = load_config(overrides=TINY_RECIPE + ["optimizer.ns_dtype=float32"])
    params = jax.tree.map(np.asarray, model_params(perturbed_model(config.model)))
    schedules = [(1.0, 0.85, 0.2), (0.5, 0.9, 0.1), (0.25, 0.95, 0.0)]
    losses, seen, state, step = run_steps(config, params, make_mesh(MeshConfig(data=1), jax.devices()[:1]), schedules)
    np.testing.assert_allclose(seen, schedules, rtol=1e-7)  # what the optimizer read, as fp32
    assert step.jitted._cache_size() == 1
    assert losses[-1] < losses[0]
    sharded, _, sharded_state, _ = run_steps(config, params, make_mesh(MeshConfig(data=1, fsdp=4, tensor=2)),
                                             schedules)
    np.testing.assert_allclose(sharded, losses, rtol=1e-5)
    # Adam's per-element normalisation and the cautious mask turn summation-order noise into a few larger
    # differences (measured: 25 of 64k elements beyond 1e-5, the backout scalar's 2.7e-3 the largest)
    diffs = [np.abs(np.asarray(a) - np.asarray(b)) for a, b in zip(jax.tree.leaves(sharded_state.params),
                                                                   jax.tree.leaves(state.params))]
    assert max(d.max() for d in diffs) < 1e-2
    assert sum(int(np.sum(d > 1e-5)) for d in diffs) <= sum(d.size for d in diffs) // 1000
    muon = sharded_state.opt_state.inner_state.inner_states[MUON].inner_state
    moment = muon.second_moment["blocks"][0]["mlp"]["c_fc"]["kernel"]
    assert moment.shape == (256,) and moment.sharding.spec == P()
    assert muon.momentum_buffer["blocks"][0]["mlp"]["c_fc"]["kernel"].sharding.spec == P("fsdp", "tensor")


def recipe_overrides(base, name: str, direction: str, **extra) -> list[str]:
    return train_overrides(base, f"{name}-{direction}", **{"model.recipe": "nanochat-2026",
                                                           "direction.direction": direction, **extra})


@pytest.fixture(scope="module", params=["forward", "backward", "bidirectional"])
def recipe_run(base, request):  # noqa: F811  (base: the tiny corpus and tokenizer fixture)
    return request.param, train(load_config(overrides=recipe_overrides(base, "recipe-2026", request.param)))


def test_a_recipe_run_logs_its_three_schedules_and_resumes_bitwise(base, recipe_run):  # noqa: F811
    direction, recipe_run = recipe_run
    config = load_config(overrides=recipe_overrides(base, "recipe-2026", direction))
    rows = [json.loads(line) for line in (recipe_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = {r["step"]: r for r in rows if "loss" in r}
    assert sorted(rows) == list(range(STEPS)) and rows[STEPS - 1]["loss"] < rows[0]["loss"]
    decay = run_horizon(config).weight_decay
    assert decay > 0
    for step, row in rows.items():  # 8 steps: all inside the 40-step warmup and the 400-step momentum warmup
        assert row["lr_multiplier"] == pytest.approx((step + 1) / 40)
        assert row["muon_momentum"] == pytest.approx(0.85 + 0.12 * step / 400)
        assert row[MUON_WEIGHT_DECAY] == pytest.approx(decay * 0.5 * (1 + math.cos(math.pi * step / STEPS)), rel=1e-6)
    copy = base / "checkpoints" / f"recipe-2026-resumed-{direction}"
    shutil.copytree(recipe_run.run_dir, copy)
    with pytest.warns(UserWarning, match="moved checkpoint step 8"):  # the newer step steps aside
        resumed = train(load_config(overrides=recipe_overrides(base, "recipe-2026-resumed", direction,
                                                               **{"checkpoint.resume_step": 6})))
    assert sorted(resumed.losses) == [6, 7]
    assert all(loss == recipe_run.losses[step] for step, loss in resumed.losses.items())
    assert resumed.val_bpb == recipe_run.val_bpb
