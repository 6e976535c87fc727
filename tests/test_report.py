"""``revjax report`` against the metrics logs it reads, chains found through parent links, and the in-training suite
hook (``training.core_every``) running at the right steps."""

import json
from pathlib import Path

import numpy as np
import pytest

from revjax.analysis.report import chains, find_runs, main, make_report, summary_rows, to_html
from revjax.checkpoint import Checkpointer
from revjax.runs import build_metadata
from revjax.config import load_config
from revjax.train.loop import train
from tests.helpers import train_overrides as overrides
from tests.helpers import write_bundle
from tests.tiny_corpus import write_tiny_corpus


def fake_phase(folder: Path, phase: str, direction: str, step: int, rows: list[dict], parent: Path | None,
               tokenizer: Path, evals: dict | None = None) -> Path:
    """A run folder with one checkpoint (a placeholder array; the report reads metadata only) and a metrics log."""
    metadata = build_metadata(step=step, direction=direction, phase=phase, model_config={"vocab_size": 320},
                              config={"data": {"dir": None}, "direction": {"conversation": "sequence"}},
                              tokenizer_identity="x", tokenizer_path=str(tokenizer), val_bpb=None)
    metadata["finished"] = True
    if parent is not None:
        metadata["parent"] = {"run": str(parent), "step": 1, "phase": "base"}
    with Checkpointer(folder, async_save=False) as checkpointer:
        checkpointer.save(step, {"params": {"w": np.zeros(2, np.float32)}}, data_state=None, metadata=metadata)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if evals:
        (folder / "eval").mkdir()
        (folder / "eval" / f"all-step{step}.json").write_text(json.dumps({"step": step, "suites": evals}))
    return folder


def chat_result(way: str, arc: float, score: float) -> dict:
    return {"suite": "ChatCORE", "max_per_task": 8, "ways": {way: {
        "answer": {"tasks": {"ARC-Easy": {"accuracy": arc, "centered": (arc - 0.25) / 0.75}}, "score": score},
        "joint": {"tasks": {}, "score": score / 2}}}}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("report-tok"))


