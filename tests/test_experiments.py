"""Sweeps: expansion (names, hashes, chains), bad files, a tiny local sweep end to end (rerun, failure and retry,
stale and interrupted runs resumed), the SLURM script and the pod command."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from revjax.experiments import SweepError, load_sweep, main
from revjax.experiments.cluster import slurm_script
from revjax.experiments.lineage import read_status
from revjax.experiments.runner import prepare
from tests.tiny_corpus import write_tiny_corpus

REPO = Path(__file__).resolve().parents[1]


def tiny(base: Path, **extra) -> dict:
    """Overrides for a 2-layer, 64-wide, T=32 model trained 3 steps on the fixture's corpus and tokenizer."""
    values = {
        "base_dir": str(base), "tokenizer.vocab_size": 320, "tokenizer.dir": str(base / "tokenizer"),
        "data": {"corpus": "parquet", "dir": str(base / "corpus"), "tokenizer_threads": 1, "slices": 1},
        "model": {"depth": None, "n_layer": 2, "n_embd": 64, "n_head": 2, "sequence_len": 32,
                  "compute_dtype": "float32"},
        "training": {"device_batch_size": 2, "total_batch_tokens": 64, "num_iterations": 3, "eval_every": 100,
                     "eval_tokens": 64, "sample_every": 0},
        "logging.log_every": 1,
    }
    values.update(extra)
    return values


