"""Experiment analysis (`revjax plot`): a hand-made experiment folder with known numbers, checked against the report.

The folder is written with the experiment code itself (sweep expansion, run folders, status files) and the trackers
(metrics.jsonl rows, a research.h5 through the HDF5 tracker), so it has the layout a sweep leaves behind. Forward
and backward have three seeds; bidirectional two (its third run never logged anything, so it is left out).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from revjax.analysis.experiment import (gap_table, position_bins, position_intervals, read_experiment, summary_table,
                                        t_interval)
from revjax.analysis.experiment_report import analyse
from revjax.experiments.lineage import make_run_folder, update_status, write_plan
from revjax.experiments.spec import load_sweep
from revjax.tracking import JsonlTracker
from revjax.tracking.hdf5 import Hdf5Tracker

T975_2 = 4.302652729749464  # Student t quantile 0.975, 2 degrees of freedom (tables)
T975_1 = 12.706204736174698  # ... 1 degree of freedom
FINAL = {"forward": {1: 2.10, 2: 2.16, 3: 2.13}, "backward": {1: 2.14, 2: 2.17, 3: 2.20},
         "bidirectional": {1: 2.30, 2: 2.34}}
BIDI_WAYS = {"forward": {1: 2.25, 2: 2.27}, "backward": {1: 2.28, 2: 2.32}}
OFFSET = {"forward": lambda s: 0.1 * s, "backward": lambda s: 0.5 + 0.2 * s, "bidirectional": lambda s: 1.0}
# /tokens rows: (step, loss by position, count by position); only steps 8 and 9 are in the last quarter of 0..9
TOKENS = [(0, [100.0, 100.0, 100.0, 100.0], [1, 1, 1, 1]),
          (8, [4.0, 3.0, 2.0, math.nan], [2, 2, 2, 0]),
          (9, [2.0, 1.0, 1.0, 1.0], [2, 6, 2, 1])]
CURVE = np.array([3.0, 1.5, 1.5, 1.0])  # count-weighted means of the rows of steps 8 and 9, by hand
TOKENS_PER_STEP = 2048


def _write_run(run_dir, direction: str, seed: int) -> None:
    jsonl = JsonlTracker(run_dir / "metrics.jsonl", 0)
    h5 = Hdf5Tracker(run_dir / "research.h5", 0, {"direction": direction}, interval=0.0)
    val = {"val_bpb": FINAL[direction][seed], "val_loss": 1.0}
    if direction == "bidirectional":
        val.update({f"val_bpb/{w}": BIDI_WAYS[w][seed] for w in BIDI_WAYS})
    rows = [{"step": 0, "val_bpb": 3.0, "val_loss": 2.0}]
    for step in range(10):
        row = {"step": step, "loss": 5.0 - 0.1 * step + 0.01 * seed, "tokens_per_s": 1000.0, "step_seconds": 2.0}
        diagnostics = {}
        for s, loss, count in TOKENS:
            if s == step:
                diagnostics["tokens"] = {"loss_by_position": np.asarray(loss, np.float32) + OFFSET[direction](seed),
                                         "count_by_position": np.asarray(count, np.int64)}
        if step in (0, 5, 9):
            norm = np.float32(0.5 + step + seed)
            diagnostics["layers"] = {"embedding": norm, "head": 2 * norm, "attention": 3 * norm, "mlp": 4 * norm,
                                     "layer": np.full(2, norm, np.float32)}
        h5.log({**row, "diagnostics": diagnostics} if diagnostics else row)
        jsonl.log(row)
    rows.append({"step": 10, **val})
    for row in rows:
        jsonl.log(row)
        h5.log(row)
    h5.close()
    jsonl.close()
    update_status(run_dir, state="finished", step=10, val_bpb=val["val_bpb"])


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    sweep_file = root / "study.yaml"
    sweep_file.write_text("name: study\nbase: [default]\noverrides: {logging.hdf5: true}\n"
                          "grid: {direction.direction: [forward, backward, bidirectional]}\nseeds: [1, 2, 3]\n")
    sweep = load_sweep(sweep_file, root / "study")
    write_plan(sweep)
    for run in sweep.runs:
        make_run_folder(run)
        direction, seed = run.config.direction.direction, run.config.training.seed
        if seed in FINAL[direction]:
            _write_run(run.dir, direction, seed)
    return sweep.dir


def _row(rows, **match):
    return next(r for r in rows if all(r[k] == v for k, v in match.items()))


def test_t_interval_by_hand():
    mean, half, n = t_interval([2.10, 2.16, 2.13])
    assert (n, mean) == (3, pytest.approx(2.13))
    assert half == pytest.approx(T975_2 * 0.03 / math.sqrt(3))  # s = 0.03
    assert t_interval([1.5])[0] == 1.5 and math.isnan(t_interval([1.5])[1])
    assert t_interval([])[2] == 0


def test_groups_and_final_val_bpb(experiment):
    groups = read_experiment(experiment)
    assert [g.label for g in groups] == ["direction=forward", "direction=backward", "direction=bidirectional"]
    assert [[r.seed for r in g.runs] for g in groups] == [[1, 2, 3], [1, 2, 3], [1, 2]]
    rows = summary_table(groups)
    fwd, bwd = _row(rows, way="forward", direction="forward"), _row(rows, way="backward", direction="backward")
    assert (fwd["n"], fwd["mean"], fwd["half"]) == (3, pytest.approx(2.13), pytest.approx(T975_2 * 0.03 / 3 ** 0.5))
    assert (bwd["n"], bwd["mean"], bwd["half"]) == (3, pytest.approx(2.17), pytest.approx(T975_2 * 0.03 / 3 ** 0.5))
    bidi = _row(rows, direction="bidirectional", way="bidirectional")
    assert (bidi["n"], bidi["mean"]) == (2, pytest.approx(2.32))
    assert bidi["half"] == pytest.approx(T975_1 * (0.02 * 2 ** 0.5) / 2 ** 0.5)  # s = √(0.02²·2/1) = 0.0283
    assert _row(rows, direction="bidirectional", way="backward")["mean"] == pytest.approx(2.30)


def test_direction_gaps(experiment):
    gaps = gap_table(read_experiment(experiment))
    between = _row(gaps, kind="between models")
    assert between["label"] == "direction=backward − direction=forward"
    assert between["values"] == {1: pytest.approx(0.04), 2: pytest.approx(0.01), 3: pytest.approx(0.07)}
    assert (between["n"], between["mean"]) == (3, pytest.approx(0.04))
    assert between["half"] == pytest.approx(T975_2 * 0.03 / 3 ** 0.5)
    inside = _row(gaps, kind="one bidirectional model")  # differences 0.03 and 0.05: s = 0.01·√2
    assert (inside["n"], inside["mean"], inside["half"]) == (2, pytest.approx(0.04), pytest.approx(T975_1 * 0.01))


def test_loss_by_position_over_seeds(experiment):
    curves, gaps = position_intervals(read_experiment(experiment))
    mean, half, n = curves[("direction=forward", "forward")]
    np.testing.assert_allclose(mean, CURVE + 0.2, rtol=1e-6)  # seed offsets 0.1, 0.2, 0.3
    np.testing.assert_allclose(half, T975_2 * 0.1 / 3 ** 0.5, rtol=1e-5)
    assert n.tolist() == [3, 3, 3, 3]
    np.testing.assert_allclose(curves[("direction=backward", "backward")][0], CURVE + 0.9, rtol=1e-6)
    gap_mean, gap_half, gap_n = gaps["direction=backward − direction=forward"]  # per seed 0.5 + 0.1·seed
    np.testing.assert_allclose(gap_mean, 0.7, rtol=1e-5)
    np.testing.assert_allclose(gap_half, T975_2 * 0.1 / 3 ** 0.5, rtol=1e-4)
    bidi_mean, bidi_half, bidi_n = curves[("direction=bidirectional", "bidirectional")]  # the same curve twice
    np.testing.assert_allclose(bidi_mean, CURVE + 1.0, rtol=1e-6)
    np.testing.assert_allclose(bidi_half, 0.0, atol=1e-6)
    assert bidi_n.tolist() == [2, 2, 2, 2]


def test_position_ranges(experiment):
    assert position_bins(128, 1) == [(0, 1), (1, 3), (3, 7), (7, 15), (15, 31), (31, 63), (63, 127), (127, 128)]
    assert position_bins(4, 1) == [(0, 1), (1, 3), (3, 4)]
    assert position_bins(8, 2) == [(0, 1), (1, 2), (2, 3), (3, 5), (5, 7), (7, 8)]  # edges 1, 2, 3, 4, 6, 8, 9
    bins = [(0, 1), (1, 3), (3, 4)]
    curves, gaps = position_intervals(read_experiment(experiment), bins=bins)
    mean, half, n = curves[("direction=forward", "forward")]  # CURVE + 0.2 with positions 1 and 2 averaged
    np.testing.assert_allclose(mean, [3.2, 1.7, 1.2], rtol=1e-6)
    np.testing.assert_allclose(half, T975_2 * 0.1 / 3 ** 0.5, rtol=1e-5)
    np.testing.assert_allclose(gaps["direction=backward − direction=forward"][0], [0.7, 0.7, 0.7], rtol=1e-5)


def test_compare_output_replaces_the_logged_curve(experiment, tmp_path):
    groups = read_experiment(experiment)
    run = groups[0].runs[0]
    compare = tmp_path / "compare.json"
    compare.write_text(json.dumps({"models": [{"name": "f1", "run_dir": str(run.dir),
                                               "ways": {"forward": {"per_position": [1.0, None, 3.0]}}}]}))
    groups = read_experiment(experiment, [tmp_path])
    np.testing.assert_array_equal(groups[0].runs[0].position["forward"], [1.0, np.nan, 3.0])
    mean = position_intervals(groups)[0][("direction=forward", "forward")][0]
    assert len(mean) == 3 and mean[0] == pytest.approx((1.0 + CURVE[0] + 0.2 + CURVE[0] + 0.3) / 3)


def test_report_and_plots(experiment, tmp_path):
    out = analyse(experiment, tmp_path / "out")
    for name in ("learning_curves", "loss_by_position", "grad_norms", "direction_gaps"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    half = T975_2 * 0.03 / 3 ** 0.5
    assert f"| direction=forward | forward | forward | 3 | 2.1300 ± {half:.4f} |" in text
    assert f"| direction=backward | backward | backward | 3 | 2.1700 ± {half:.4f} |" in text
    assert f"| direction=backward − direction=forward | between models | 3 | 0.0400 ± {half:.4f} |" in text
    assert "| direction=bidirectional: backward − forward | one bidirectional model | 2 | 0.0400 ± 0.1271 |" in text
    assert "1: 2.1000, 2: 2.1600, 3: 2.1300" in text
    assert f"| direction=forward | 3 | {CURVE[0] + 0.2:.3f} ± {T975_2 * 0.1 / 3 ** 0.5:.3f} |" in text
    assert "![loss by position](loss_by_position.png)" in text
    assert "<table>" in (out / "report.html").read_text()


def test_final_bars_by_two_settings(experiment, tmp_path):
    from revjax.analysis.curves import final_by_setting, plot_final_bars
    from revjax.analysis.experiment import AnalysisError

    table = final_by_setting(read_experiment(experiment), "direction.direction", "logging.hdf5")
    assert list(table) == [("forward", "True"), ("backward", "True"), ("bidirectional", "True")]
    assert table[("forward", "True")] == (pytest.approx(2.13), pytest.approx(T975_2 * 0.03 / 3 ** 0.5), 3)
    assert table[("bidirectional", "True")] == (pytest.approx(2.32), pytest.approx(T975_1 * 0.02), 2)
    png = plot_final_bars(table, tmp_path / "bars.png", rows_label="direction", columns_label="hdf5")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(AnalysisError, match="no setting data.nothing"):
        final_by_setting(read_experiment(experiment), "direction.direction", "data.nothing")



def test_packing_study_script(experiment, tmp_path, capsys, golden_dir):
    import importlib.util

    spec = importlib.util.spec_from_file_location("packing_study", golden_dir.parent.parent / "scripts" /
                                                  "packing_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    assert study.main([str(experiment), "--columns", "logging.hdf5", "--plot", str(tmp_path / "p.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    half = T975_2 * 0.03 / 3 ** 0.5
    assert lines[:3] == ["| direction | True |", "|---|---|", f"| forward | 2.130 ± {half:.3f} (n=3) |"]
    assert (tmp_path / "p.png").is_file()
    assert study.main([str(experiment), "--columns", "data.nothing"]) == 2
    assert "no setting data.nothing" in capsys.readouterr().err


def test_cli(experiment, tmp_path, capsys):
    from revjax.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(experiment), "--out", str(tmp_path / "cli")])
    assert exit_info.value.code == 0
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == [
        "direction_gaps.png", "grad_norms.png", "learning_curves.png", "loss_by_position.png", "report.html",
        "report.md"]
    assert "# Experiment report: study" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tmp_path / "empty")])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("revjax plot: error: ") and "holds no run folder" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(experiment), "--level", "1.5", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code != 0 and "between 0 and 1, got 1.5" in capsys.readouterr().err


def test_without_research_logs(experiment, tmp_path):
    import shutil

    shutil.copytree(experiment, tmp_path / "plain", ignore=shutil.ignore_patterns("research.h5"))
    out = analyse(tmp_path / "plain")
    assert sorted(p.name for p in out.iterdir()) == ["direction_gaps.png", "learning_curves.png", "report.html",
                                                    "report.md"]
    text = (out / "report.md").read_text()
    assert "Loss by context position" not in text and "| 2.1300 | no |" in text


def test_unfinished_runs_are_listed_not_counted(experiment, tmp_path):
    import shutil

    shutil.copytree(experiment, tmp_path / "partial")
    running = next((tmp_path / "partial").glob("direction=forward,seed=3-*"))
    update_status(running, state="running")
    groups = read_experiment(tmp_path / "partial")
    assert [r.seed for r in groups[0].runs] == [1, 2] and [r.seed for r in groups[0].unfinished] == [3]
    assert _row(summary_table(groups), direction="forward")["mean"] == pytest.approx(2.13)  # (2.10 + 2.16) / 2
    assert _row(gap_table(groups), kind="between models")["values"] == {1: pytest.approx(0.04), 2: pytest.approx(0.01)}
    text = (analyse(tmp_path / "partial") / "report.md").read_text()
    assert "from 7 finished runs in 3 groups" in text
    assert "unfinished runs, listed but left out of the numbers: 1." in text
    assert "| direction=forward | 3 | running |" in text