def test_report_gathers_a_chain_from_its_logs(tmp_path, tokenizer_dir, capsys):
    tok = tokenizer_dir / "tokenizer"
    runs = tmp_path / "checkpoints"
    base_rows = [{"step": 0, "loss": 5.8, "step_seconds": 10.0}, {"step": 0, "val_bpb": 3.1, "val_loss": 5.0},
                 {"step": 10, "loss": 4.2, "step_seconds": 0.5}, {"step": 19, "loss": 3.9, "step_seconds": 0.7},
                 {"step": 20, "val_bpb": 2.25, "val_loss": 3.5}]
    base = fake_phase(runs / "c-forward-base", "base", "forward", 20, base_rows, None, tok,
                      {"offline": {"suite": "OLMo-offline", "ways": {"forward": {"tasks": {}, "score": 0.031}}}})
    mid = fake_phase(runs / "c-forward-mid", "mid", "forward", 5,
                     [{"step": 4, "loss": 1.5, "step_seconds": 0.2}, {"step": 5, "val_bpb": 1.75, "val_loss": 1.2}],
                     base, tok)
    sft = fake_phase(runs / "c-forward-sft", "sft", "forward", 6, [{"step": 5, "loss": 1.25}], mid, tok,
                     {"chat": chat_result("forward", 0.5, 0.125)})
    fake_phase(runs / "c-forward-rl", "rl", "forward", 3,
               [{"step": 0, "val_pass@4": 0.0, "val_reward": 0.0}, {"step": 2, "loss": 0.1},
                {"step": 3, "val_pass@4": 0.5, "val_reward": 0.25}], sft, tok)
    fake_phase(runs / "c-bidirectional-base", "base", "bidirectional", 8,
               [{"step": 7, "loss": 4.5}, {"step": 8, "val_bpb": 2.5, "OLMo-offline/forward": 0.02,
                                           "OLMo-offline/backward": -0.01, "val_bpb/backward": 2.6}], None, tok)

    # one phase folder brings its ancestors; the folder of runs brings both chains
    assert [r.phase for r in chains(find_runs([runs / "c-forward-sft"]))[0]] == ["base", "mid", "sft"]
    groups = chains(find_runs([runs]))
    assert sorted(g[0].direction for g in groups) == ["bidirectional", "forward"]
    forward = next(g for g in groups if g[0].direction == "forward")
    assert [r.phase for r in forward] == ["base", "mid", "sft", "rl"]
    table = {(label, metric): values for label, metric, values in summary_rows(forward)}
    assert table[("forward", "steps")] == {"base": 20, "mid": 5, "sft": 6, "rl": 3}
    assert table[("forward", "train loss (last logged)")] == {"base": 3.9, "mid": 1.5, "sft": 1.25, "rl": 0.1}
    assert table[("forward", "val bpb (training)")] == {"base": 2.25, "mid": 1.75, "sft": None, "rl": None}
    assert table[("forward", "RL val pass@4")]["rl"] == 0.5 and table[("forward", "RL val reward")]["rl"] == 0.25
    # first step (with compilation) + the median of the other logged step times for each other step
    assert table[("forward", "training time (s, steps only, estimated)")]["base"] == f"{10.0 + 0.6 * 19:.1f}"
    assert table[("forward", "OLMo-offline")]["base"] == 0.031
    assert table[("forward", "ChatCORE")]["sft"] == 0.125 and table[("forward", "ARC-Easy (accuracy)")]["sft"] == 0.5
    both = next(g for g in groups if g[0].direction == "bidirectional")
    table = {(label, metric): values for label, metric, values in summary_rows(both)}
    assert table[("bidirectional → backward", "OLMo-offline (training hook)")]["base"] == -0.01
    assert table[("bidirectional → backward", "val bpb (training hook)")]["base"] == 2.6

    out = make_report([runs], tmp_path / "report")
    text = (out / "report.md").read_text()
    assert "| direction | metric | base | mid | sft | rl |" in text
    assert "| forward | val bpb (training) | 2.2500 | 1.7500 | — | — |" in text
    assert "Tokenizer: 320 tokens" in text
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<table>" in page and ">2.2500</td>" in page
    assert "<h1>" in to_html("# x")
    assert main([str(tmp_path / "nothing-here")]) != 0
    assert "nothing-here" in capsys.readouterr().err


def test_suite_hook_runs_every_n_steps_and_report_reads_it(tmp_path, tokenizer_dir, capsys):
    base = tokenizer_dir
    write_bundle(tmp_path)  # <tmp>/eval_bundle: the CORE bundle the hook finds under the base dir
    config = load_config(overrides=overrides(base, "hooked", **{
        "base_dir": tmp_path, "data.dir": base / "corpus", "tokenizer.dir": base / "tokenizer",
        "training.num_iterations": 7, "training.eval_every": 0, "training.sample_every": 0,
        "checkpoint.save_every": -1, "training.core_every": 3, "training.core_suite": "core",
        "training.core_max_per_task": 2}))
    result = train(config)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    hooked = [r for r in rows if "CORE/forward" in r]
    assert [r["step"] for r in hooked] == [3, 6, 7]
    for r in hooked:
        assert np.isfinite(r["val_bpb/forward"]) and set(r) >= {"CORE/forward/mini_mc", "CORE/forward/mini_schema"}
        assert "CORE/forward/mini_lm" in r  # language modelling is scored forward
        tasks = [r[f"CORE/forward/{t}"] for t in ("mini_mc", "mini_schema", "mini_lm")]
        assert r["CORE/forward"] == pytest.approx(sum(tasks) / 3)
    assert main([str(result.run_dir)]) == 0
    text = capsys.readouterr().out
    last = hooked[-1]
    assert f"| forward | CORE (training hook) | {last['CORE/forward']:.4f} |" in text
    assert "| forward | steps | 7 |" in text and "bytes/token" in text  # compression on the run's val split
    final_loss = [r for r in rows if "loss" in r][-1]["loss"]
    assert f"| forward | train loss (last logged) | {final_loss:.4f} |" in text