def write_sweep(path: Path, **content) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny corpus and tokenizer, and an environment for the training processes: one CPU device and a shared
    compilation cache (the runs share their shapes, so only the first ones compile)."""
    base = tmp_path_factory.mktemp("sweeps")
    write_tiny_corpus(base)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
        patch.setenv("JAX_COMPILATION_CACHE_DIR", str(base / "jax-cache"))
        patch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        patch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
        yield base


# ---- expansion -----------------------------------------------------------------------------------------------


def test_grid_zip_seeds_and_chain_expand_to_the_expected_runs(tmp_path):
    sweep_file = write_sweep(tmp_path / "s.yaml", name="exp", overrides=tiny(tmp_path),
                             grid={"direction.direction": ["forward", "backward"]},
                             zip={"optimizer.matrix_lr": [0.02, 0.04], "optimizer.embedding_lr": [0.2, 0.4]},
                             seeds=[1, 2],
                             chain=[{"name": "base"},
                                    {"name": "sft", "overrides": {"training.phase": "sft",
                                                                  "training.num_iterations": 2}}])
    sweep = load_sweep(sweep_file)
    cells = [f"direction={d},matrix_lr={m},embedding_lr={e},seed={s}"
             for d in ("forward", "backward") for m, e in ((0.02, 0.2), (0.04, 0.4)) for s in (1, 2)]
    assert [r.name for r in sweep.runs] == [f"{c},phase={p}" for c in cells for p in ("base", "sft")]
    assert sweep.dir == tmp_path / "experiments" / "exp"
    assert len({r.hash for r in sweep.runs}) == len(sweep.runs) == 16
    assert all(len(r.hash) == 8 and r.dir == sweep.dir / f"{r.name}-{r.hash}" for r in sweep.runs)
    for chain in sweep.chains:
        base_run, sft = chain
        assert (base_run.phase, sft.phase, sft.parent) == ("base", "sft", base_run)
        assert sft.config.training.init_from == str(base_run.dir) and base_run.config.training.init_from is None
        assert sft.config.training.phase == "sft" and sft.config.training.num_iterations == 2
    run = sweep.runs[10]  # backward, 0.02/0.2, seed 2, base
    c = run.config
    assert (c.direction.direction, c.optimizer.matrix_lr, c.optimizer.embedding_lr, c.training.seed) == (
        "backward", 0.02, 0.2, 2)
    assert c.checkpoint.dir == str(run.dir) and c.run_name == run.folder and c.base_dir == str(tmp_path)

    # the hash is stable: again, and in another process
    assert [r.hash for r in load_sweep(sweep_file).runs] == [r.hash for r in sweep.runs]
    other = subprocess.run([sys.executable, "-c", "import sys; from revjax.experiments import load_sweep; "
                            "print(' '.join(r.hash for r in load_sweep(sys.argv[1]).runs))", str(sweep_file)],
                           capture_output=True, text=True, check=True)
    assert other.stdout.split() == [r.hash for r in sweep.runs]


def test_hash_follows_what_is_trained_not_where(tmp_path):
    def hashes(**overrides):
        sweep_file = write_sweep(tmp_path / "h.yaml", name="h", overrides=tiny(tmp_path, **overrides),
                                 grid={"direction.direction": ["forward", "backward"]},
                                 chain=[{"name": "base"}, {"name": "mid", "overrides": {"training.phase": "mid"}}])
        return [r.hash for r in load_sweep(sweep_file).runs]

    reference = hashes()
    moved = hashes(base_dir=str(tmp_path / "elsewhere"), **{"logging.progress": False})
    assert moved == reference  # paths and progress bars do not change what is trained
    changed = hashes(**{"optimizer.matrix_lr": 0.03})
    assert all(a != b for a, b in zip(changed, reference))
    # a different parent changes the child's hash even where the child's own config is the same
    parent_only = write_sweep(tmp_path / "p.yaml", name="h", overrides=tiny(tmp_path),
                              grid={"direction.direction": ["forward", "backward"]},
                              chain=[{"name": "base", "overrides": {"training.num_iterations": 4}},
                                     {"name": "mid", "overrides": {"training.phase": "mid",
                                                                   "training.num_iterations": 3}}])
    runs = load_sweep(parent_only).runs
    assert runs[0].hash != reference[0] and runs[1].hash != reference[1]


def test_names_are_short_readable_and_safe(tmp_path):
    sweep_file = write_sweep(tmp_path / "n.yaml", name="n", base=["default"], overrides={"base_dir": str(tmp_path)},
                             grid={"training.seed": [3], "direction.seed": [4],
                                   "tasks.train": [["arithmetic"], ["identity"]], "logging.project": ["a/b c"]})
    sweep = load_sweep(sweep_file)
    assert [r.name for r in sweep.runs] == ["training.seed=3,direction.seed=4,train=v0,project=a_b_c",
                                            "training.seed=3,direction.seed=4,train=v1,project=a_b_c"]
    assert sweep.runs[1].config.tasks.train == ["identity"] and sweep.runs[0].config.logging.project == "a/b c"
    single = load_sweep(write_sweep(tmp_path / "one.yaml", name="one", overrides={"base_dir": str(tmp_path)}))
    assert [r.name for r in single.runs] == ["run"]


@pytest.mark.parametrize("content, message", [
    ({"name": "x", "grids": {}}, r"unknown key 'grids' \(did you mean 'grid'\?\)"),
    ({"name": "a/b"}, r"'name' must be a plain folder name"),
    ({"name": "x", "zip": {"training.seed": [1, 2], "optimizer.matrix_lr": [0.1]}}, r"same length"),
    ({"name": "x", "grid": {"training.seed": 3}}, r"grid.training.seed must be a non-empty list"),
    ({"name": "x", "grid": {"training.seed": [1]}, "seeds": [1]}, r"'training.seed' is varied twice"),
    ({"name": "x", "seeds": ["one"]}, r"'seeds' must be a list of integers"),
    ({"name": "x", "overrides": {"training.sed": 1}}, r"run run: unknown key 'training.sed'"),
    ({"name": "x", "grid": {"model.depth": [0]}}, r"run depth=0: model.depth=0 must be at least 1"),
    ({"name": "x", "base": ["no-such-config"]}, r"names the config 'no-such-config'"),
    ({"name": "x", "chain": [{"name": "base"}, {"overrides": {}}]}, r"chain\[1\] needs a 'name'"),
    ({"name": "x", "grid": {"training.seed": [1, 1.0]}}, r"runs seed=1 and seed=1.0 train the same config"),
])
def test_bad_sweep_files_are_refused_in_one_sentence(tmp_path, content, message):
    content.setdefault("overrides", {})
    content["overrides"].setdefault("base_dir", str(tmp_path))
    with pytest.raises(SweepError, match=message) as err:
        load_sweep(write_sweep(tmp_path / "bad.yaml", **content))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"sweep file {tmp_path / 'bad.yaml'}: ")


def test_a_missing_sweep_file_is_one_line_on_stderr(tmp_path, capsys):
    assert main([str(tmp_path / "nothing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("revjax sweep: error: sweep file") and err.count("\n") == 1


# ---- a tiny local sweep, end to end ----------------------------------------------------------------------------


def statuses(sweep) -> dict[str, dict]:
    return {r.name: read_status(r.dir) for r in sweep.runs}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def finished(base):
    """Two runs (forward, backward), one after the other (the second reuses the first one's compilations)."""
    sweep_file = write_sweep(base / "directions.yaml", name="directions", overrides=tiny(base),
                             grid={"direction.direction": ["forward", "backward"]})
    assert main([str(sweep_file)]) == 0
    return sweep_file


def test_local_sweep_trains_every_run_into_its_folder(finished, capsys):
    sweep = load_sweep(finished)
    for run in sweep.runs:
        status = read_status(run.dir)
        assert status["state"] == "finished" and status["attempts"] == 1 and status["exit_code"] == 0
        assert status["step"] == 3 and 0 < status["val_bpb"] < 10
        assert json.loads((run.dir / "evaluations" / "training.json").read_text())["val_bpb"] == status["val_bpb"]
        assert yaml.safe_load((run.dir / "config.yaml").read_text())["checkpoint"]["dir"] == str(run.dir)
        assert (run.dir / "3").is_dir() and (run.dir / "metrics.jsonl").exists()  # the checkpoints live here
        assert "finished at step 3" in (run.dir / "log.txt").read_text()
    plan = json.loads((sweep.dir / "runs.json").read_text())
    assert plan["chains"] == [[r.folder] for r in sweep.runs]
    assert (sweep.dir / "sweep.yaml").read_text() == finished.read_text()
    capsys.readouterr()
    assert main([str(finished), "--status"]) == 0
    table = capsys.readouterr().out
    assert all(re.search(rf"{re.escape(r.folder)} +finished +3/3 +\d\.\d{{4}} +1 ", table) for r in sweep.runs)
    assert table.rstrip().endswith("2 finished")


def test_running_the_sweep_again_is_a_no_op(finished, capsys):
    sweep = load_sweep(finished)
    before = {r.name: ((r.dir / "status.json").read_bytes(), (r.dir / "log.txt").read_bytes()) for r in sweep.runs}
    assert main([str(finished)]) == 0
    assert "nothing to train: all 2 runs finished" in capsys.readouterr().out
    assert {r.name: ((r.dir / "status.json").read_bytes(), (r.dir / "log.txt").read_bytes())
            for r in sweep.runs} == before


def test_a_failed_run_is_recorded_and_retried(base, finished, capsys):
    missing = base / "tokenizer-later"
    sweep_file = write_sweep(base / "failing.yaml", name="failing",
                             overrides=tiny(base, **{"tokenizer.dir": str(missing)}))
    (run,) = load_sweep(sweep_file).runs
    assert main([str(sweep_file)]) == 1
    status = read_status(run.dir)
    assert status["state"] == "failed" and status["attempts"] == 1 and status["exit_code"] == 1
    assert any("revjax.train: error:" in line and "tokenizer" in line for line in status["tail"])
    assert "1 of 1 runs did not finish (1 failed)" in capsys.readouterr().err

    assert main([str(sweep_file)]) == 1  # not retried unless asked
    assert read_status(run.dir) == status
    assert "--retry-failed trains them again" in capsys.readouterr().err

    shutil.copytree(base / "tokenizer", missing)  # the cause is fixed; the retry succeeds
    assert main([str(sweep_file), "--retry-failed"]) == 0
    status = read_status(run.dir)
    assert (status["state"], status["attempts"], status["tail"]) == ("finished", 2, None)
    assert (run.dir / "log.txt").read_text().count("=== attempt") == 2


def test_stale_and_interrupted_runs_are_resumed_two_at_a_time(finished, capsys):
    """A run marked running by a runner that died and one marked interrupted both continue from their last
    checkpoint, in parallel where two cores are free."""
    sweep = load_sweep(finished)
    stale, stopped = sweep.runs
    status = read_status(stale.dir)
    (stale.dir / "status.json").write_text(json.dumps({**status, "state": "running", "pid": dead_pid()}))
    status = read_status(stopped.dir)
    (stopped.dir / "status.json").write_text(json.dumps({**status, "state": "interrupted", "exit_code": 143}))
    assert main([str(finished), "--status"]) == 0
    assert re.search(rf"{re.escape(stale.folder)} +stale .*its process \d+ has ended", capsys.readouterr().out)
    assert main([str(finished), "--parallel", str(min(2, len(os.sched_getaffinity(0))))]) == 0
    for run in sweep.runs:
        status = read_status(run.dir)
        assert (status["state"], status["attempts"], status["exit_code"]) == ("finished", 2, 0)
        assert f"resuming {run.dir} from step 3" in (run.dir / "log.txt").read_text()


def test_an_interrupted_run_is_recorded_and_resumed(base, finished):
    sweep_file = write_sweep(base / "long.yaml", name="long", overrides=tiny(base, **{
        "training.num_iterations": 300, "checkpoint.save_every": 1000, "logging.progress": False}))
    (run,) = load_sweep(sweep_file).runs
    proc = subprocess.Popen([sys.executable, "-m", "revjax.experiments", str(sweep_file)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics, deadline = run.dir / "metrics.jsonl", time.time() + 120
    while not (metrics.exists() and '"loss"' in metrics.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to the sweep, which passes it on to the training
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    status = read_status(run.dir)
    assert (status["state"], status["signal"], status["exit_code"]) == ("interrupted", "SIGTERM", 143), out
    saved = [int(p.name) for p in run.dir.iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 0 < saved[0] < 300
    assert main([str(sweep_file)]) == 0
    status = read_status(run.dir)
    assert (status["state"], status["attempts"], status["step"]) == ("finished", 2, 300)
    assert f"resuming {run.dir} from step {saved[0]}" in (run.dir / "log.txt").read_text()


# ---- SLURM and pods ------------------------------------------------------------------------------------------


def case_arms(script: str) -> dict[int, tuple[str, list[str]]]:
    """task id → (the overrides comment, the run folders) of a generated array script."""
    arms, lines = {}, script.splitlines()
    for i, line in enumerate(lines):
        head = line.strip()
        if head[:1].isdigit() and ")  # " in head:
            task, comment = head.split(")  # ", 1)
            runs = lines[i + 1].strip()
            assert runs.startswith("RUNS=(") and runs.endswith(")")
            arms[int(task)] = (comment, runs[len("RUNS=("):-1].split())
    return arms


def test_slurm_array_script_holds_each_tasks_runs(tmp_path, capsys):
    sweep_file = write_sweep(
        tmp_path / "cluster.yaml", name="cluster", overrides=tiny(tmp_path),
        grid={"direction.direction": ["forward", "backward", "bidirectional"]}, seeds=[1, 2],
        chain=[{"name": "base"}, {"name": "sft", "overrides": {"training.phase": "sft"}}],
        slurm={"partition": "gpu", "time": "01:00:00", "gpus_per_node": 8, "max_parallel": 2,
               "setup": ["source .venv/bin/activate"]})
    assert main([str(sweep_file), "--backend", "slurm", "--dry-run"]) == 0
    script = capsys.readouterr().out
    sweep = load_sweep(sweep_file)
    path = sweep.dir / "slurm" / "cluster.sbatch"
    assert path.read_text() == script
    # a dry run writes its script only: the run folders come with the real submission (or prepare)
    assert sorted(p.name for p in sweep.dir.iterdir()) == ["slurm"]
    prepare(sweep)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    for option in ("--array=0-5%2", "--nodes=1", "--partition=gpu", "--time=01:00:00", "--gpus-per-node=8"):
        assert f"#SBATCH {option}\n" in script
    arms = case_arms(script)
    assert sorted(arms) == list(range(6))
    for task, (comment, runs) in arms.items():
        direction, seed = ("forward", "backward", "bidirectional")[task // 2], task % 2 + 1
        assert comment == f'direction.direction="{direction}" training.seed={seed}'
        assert [Path(r).name for r in runs] == [r.folder for r in sweep.chains[task]]
        for phase, run_dir in zip(("base", "sft"), runs):
            config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
            assert (config["direction"]["direction"], config["training"]["seed"]) == (direction, seed)
            assert config["training"]["phase"] == phase
    assert "REVJAX_COORDINATOR" not in script and script.rstrip().endswith(
        f'exec {sys.executable} -m revjax.experiments.execute "${{RUNS[@]}}"')

    # lineage: the sft run links to its base run, and will not train before it
    base_run, sft = sweep.chains[0]
    assert os.readlink(sft.dir / "parent") == f"../{base_run.folder}"
    link = json.loads((sft.dir / "parent_link.json").read_text())
    assert link == {"parent_experiment_id": base_run.folder, "parent_checkpoint_path": str(base_run.dir),
                    "parent_phase": "base", "parent_hash": base_run.hash, "inheritance_chain": [base_run.folder]}
    done = subprocess.run([sys.executable, "-m", "revjax.experiments.execute", str(sft.dir)], capture_output=True,
                          text=True)
    assert done.returncode == 1 and "1 of 1 runs did not finish (1 failed)" in done.stderr
    assert read_status(sft.dir)["tail"] == [f"its parent run {base_run.folder} is pending, not finished; run the "
                                            "sweep again to train the parent first"]


def test_multi_node_slurm_script_runs_one_process_per_node(finished, base, tmp_path):
    """The script itself, with stand-ins for srun and scontrol: every process gets the coordinator, the count and
    its id; on finished runs the task ends at once."""
    sweep = load_sweep(finished)
    sweep.slurm = {"nodes": 2, "port": 12000}
    script = tmp_path / "multi.sbatch"
    script.write_text(slurm_script(sweep, sweep.chains, retry_failed=True))
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert 'scontrol show hostnames "$SLURM_NODELIST" | head -n 1' in text
    assert "--hosts 2 --retry-failed" in text
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho node7; echo node8\n")
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n'
                                  'env | grep ^REVJAX_ | sort > "$ENV_OUT"; SLURM_PROCID=0 exec "$@"\n')
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "1",
           "SLURM_NODELIST": "node[7-8]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "20005",
           "ENV_OUT": str(tmp_path / "env.txt")}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "env.txt").read_text().splitlines() == [
        "REVJAX_COORDINATOR=node7:12005", "REVJAX_NUM_PROCESSES=2"]


def test_pod_command_is_the_same_on_every_host(finished, capsys):
    assert main([str(finished), "--backend", "pod"]) == 0
    printed = capsys.readouterr().out.splitlines()
    sweep = load_sweep(finished)
    command = f"cd {Path.cwd()} && exec {sys.executable} -m revjax.experiments.execute --experiment {sweep.dir}"
    assert printed[-1] == command and printed[0].startswith("# experiment directions: run this same command")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr  # every run is finished: nothing to do
    assert main([str(finished), "--backend", "pod", "--run"]) == 0

    pod_file = write_sweep(finished.parent / "pod.yaml", **{**yaml.safe_load(finished.read_text()),
                                                            "pod": {"hosts": 4, "workdir": "/checkout"}})
    assert main([str(pod_file), "--backend", "pod"]) == 0
    printed = capsys.readouterr().out
    assert "REVJAX_NUM_PROCESSES=4 and REVJAX_PROCESS_ID=<its index 0..3>" in printed
    hosts = f"--experiment {sweep.dir} --hosts 4"
    assert printed.splitlines()[-1] == f"cd /checkout && exec {sys.executable} -m revjax.experiments.execute {hosts}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVJAX_")}
    done = subprocess.run([sys.executable, "-m", "revjax.experiments.execute", *hosts.split()], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "needs REVJAX_COORDINATOR, REVJAX_NUM_PROCESSES, REVJAX_PROCESS_ID" in done.stderr


def test_the_shipped_example_sweep_expands(tmp_path):
    from revjax.config_args import find_config
    from revjax.experiments.spec import load_sweep

    sweep = load_sweep(find_config("experiments/directions"), experiment_dir=tmp_path)
    directions = sorted({run.config.direction.direction for run in sweep.runs})
    assert directions == ["backward", "bidirectional", "forward"] and len(sweep.runs) == 6


# ---- what reaches a script: quoted or refused ------------------------------------------------------------------

NEWLINE = "x\necho INJECTED"


def script_sweep(tmp_path: Path, **content) -> Path:
    """A one-run sweep (nothing is trained) whose experiment folder is tmp_path/exp unless content says otherwise."""
    content = {"name": "inj", "overrides": {"base_dir": str(tmp_path)}, "dir": str(tmp_path / "exp"), **content}
    return write_sweep(tmp_path / "inj.yaml", **content)


def injected(root: Path) -> list[Path]:
    """The files an injected ``touch INJECTED`` would have made."""
    return [p for p in root.rglob("*") if p.name in ("INJECTED", "INJECTED2")]


@pytest.mark.parametrize("backend, content, name", [
    *[("slurm", {"slurm": {key: NEWLINE}}, f"slurm.{key}")
      for key in ("job_name", "partition", "account", "qos", "time", "mem", "python", "workdir")],
    ("slurm", {"slurm": {"partition": "gpu\x00"}}, "slurm.partition"),
    ("slurm", {"slurm": {"time": "01:00:00\r"}}, "slurm.time"),
    ("slurm", {"slurm": {"sbatch": ["--exclusive", NEWLINE]}}, r"slurm.sbatch\[1\]"),
    ("slurm", {"slurm": {"setup": ["module load cuda", NEWLINE]}}, r"slurm.setup\[1\]"),
    ("slurm", {"slurm": {"setup": "source .venv/bin/activate\x00"}}, "slurm.setup"),
    ("pod", {"pod": {"setup": [NEWLINE]}}, r"pod.setup\[0\]"),
    ("pod", {"pod": {"python": NEWLINE}}, "pod.python"),
    ("pod", {"pod": {"workdir": NEWLINE}}, "pod.workdir"),
    ("slurm", {"dir": NEWLINE}, "'dir'"),
    ("pod", {"dir": "exp\r"}, "'dir'"),
])
def test_a_control_character_in_a_value_a_script_holds_is_refused_naming_the_key(tmp_path, capsys, backend, content,
                                                                                 name):
    sweep_file = script_sweep(tmp_path, **content)
    assert main([str(sweep_file), "--backend", backend, "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert "INJECTED" not in captured.out and captured.err.count("\n") == 1
    assert re.search(rf"{name}=.* holds a control character \(a newline, carriage return, NUL or the like\)",
                     captured.err), captured.err
    assert not (tmp_path / "exp").exists()  # refused before anything was written


def test_an_experiment_folder_given_with_a_newline_is_refused(tmp_path, capsys):
    sweep_file = script_sweep(tmp_path)
    assert main([str(sweep_file), "--dir", str(tmp_path / NEWLINE), "--backend", "slurm", "--dry-run"]) == 2
    assert "--dir='" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"base_dir": "/tmp/a\nb"}, r"the experiment folder '/tmp/a\\nb/experiments/inj' \(from base_dir\) holds a control"),
    ({"base_dir": "/tmp/a\x00b"}, r"the experiment folder '/tmp/a\\x00b/experiments/inj' \(from base_dir\) holds a"),
    ({"data.dir": "/tmp/a\x00b"}, r"run run: a configured folder cannot be used \(embedded null byte\)"),
])
def test_a_control_character_in_a_configured_folder_is_refused(tmp_path, overrides, message):
    sweep_file = write_sweep(tmp_path / "inj.yaml", name="inj", overrides=overrides)
    with pytest.raises(SweepError, match=message):
        load_sweep(sweep_file)


