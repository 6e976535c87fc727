"""scripts/bench_train.py and scripts/bench_compile.py on a tiny nanochat-2026 config: the train step compiled ahead
of time from abstract shapes with the optimizer's three scheduled scalars, XLA's memory analysis per remat policy,
and the refusals of what the scripts cannot do for that recipe."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import jax
import pytest

from revjax.config import load_config
from revjax.model import flops_per_token, num_params
from revjax.optim import SCHEDULED

REPO_ROOT = Path(__file__).resolve().parents[1]


TINY = ["model.recipe=nanochat-2026", "model.depth=null", "model.n_layer=2", "model.n_embd=64", "model.n_head=2",
        "model.n_kv_head=1", "model.sequence_len=64", "model.compute_dtype=float32", "model.loss_chunk=0",
        "tokenizer.vocab_size=512", "training.device_batch_size=1", f"training.total_batch_tokens={64 * 8}"]  # 8 emulated devices


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_train():
    return load_script("bench_train")


def run_main(module, monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *argv])
    module.main()


def test_aot_setup_takes_three_scalars_and_its_arguments_are_the_state_and_batch(bench_train):
    setup = bench_train.Setup(load_config(overrides=TINY))
    assert setup.scheduled == SCHEDULED == ("lr_multiplier", "muon_momentum", "muon_weight_decay")
    m = setup.memory()
    # per device: the replicated state, one row of int32 inputs and targets (64 tokens each, the batch split over 8
    # devices) and the three fp32 scalars, which replace the three the state stores (unread, so jit drops them)
    state_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(setup.abstract))
    assert m["argument"] == state_bytes - 3 * 4 + 2 * 64 * 4 + 3 * 4
    assert m["alias"] == state_bytes - 3 * 4  # the donated state's buffers are the new state's
    assert m["total"] == m["temp"] + m["argument"] + m["output"] - m["alias"]


def test_aot_prints_one_memory_analysis_per_remat_policy(bench_train, monkeypatch, capsys):
    run_main(bench_train, monkeypatch, "--aot", "--remat", "none,full", *TINY)
    out = capsys.readouterr().out
    config = load_config(overrides=TINY).model
    assert f"model: nanochat-2026, depth 2 (n_embd 64, 2 heads, vocab {config.vocab_size}), " \
           f"{num_params(config):,} params, {flops_per_token(config):.3e} FLOPs/token" in out
    lines = [line for line in out.splitlines() if line.startswith("memory analysis")]
    assert [line.split("remat ")[1].split(",")[0] for line in lines] == ["none", "full"]
    for line in lines:
        assert line.startswith("memory analysis (B=1, T=64, accum 1, remat ")
        for field in ("temp", "arguments", "outputs", "aliased", "generated code", "total", "lower", "compile"):
            assert f"{field} " in line
    costs = [line for line in out.splitlines() if line.startswith("  XLA cost analysis: ")]
    assert len(costs) == 2
    per_token = float(costs[0].split(", ")[1].split(" per token")[0])
    # the compiled step does the model's count (6 FLOPs per weight and token, attention) and the optimizer's work
    assert per_token > flops_per_token(config)
    assert "revjax:" not in out  # --aot runs no step


def test_torch_reference_refuses_the_2026_recipe(bench_train, monkeypatch):
    with pytest.raises(SystemExit) as info:
        run_main(bench_train, monkeypatch, "--torch-only", *TINY)
    assert "onanchat-2025 model, not model.recipe=nanochat-2026" in str(info.value)


def test_several_remat_policies_need_aot(bench_train, monkeypatch):
    with pytest.raises(SystemExit) as info:
        run_main(bench_train, monkeypatch, "--remat", "none,dots", *TINY)
    assert "only with --aot" in str(info.value)
    assert bench_train.remat_policies("none,dots,full") == ["none", "dots", "full"]
    with pytest.raises(Exception, match="unknown remat policy some"):
        bench_train.remat_policies("none,some")


def test_bench_compile_compiles_the_2026_step_and_marks_scanning_refused(monkeypatch, capsys):
    bench_compile = load_script("bench_compile")
    cache = jax.config.jax_enable_compilation_cache
    try:
        run_main(bench_compile, monkeypatch, "model.recipe=nanochat-2026", "model.n_embd=64", "model.sequence_len=64",
                 "training.device_batch_size=1", "--layers", "2")
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("     2 |") and row.endswith("(refused: its layers differ)")
    unrolled = [float(x.rstrip("s")) for x in row.split("|")[1].split()]
    assert len(unrolled) == 3 and unrolled[1] > 0 and unrolled[2] > 0  # lower s, compile s, temp MiB
