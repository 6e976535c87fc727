"""nanochat's 2026 recipe as configs: its depth rule, configs/recipe/nanochat-2026.yaml and the depth configs
that include it, and ``revjax chain`` running the recipe's phases (base then SFT) in every direction, each base run
exported in onanchat's layout and imported back bit for bit."""

import jax
import json
import math
import numpy as np
import pytest

from revjax.checkpoint import Checkpointer
from revjax.config import ConfigError, load_config
from revjax.config_args import find_config
from revjax.config_checks import dims_from_depth
from revjax.horizon import scaling_params
from revjax.interop.export import export_checkpoint
from revjax.interop.importer import import_checkpoint
from revjax.runs import read_params
from revjax.train.chain import run_chain
from tests.helpers import make_corpus
from tests.helpers import phase_overrides as overrides

RECIPE = "recipe/nanochat-2026"


@pytest.mark.parametrize("depth, width, heads", [(1, 128, 1), (2, 128, 1), (5, 384, 3), (12, 768, 6),
                                                 (13, 896, 7), (24, 1536, 12), (26, 1664, 13)])
def test_the_2026_depth_rule_rounds_the_width_up_to_heads_of_128(depth, width, heads):
    config = load_config([find_config(RECIPE)], [f"model.depth={depth}"])
    m = config.model
    assert (m.n_layer, m.n_embd, m.n_head, m.n_kv_head, m.head_dim) == (depth, width, heads, heads, 128)


@pytest.mark.parametrize("depth, width, heads", [(2, 128, 1), (4, 256, 2), (12, 768, 6), (24, 1536, 12)])
def test_the_2025_depth_rule_is_unchanged_and_agrees_at_even_depths(depth, width, heads):
    assert dims_from_depth(depth) == {"n_layer": depth, "n_embd": width, "n_head": heads, "n_kv_head": heads}
    assert dims_from_depth(depth, "nanochat-2026") == dims_from_depth(depth)
    m = load_config(overrides=[f"model.depth={depth}"]).model
    assert (m.recipe, m.n_embd, m.n_head) == ("onanchat-2025", width, heads)


def test_odd_depths_differ_between_the_rules():
    # 2025: 5·64 = 320 wide with ceil(320/128) = 3 heads, which do not divide it; 2026: 384 wide, 3 heads of 128
    assert dims_from_depth(5)["n_embd"] == 320 and dims_from_depth(5, "nanochat-2026")["n_embd"] == 384
    with pytest.raises(ConfigError, match="not divisible by model.n_head=3"):
        load_config(overrides=["model.depth=5"])
    with pytest.raises(ConfigError, match="disagrees with model.depth=5, which gives n_embd=384"):
        load_config([find_config(RECIPE)], ["model.depth=5", "model.n_embd=320"])


# depth → (n_embd, n_head, device batch, data:param ratio, tokens a step, fineweb shards). The batch by hand:
# 2^round(log2(2^19 · (D/D_ref)^0.383)) with D = ratio × scaling parameters and D_ref = 12 × d12's 110,100,912;
# d24: (8 · 729,810,624 / (12 · 110,100,912))^0.383 = 4.4190^0.383 = 1.766 → 2^19.82 → 2^20
DEPTHS = {12: (768, 6, 32, 12.0, 2**19, 32), 20: (1280, 10, 32, 12.0, 2**20, 120),
          24: (1536, 12, 16, 8.0, 2**20, 135), 26: (1664, 13, 16, 12.0, 2**20, 250)}


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_each_depth_config_resolves_to_the_recipe(depth):
    width, heads, device_batch, ratio, batch, shards = DEPTHS[depth]
    config = load_config([find_config(f"nanochat-2026/d{depth}")])
    m, t = config.model, config.training
    assert (m.depth, m.n_layer, m.n_embd, m.n_head, m.n_kv_head) == (depth, depth, width, heads, heads)
    assert (m.recipe, m.window_pattern, m.smear, m.value_embeds, m.vocab_multiple) == (
        "nanochat-2026", "SSSL", True, True, 64)
    assert (m.vocab_size, config.tokenizer.vocab_size, m.sequence_len, m.compute_dtype) == (
        32768, 32768, 2048, "bfloat16")
    assert (config.data.corpus, config.data.fineweb_shards, config.data.packing, config.data.val_packing) == (
        "fineweb", shards, "bos_aligned", "bos_aligned")
    assert config.chain.phases == ["base", "sft"] and config.run_name == f"nanochat-2026-d{depth}"
    assert (t.device_batch_size, t.target_param_data_ratio, t.total_batch_tokens, t.num_iterations) == (
        device_batch, ratio, batch, -1)
    assert (config.optimizer.weight_decay, config.schedule.warmup_steps, config.schedule.warmdown_ratio) == (
        0.28, 40, 0.65)
    # the FineWeb shards hold the horizon's tokens at 45M tokens a shard, plus the val shard
    assert (shards - 1) * 45e6 >= ratio * scaling_params(m)