@pytest.mark.parametrize("slurm, name, why", [
    ({"job_name": "my job"}, "slurm.job_name", "one word"),
    ({"partition": "gpu --uid=0"}, "slurm.partition", "one word"),
    ({"account": "a'b"}, "slurm.account", "one word"),
    ({"qos": 'q"'}, "slurm.qos", "one word"),
    ({"mem": "4G#comment"}, "slurm.mem", "one word"),
    ({"time": "1:00:00\\"}, "slurm.time", "one word"),
    ({"partition": ""}, "slurm.partition", "one word"),
    ({"sbatch": ["--exclusive --output=/etc/x"]}, r"slurm.sbatch\[0\]", "one word"),
    ({"sbatch": ["exclusive"]}, r"slurm.sbatch\[0\]", "must be an sbatch option"),
])
def test_sbatch_line_values_must_be_one_word(tmp_path, capsys, slurm, name, why):
    """SLURM splits '#SBATCH' lines itself: a space would add an option of the value's choosing."""
    assert main([str(script_sweep(tmp_path, slurm=slurm)), "--backend", "slurm", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"{name}=.* {why}", err) and err.count("\n") == 1, err
    assert not (tmp_path / "exp").exists()


def test_an_experiment_folder_with_a_space_cannot_go_into_an_sbatch_line(tmp_path, capsys):
    assert main([str(script_sweep(tmp_path, dir=str(tmp_path / "my exp"))), "--backend", "slurm", "--dry-run"]) == 2
    assert "holds a space, quote, backslash or '#'" in capsys.readouterr().err
    assert not (tmp_path / "my exp").exists()


WEIRD = "it's \"odd\" $(touch INJECTED) `touch INJECTED2`"


def recorder(path: Path) -> Path:
    """A stand-in program that writes its working folder and its arguments, one a line, to $ARGS_OUT."""
    path.write_text('#!/bin/bash\n{ pwd; printf "%s\\n" "$@"; } > "$ARGS_OUT"\necho 4242\n')
    path.chmod(0o755)
    return path


def run_printed(command: str, tmp_path: Path, bin_dir: Path) -> list[str]:
    """Run a command line the sweep printed as a user would paste it, with stand-ins on PATH; returns what the
    stand-in received (its working folder, then its arguments)."""
    out = tmp_path / "args.txt"
    out.unlink(missing_ok=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ARGS_OUT": str(out), "SLURM_ARRAY_TASK_ID": "0"}
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out.read_text().splitlines()


def test_slurm_script_and_hints_keep_odd_values_one_word(tmp_path, capsys, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "revjax"):
        recorder(bin_dir / tool)
    python = recorder(tmp_path / f"py {WEIRD}")
    workdir = tmp_path / f"work {WEIRD}"
    workdir.mkdir()
    experiment = tmp_path / "exp$(touch${IFS}INJECTED)"  # no space: it also goes into '#SBATCH --output'
    sweep_file = script_sweep(tmp_path, dir=str(experiment),
                              slurm={"python": str(python), "workdir": str(workdir), "job_name": "j$(id)"})
    sweep_file = sweep_file.rename(tmp_path / "s$(touch${IFS}INJECTED).yaml")
    assert main([str(sweep_file), "--backend", "slurm", "--dry-run"]) == 0
    captured = capsys.readouterr()
    run_dir = load_sweep(sweep_file).runs[0].dir
    script = experiment / "slurm" / "inj.sbatch"
    assert captured.out == script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # the script itself, run as array task 0: cd and exec get the values whole, nothing else runs
    received = run_printed(f"bash {shlex.quote(str(script))}", tmp_path, bin_dir)
    assert received == [str(workdir), "-m", "revjax.experiments.execute", str(run_dir)]
    # the printed hint, pasted into a shell
    hint = captured.err.split("not submitted (--dry-run): ", 1)[1].strip()
    assert run_printed(hint, tmp_path, bin_dir)[1:] == [str(script)]
    # submitting through the stand-in sbatch, then the printed follow-up command
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("ARGS_OUT", str(tmp_path / "submit.txt"))
    assert main([str(sweep_file), "--backend", "slurm"]) == 0
    follow = capsys.readouterr().out.split("follow them with ", 1)[1].strip()
    assert run_printed(follow, tmp_path, bin_dir)[1:] == ["sweep", str(sweep_file), "--status"]
    assert read_status(run_dir)["slurm_job"] == "4242_0"
    assert injected(tmp_path) == []


def test_pod_command_and_its_hint_keep_odd_values_one_word(tmp_path, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = recorder(tmp_path / f"py {WEIRD}")
    workdir = tmp_path / f"work {WEIRD}"
    workdir.mkdir()
    experiment = tmp_path / f"exp {WEIRD}"
    sweep_file = script_sweep(tmp_path, dir=str(experiment),
                              pod={"hosts": 2, "python": str(python), "workdir": str(workdir),
                                   "setup": ["export FROM_SETUP=yes"]})
    assert main([str(sweep_file), "--backend", "pod"]) == 0
    printed = capsys.readouterr().out.splitlines()
    command = printed[-1]
    received = run_printed(command, tmp_path, bin_dir)
    assert received == [str(workdir), "-m", "revjax.experiments.execute", "--experiment", str(experiment),
                        "--hosts", "2"]
    # the gcloud example hands the same command over as one word
    hint = next(line for line in printed if "--command=" in line)
    word = hint.split("--command=", 1)[1].removesuffix(");")
    echoed = subprocess.run(["bash", "-c", f"printf %s {word}"], cwd=tmp_path / "cwd", capture_output=True,
                            text=True, timeout=60)
    assert echoed.stdout == command
    assert injected(tmp_path) == []


# ---- sweep files: one YAML loader ------------------------------------------------------------------------------


def test_a_sweep_file_setting_a_key_twice_is_refused(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text(f"name: dup\noverrides:\n  base_dir: {tmp_path}\ngrid:\n  training.seed: [1, 2]\n"
                    "grid:\n  training.seed: [3]\n")
    assert main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"sweep file {path} sets the key 'grid' twice, on lines 4 and 6; keep one of them" in err
    assert err.count("\n") == 1


def test_an_alias_bomb_in_a_sweep_file_is_refused_at_once(tmp_path, capsys):
    from tests.helpers import laughs

    path = tmp_path / "bomb.yaml"
    path.write_text(f"name: bomb\noverrides:\n  base_dir: {tmp_path}\nzip:\n  logging.project: {laughs(6)}\n")
    started = time.perf_counter()
    assert main([str(path), "--dry-run"]) == 2
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert f"sweep file {path} expands to more than 100,000 values through its aliases" in err
    assert err.count("\n") == 1 and len(err) < 300 and elapsed < 1


# ---- status.json that is not a status ----------------------------------------------------------------------------


@pytest.mark.parametrize("content, problem", [
    ("[1, 2]\n", "holds a JSON list, not an object"),
    ('"finished"\n', "holds a JSON string, not an object"),
    ('{"state": "fin', "cannot be read"),
    ('{"state": "pending", "attempts": "two"}\n', r"has attempts='two' of the wrong type \(str, not int\)"),
])
def test_a_broken_status_file_is_one_sentence_for_every_reader(tmp_path, capsys, content, problem):
    from revjax.analysis.experiment import AnalysisError, read_experiment
    from revjax.experiments.execute import main as execute_main

    sweep_file = script_sweep(tmp_path)
    prepare(load_sweep(sweep_file))  # writes the run folder (a dry run writes nothing)
    run = load_sweep(sweep_file).runs[0]
    status = run.dir / "status.json"
    status.write_text(content)
    capsys.readouterr()
    for call in (lambda: main([str(sweep_file), "--status"]), lambda: main([str(sweep_file)]),
                 lambda: main([str(sweep_file), "--backend", "slurm", "--dry-run"]),
                 lambda: execute_main([str(run.dir)])):
        assert call() == 1
        err = capsys.readouterr().err
        assert re.search(f"the status file {re.escape(str(status))} {problem}.*; delete it to mark the run pending",
                         err) and err.count("\n") == 1, err
    if "wrong type" not in problem:  # the analysis reads only the state and name
        with pytest.raises(AnalysisError, match=f"the status file {re.escape(str(status))} {problem}.*; delete it"):
            read_experiment(run.dir.parent)


def test_an_experiment_is_found_by_name_and_a_local_dry_run_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REVJAX_BASE_DIR", str(tmp_path))  # the base_dir tiny() sets
    (tmp_path / "elsewhere").mkdir()
    sweep_file = write_sweep(tmp_path / "elsewhere" / "named.yaml", name="named", overrides=tiny(tmp_path),
                             grid={"direction.direction": ["forward", "backward"]})
    experiment = tmp_path / "experiments" / "named"
    assert main([str(sweep_file), "--dry-run"]) == 0
    assert "2 to train" in capsys.readouterr().out and not experiment.exists()
    assert main(["named", "--status"]) == 2  # not run yet: nothing to find by name
    prepare(load_sweep(sweep_file))
    assert main(["named", "--status"]) == 0
    assert f"experiment named: {experiment}" in capsys.readouterr().out
    sweep_file.unlink()  # the copy in the experiment folder stands in for a moved sweep file
    assert main(["named", "--status"]) == 0
    assert "pending" in capsys.readouterr().out
