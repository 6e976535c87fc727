"""Adding a suite or a phase is one row of a table: a NEW suite and a NEW phase registered from this file alone
run on a tiny model; so is a new attention kernel; trackers and sweep backends are tables too; and the hook
cadence, as a table."""

import dataclasses
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from revjax.attention import CAUSAL_KERNELS, causal_attention, register_kernel
from revjax.config import ConfigError, ModelConfig, load_config
from revjax.experiments.cli import BACKENDS, build_parser
from revjax.interop.state_dict import build_model, model_params
from revjax.train.setup import TRACKERS
from revjax.eval.suites import SUITES, Suite, register_suite
from revjax.phases import PHASES, Phase, register_phase
from revjax.train.hooks import Cadence
from tests.helpers import perturbed_model
from tests.tiny_corpus import write_tiny_corpus


@pytest.fixture(scope="module")
def tiny_train_overrides(tmp_path_factory):
    """``make(run, **extra)``: overrides of a tiny run (d=64, 2 layers) on a tiny corpus."""
    base = write_tiny_corpus(tmp_path_factory.mktemp("extension"))

    def make(run: str, **extra) -> list[str]:
        values = {
            "base_dir": base, "run_name": run, "data.corpus": "parquet", "data.dir": base / "corpus",
            "tokenizer.vocab_size": 320, "model.depth": None, "model.n_layer": 2, "model.n_embd": 64,
            "model.n_head": 2, "model.sequence_len": 32, "model.compute_dtype": "float32",
            "training.device_batch_size": 1, "training.total_batch_tokens": 256, "training.eval_tokens": 256,
            "logging.log_every": 1, "logging.progress": False, "optimizer.ns_dtype": "float32", **extra}
        return [f"{k}={'null' if v is None else v}" for k, v in values.items()]

    return make


@pytest.mark.parametrize("cadence,start,last_step,due", [
    (Cadence(3), 0, 7, [0, 3, 6, 7]),                                  # first step, every N, last step
    (Cadence(3, at_zero=False), 0, 7, [3, 6, 7]),                      # the suite hook: not at step 0
    (Cadence(3, at_resume=False), 0, 7, [3, 6, 7]),                    # checkpoints: not where the run started
    (Cadence(3, at_resume=False), 3, 7, [6, 7]),                       # after a resume from step 3
    (Cadence(3), 3, 7, [3, 6, 7]),                                     # an evaluation repeats the resumed step
    (Cadence(0), 0, 7, [7]),                                           # never, except the last step
    (Cadence(0, at_end=False), 0, 7, []),                              # never
    (Cadence(-1, at_end=False), 2, 7, []),
])
def test_hook_cadence(cadence, start, last_step, due):
    assert [s for s in range(start, last_step + 1) if cadence.due(s, start, s == last_step)] == due


@pytest.fixture
def new_phase_and_suite():
    phase = register_phase(Phase("polish", "documents", "next_token", "linear", False, "polish_checkpoints", False,
                                 accepts=(("forward", "turn"), ("forward", "sequence"))))
    calls = []

    def train_metric(context, params):
        calls.append(context.run.config.training.phase)
        return {"params_seen/forward": float(len(calls))}

    suite = register_suite(Suite(
        "count", lambda job: {"suite": "count", "ways": {w.value: {"n": 1} for w in job.ways}},
        lambda out: ["### count", ""], lambda out, way: {"count": 1.0},
        lambda way, parts: [("count", lambda p, s: p.get("n"))], train=train_metric, train_always=True))
    yield phase, suite, calls
    PHASES.pop("polish")
    SUITES.pop("count")


def test_a_new_phase_and_suite_run_from_this_file_alone(tiny_train_overrides, new_phase_and_suite):
    from revjax.train.loop import train

    _, _, calls = new_phase_and_suite
    config = load_config(overrides=tiny_train_overrides("polished", **{
        "training.phase": "polish", "training.num_iterations": 3, "training.core_every": 2,
        "training.eval_every": 0, "training.sample_every": 0}))
    result = train(config)
    assert result.step == 3 and calls == ["polish", "polish"]  # steps 2 and 3
    assert result.hooks["suite"]["params_seen/forward"] == 2.0 and result.hooks["suite"]["step"] == 3
    with pytest.raises(Exception, match="does not train a backward model"):
        load_config(overrides=tiny_train_overrides("refused", **{"training.phase": "polish",
                                                                 "direction.direction": "backward"}))


def test_a_new_attention_kernel_is_one_row():
    """A kernel added to the table is what ``model.attention=<name>`` runs; an unknown name is one sentence."""
    calls = []

    def counting(q, k, v):
        calls.append(q.shape)
        return causal_attention(q, k, v)

    config = ModelConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=1, n_embd=32,
                         compute_dtype="float32", attention="xla")
    model = perturbed_model(config)
    ids = jax.random.randint(jax.random.key(0), (2, 16), 0, 64)
    register_kernel("counting", counting)
    try:
        with pytest.raises(ValueError, match="exists already"):
            register_kernel("xla", counting)
        mine = build_model(dataclasses.replace(config, attention="counting"), model_params(model))
        np.testing.assert_allclose(mine(ids), model(ids), rtol=1e-6, atol=1e-6)
        assert calls == [(2, 16, 2, 16)] * 2  # once per layer
    finally:
        CAUSAL_KERNELS.pop("counting")
    wrong = build_model(dataclasses.replace(config, attention="flash9"), model_params(model))
    with pytest.raises(ConfigError, match=r"model.attention='flash9' is not an attention kernel; choose auto or one "
                                          r"of xla, splash, cudnn$"):
        wrong.attention_implementation()


def test_trackers_and_sweep_backends_are_tables(tmp_path):
    """What records a run and what runs a sweep are each one table that the code reads (a row is all a new one
    needs): the trackers the config switches on, and ``--backend``'s choices."""
    assert list(TRACKERS) == ["metrics.jsonl", "research.h5", "wandb"]
    config = load_config(overrides=["logging.hdf5=false", "logging.wandb=disabled"])
    run = SimpleNamespace(config=config, run_dir=tmp_path, start=0)
    assert [name for name, build in TRACKERS.items() if build(run) is not None] == ["metrics.jsonl"]
    assert list(BACKENDS) == ["local", "slurm", "pod"]
    backend = next(a for a in build_parser()._actions if a.dest == "backend")
    assert tuple(backend.choices) == tuple(BACKENDS)
