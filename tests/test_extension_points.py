"""Adding a suite or a phase is one row of a table: a NEW suite and a NEW phase registered from this file alone
run on a tiny model; and the hook cadence, as a table."""

import pytest

from revjax.config import load_config
from revjax.eval.suites import SUITES, Suite, register_suite
from revjax.phases import PHASES, Phase, register_phase
from revjax.train.hooks import Cadence
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