def test_d24_is_the_speedruns_d24():
    config = load_config([find_config("nanochat-2026/d24")])
    assert scaling_params(config.model) == 729_810_624
    tokens = 8 * 729_810_624
    assert config.training.total_batch_tokens == 2**20 and tokens // 2**20 == 5568  # 5,568 steps of 2^20 tokens


# ---- the recipe through `revjax chain`, in every direction -----------------------------------------------------

TINY = {"training.num_iterations": 2, "chain.sft": "{training.num_iterations: 1}", "training.eval_tokens": 256}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("recipe"))


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_chain_runs_the_recipe_and_its_base_run_round_trips_through_export(base, tmp_path, direction):
    args = overrides(base, "r26", **TINY, **{"direction.direction": direction})
    outcomes = run_chain([find_config(RECIPE)], args)
    assert [o.phase for o in outcomes] == ["base", "sft"]  # the recipe's phase list: no mid, no RL
    for outcome, steps in zip(outcomes, (2, 1)):
        assert outcome.run_dir.name == f"r26-{direction}-{outcome.phase}" and outcome.result.step == steps
        meta = Checkpointer(outcome.run_dir).metadata(steps)
        assert meta["finished"] and meta["phase"] == outcome.phase
        model = meta["config"]["model"]
        assert (model["recipe"], model["smear"], model["value_embeds"], model["backout"]) == (
            "nanochat-2026", True, True, True)
        assert meta["config"]["direction"]["direction"] == direction
        assert meta["config"]["optimizer"]["weight_decay"] == 0.28
        assert np.isfinite(outcome.result.val_bpb)
    # by hand: nanochat's initialisation (head N(0, 0.001²), zero projections) gives logits within about 0.01 of
    # zero, so the first loss is ln V of the real vocabulary in every direction (padding rows are never predicted)
    rows = [json.loads(line) for line in (outcomes[0].run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(row for row in rows if "loss" in row)
    vocab = Checkpointer(outcomes[0].run_dir).metadata(2)["config"]["model"]["vocab_size"]
    assert first["step"] == 0 and abs(first["loss"] - math.log(vocab)) < 5e-3
    parent = Checkpointer(outcomes[1].run_dir).metadata(1)["parent"]
    assert parent == {"run": str(outcomes[0].run_dir), "step": 2, "phase": "base"}

    params, meta, config = read_params(outcomes[0].run_dir)
    exported = export_checkpoint(outcomes[0].run_dir, tmp_path / "export", all_fp32=True)
    back, back_meta, back_config = read_params(import_checkpoint(exported.parent, tmp_path / "imported"))
    recipe_params = {"smear_gate", "smear_lambda", "value_embeds", "resid_lambdas", "x0_lambdas", "backout_lambda"}
    assert recipe_params <= set(params)
    assert "ve_gate" in params["blocks"][1]["attn"] and sorted(back) == sorted(params)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    assert (back_meta["step"], back_meta["direction"], back_config.model.recipe) == (2, direction, "nanochat-2026")
    assert back_config.model.gpt_config() == config.model.gpt_config()

