"""Fault drill: every way a run folder could lose data, injected at tiny size, with the verdict "data lost".

Usage: python scripts/fault_drill.py [--work DIR] [--only CASE …]

Each case trains a tiny model (2 layers, d 64, T 32) in subprocesses of ``python -m revjax.train``, injects one
fault (kill -9 at several moments, SIGTERM, two trainings on one folder, damaged checkpoint files, a torn metrics
log, a full disk, a clobbering tokenizer, Ctrl-C at start-up, ``import --force`` over a run being trained,
``export --force`` over someone's folder and over its own source, two first runs racing for the tokenizer, a step
folder or a lock file that is a symbolic link), then checks what survived: every checkpoint step
that was committed before the fault is still there intact (or moved into ``set-aside/``, never deleted), and a
continued run reproduces the uninterrupted run's losses. It prints one table row per case: what happened, and
whether data was lost (it must say "no" everywhere). ``tests/test_faults.py`` runs the same cases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY, KEEP = 6, 2, 2  # KEEP: checkpoint.keep's default
WORDS = ("in the beginning god created heaven and earth and the earth was without form and void and darkness was "
         "upon the face of the deep to be or not to be that is the question whether tis nobler").split()


@dataclass
class Outcome:
    case: str
    happened: str
    lost: bool


def step_digest(step_dir: Path) -> str:
    """A hash of every file in a checkpoint step folder (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(step_dir)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class Drill:
    """A work folder with a tiny corpus and tokenizer, and helpers to run and inspect training runs in it."""

    def __init__(self, work: Path):
        self.work = work
        if not (work / "tokenizer").is_dir():
            from revjax.data.shards import write_shards
            from revjax.tokenizer import train_tokenizer

            docs = [" ".join(WORDS[(i * 5 + 3 * j) % len(WORDS)] for j in range(30 + i % 17)) for i in range(300)]
            write_shards(docs, work / "corpus", docs_per_shard=150, row_group_size=16)
            train_tokenizer(docs, work / "tokenizer", 320, progress=False)
        self._reference: dict[int, float] | None = None

    def overrides(self, run: str, **extra) -> list[str]:
        values = {
            "base_dir": self.work, "run_name": run, "data.corpus": "parquet", "data.dir": self.work / "corpus",
            "tokenizer.vocab_size": 320, "model.depth": None, "model.n_layer": 2, "model.n_embd": 64,
            "model.n_head": 2, "model.sequence_len": 32, "model.compute_dtype": "float32",
            "training.device_batch_size": 2, "training.total_batch_tokens": 512, "training.num_iterations": STEPS,
            "training.eval_every": STEPS, "training.eval_tokens": 256, "training.sample_every": 0,
            "checkpoint.save_every": SAVE_EVERY, "logging.log_every": 1,
            "logging.progress": False, "data.tokenizer_threads": 1, "optimizer.ns_dtype": "float32",
        }
        values.update(extra)
        return [f"{k}={'null' if v is None else v}" for k, v in values.items()]

    def run_dir(self, run: str) -> Path:
        return self.work / "checkpoints" / run

    def fresh(self, run: str) -> str:
        """``run``, with any folder an earlier drill left for it removed."""
        shutil.rmtree(self.run_dir(run), ignore_errors=True)
        return run

    def start(self, run: str, *, limit_file_bytes: int | None = None, **extra) -> subprocess.Popen:
        def limit() -> None:
            if limit_file_bytes is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

        env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu"}
        env.pop("XLA_FLAGS", None)
        return subprocess.Popen([sys.executable, "-m", "revjax.train", *self.overrides(run, **extra)], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=limit)

    def run(self, run: str, timeout: float = 300, **kwargs) -> tuple[int, str, str]:
        proc = self.start(run, **kwargs)
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err

    def losses(self, run: str) -> dict[int, float]:
        path = self.run_dir(run) / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    def reference(self) -> dict[int, float]:
        """The losses of an uninterrupted run (trained once)."""
        if self._reference is None:
            if not (self.run_dir("reference") / str(STEPS)).is_dir():
                code, out, err = self.run("reference")
                if code:
                    raise RuntimeError(f"the reference run failed:\n{out}\n{err}")
            self._reference = self.losses("reference")
        return self._reference

    def steps(self, run: str) -> dict[int, str]:
        """Committed step folders of ``run`` → digest of their files."""
        run_dir = self.run_dir(run)
        if not run_dir.is_dir():
            return {}
        return {int(p.name): step_digest(p) for p in run_dir.iterdir() if p.is_dir() and p.name.isdigit()}

    def set_aside(self, run: str) -> dict[int, str]:
        """Step folders moved into set-aside/ → digest."""
        aside = self.run_dir(run) / "set-aside"
        if not aside.is_dir():
            return {}
        return {int(p.name.split("-")[0]): step_digest(p) for p in aside.iterdir() if p.is_dir()}

    def kept(self, run: str, before: dict[int, str]) -> bool:
        """Every step in ``before`` still exists with the same bytes, in place or set aside, unless keep-N pruned it
        after ``KEEP`` newer steps had committed."""
        now, aside = self.steps(run), self.set_aside(run)
        return all(now.get(step) == digest or aside.get(step) == digest or sum(s > step for s in now) >= KEEP
                   for step, digest in before.items())

    def exact(self, run: str) -> bool:
        """The run's logged losses equal the uninterrupted run's, step for step, all steps present."""
        losses, reference = self.losses(run), self.reference()
        return sorted(losses) == sorted(reference) and all(losses[s] == reference[s] for s in reference)

    def wait_for(self, predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while not predicate():
            if proc.poll() is not None:
                raise RuntimeError(f"training ended before the fault could be injected:\n{proc.communicate()}")
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError("training did not reach the fault point in time")
            time.sleep(0.005)


# ---- cases -------------------------------------------------------------------------------------------------


def kill_during_startup(d: Drill) -> Outcome:
    run = d.fresh("kill-startup")
    proc = d.start(run)
    time.sleep(2.0)  # importing jax, building the mesh: nothing is written yet
    proc.kill()
    proc.wait()
    code, _, err = d.run(run)
    return Outcome("kill -9 during start-up", f"rerun exit {code}, losses exact: {d.exact(run)}",
                   lost=code != 0 or not d.exact(run))


def kill_after_a_save(d: Drill) -> Outcome:
    run = d.fresh("kill-mid")
    proc = d.start(run)
    d.wait_for(lambda: (d.run_dir(run) / str(SAVE_EVERY) / "commit_success.txt").exists(), proc)
    proc.kill()
    proc.wait()
    before = d.steps(run)
    code, _, _ = d.run(run)
    kept = d.kept(run, before) and SAVE_EVERY in before
    return Outcome("kill -9 after a checkpoint", f"steps {sorted(before)} before; rerun exit {code}, resumed "
                   f"exactly: {d.exact(run)}", lost=code != 0 or not kept or not d.exact(run))


def kill_during_a_save(d: Drill) -> Outcome:
    run = d.fresh("kill-save")
    proc = d.start(run)
    run_dir = d.run_dir(run)
    d.wait_for(lambda: run_dir.is_dir() and any(".orbax-checkpoint-tmp" in p.name for p in run_dir.iterdir()), proc)
    proc.kill()
    proc.wait()
    before = d.steps(run)
    code, _, _ = d.run(run)
    return Outcome("kill -9 while a checkpoint is written", f"committed steps {sorted(before)}; rerun exit {code}, "
                   f"losses exact: {d.exact(run)}", lost=code != 0 or not d.kept(run, before) or not d.exact(run))


def sigterm_saves(d: Drill) -> Outcome:
    run = d.fresh("sigterm")
    proc = d.start(run)
    d.wait_for(lambda: 1 in d.losses(run) if (d.run_dir(run) / "metrics.jsonl").exists() else False, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    first_code = proc.returncode
    before = d.steps(run)
    code, _, _ = d.run(run)
    ok = first_code == 128 + signal.SIGTERM and code == 0 and d.kept(run, before) and d.exact(run)
    return Outcome("SIGTERM", f"exit {first_code}, saved steps {sorted(before)}; resumed exactly: {d.exact(run)}",
                   lost=not ok)


def rerun_finished(d: Drill) -> Outcome:
    d.reference()
    before = d.steps("reference")
    proc = d.start("reference")
    time.sleep(8.0)  # somewhere in start-up, restore or the final evaluation: nothing may be rewritten
    proc.kill()
    proc.wait()
    code, out, _ = d.run("reference")
    after = d.steps("reference")
    return Outcome("rerun a finished run, killed midway, then again",
                   f"steps unchanged: {after == before}; exit {code}", lost=after != before or code != 0)


def concurrent_start(d: Drill) -> Outcome:
    run = d.fresh("concurrent")
    first = d.start(run)
    d.wait_for(lambda: (d.run_dir(run) / ".lock").exists() and (d.run_dir(run) / ".lock").read_text().strip(),
               first)
    first.send_signal(signal.SIGSTOP)  # holds the lock, however fast it would otherwise finish
    try:
        code, _, err = d.run(run)
    finally:
        first.send_signal(signal.SIGCONT)
    first_out, _ = first.communicate(timeout=300)
    refused = code == 1 and "is in use by pid" in err
    return Outcome("two trainings on one run folder", f"second exit {code}: {err.strip()[:90]}…; first exit "
                   f"{first.returncode}, exact: {d.exact(run)}", lost=not refused or first.returncode != 0
                   or not d.exact(run))


def _damaged_copy(d: Drill, name: str, damage: Callable[[Path], None], steps: tuple[int, ...]) -> Path:
    d.reference()
    run_dir = d.run_dir(name)
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(d.run_dir("reference"), run_dir)
    (run_dir / ".lock").unlink(missing_ok=True)
    for step in steps:
        damage(run_dir / str(step))
    return run_dir


def garble_metadata(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").write_text('{"step": 6, "dir')


def truncate_arrays(step_dir: Path) -> None:
    for f in (step_dir / "state").rglob("d/*"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def flip_a_byte(step_dir: Path) -> None:
    biggest = max((step_dir / "state").rglob("d/*"), key=lambda f: f.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x10
    biggest.write_bytes(bytes(data))


def damaged_newest(d: Drill, label: str, damage: Callable[[Path], None]) -> Outcome:
    name = "damaged-" + label.replace(" ", "-")
    run_dir = _damaged_copy(d, name, damage, (STEPS,))
    before = d.steps(name)
    code, out, err = d.run(name, **{"training.num_iterations": STEPS})
    resumed = f"resuming {run_dir} from step {STEPS - SAVE_EVERY}" in out or f"from step {STEPS - SAVE_EVERY}" in out
    warned = f"checkpoint step {STEPS}" in err
    ok = code == 0 and resumed and warned and d.kept(name, before) and d.exact(name)
    return Outcome(f"newest step: {label}", f"skipped with a warning: {warned}; continued from step "
                   f"{STEPS - SAVE_EVERY}: {resumed}; damaged step set aside; exact: {d.exact(name)}", lost=not ok)


def every_step_damaged(d: Drill) -> Outcome:
    name = "all-damaged"
    _damaged_copy(d, name, garble_metadata, (STEPS - SAVE_EVERY, STEPS))
    before = d.steps(name)
    code, _, err = d.run(name)
    refused = code == 1 and "none of the checkpoint steps" in err
    unchanged = d.steps(name) == before
    code2, _, err2 = d.run(name, **{"checkpoint.start_over": True})
    ok = refused and unchanged and code2 == 0 and d.kept(name, before)
    return Outcome("every step damaged", f"refused (exit {code}) without touching them: {refused and unchanged}; "
                   f"start_over set them aside and trained (exit {code2})", lost=not ok)


def torn_metrics_log(d: Drill) -> Outcome:
    run = d.fresh("torn-log")
    proc = d.start(run)
    d.wait_for(lambda: (d.run_dir(run) / str(SAVE_EVERY)).is_dir() and SAVE_EVERY + 1 in d.losses(run)
               if (d.run_dir(run) / "metrics.jsonl").exists() else False, proc)
    proc.kill()
    proc.wait()
    with open(d.run_dir(run) / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 5.1')  # power cut in the middle of a line
    before = d.steps(run)
    code, _, err = d.run(run)
    ok = code == 0 and "torn last line" in err and d.kept(run, before) and d.exact(run)
    return Outcome("torn last line of metrics.jsonl", f"cut with a warning, exit {code}, exact: {d.exact(run)}",
                   lost=not ok)


def disk_full(d: Drill) -> Outcome:
    run = d.fresh("disk-full")
    code, _, _ = d.run(run, **{"training.num_iterations": SAVE_EVERY})
    before = d.steps(run)
    code2, _, err = d.run(run, limit_file_bytes=64 * 1024)  # no file past 64 KiB: the next save cannot be written
    named = "checkpoint step" in err and str(d.run_dir(run)) in err
    after_failure = d.steps(run)
    code3, _, _ = d.run(run)
    ok = code == 0 and code2 != 0 and named and after_failure == before and code3 == 0 and d.exact(run)
    return Outcome("disk full during a save", f"exit {code2}: {err.strip().splitlines()[-1][:80] if err else ''}…; "
                   f"last good step kept; continued exactly: {d.exact(run)}", lost=not ok)


def tokenizer_clobber(d: Drill) -> Outcome:
    tok = d.work / "tokenizer" / "tokenizer.pkl"
    digest = hashlib.sha256(tok.read_bytes()).hexdigest()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "revjax.cli", "tokenizer", f"base_dir={d.work}", "data.corpus=parquet",
                           f"data.dir={d.work / 'corpus'}", "tokenizer.vocab_size=300"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    same = hashlib.sha256(tok.read_bytes()).hexdigest() == digest
    ok = proc.returncode == 1 and "already exists" in proc.stderr and same
    return Outcome("train a different tokenizer over the one runs use", f"refused (exit {proc.returncode}); tokenizer "
                   f"unchanged: {same}", lost=not ok)


def revjax(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """``revjax ARGS…`` in a subprocess on the CPU."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "revjax.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links not followed) → its hash; the run lock's emptied file left out."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink() and p.name != ".lock"}


def last_line(err: str) -> str:
    lines = err.strip().splitlines()
    return lines[-1][:110] if lines else ""


def flat_export(d: Drill) -> Path:
    """A flat export of the reference run (made once)."""
    d.reference()
    out = d.work / "exports" / "reference-flat"
    if not (out / "model.pt").is_file():
        proc = revjax("export", d.run_dir("reference"), out, "--flat")
        if proc.returncode:
            raise RuntimeError(f"exporting the reference run failed:\n{proc.stderr}")
    return out


def import_force_over_training(d: Drill) -> Outcome:
    """``revjax import --force`` aimed at a run folder while a (longer) training saves into it."""
    source = flat_export(d)
    run, steps = d.fresh("import-over-training"), 400
    proc = d.start(run, **{"training.num_iterations": steps, "checkpoint.save_every": 100})
    d.wait_for(lambda: (d.run_dir(run) / "100").is_dir(), proc)
    imported = revjax("import", source, d.run_dir(run), "--force")
    live = proc.poll() is None
    out, err = proc.communicate(timeout=300)
    finished = proc.returncode == 0 and steps in d.steps(run) and sorted(d.losses(run)) == list(range(steps))
    ok = imported.returncode == 1 and "is in use by" in imported.stderr and finished
    return Outcome("import --force over a run being trained", f"import refused (exit {imported.returncode}: "
                   f"{last_line(imported.stderr)}); training still live then: {live}; it finished with every step: "
                   f"{finished}", lost=not ok)


def export_force_over_foreign(d: Drill) -> Outcome:
    d.reference()
    foreign = d.work / "someones-folder"
    foreign.mkdir(exist_ok=True)
    (foreign / "thesis.tex").write_text("years of work")
    proc = revjax("export", d.run_dir("reference"), foreign, "--flat", "--force")
    kept = [p.name for p in foreign.iterdir()] == ["thesis.tex"] and (foreign / "thesis.tex").read_text() == "years of work"
    ok = proc.returncode == 1 and kept
    return Outcome("export --flat --force over someone's folder", f"refused (exit {proc.returncode}: "
                   f"{last_line(proc.stderr)}); folder untouched: {kept}", lost=not ok)


def export_force_over_source(d: Drill) -> Outcome:
    d.reference()
    run_dir = d.run_dir("reference")
    before = folder_digest(run_dir)
    proc = revjax("export", run_dir, run_dir, "--flat", "--force")
    kept = folder_digest(run_dir) == before
    ok = proc.returncode == 1 and kept
    return Outcome("export --flat --force over the run it exports", f"refused (exit {proc.returncode}: "
                   f"{last_line(proc.stderr)}); run untouched: {kept}", lost=not ok)


def tokenizer_race(d: Drill) -> Outcome:
    """Two first runs on an empty base dir, started together, asking for tokenizers of different sizes."""
    base = d.work / "race"
    shutil.rmtree(base, ignore_errors=True)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = {size: subprocess.Popen([sys.executable, "-m", "revjax.cli", "tokenizer", f"base_dir={base}",
                                     "data.corpus=parquet", f"data.dir={d.work / 'corpus'}",
                                     f"tokenizer.vocab_size={size}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for size in (300, 320)}
    results = {size: (p.wait(timeout=300), *p.communicate()) for size, p in procs.items()}
    from revjax.tokenizer import Tokenizer
    import numpy as np

    tok = Tokenizer.load(base / "tokenizer")
    whole = len(np.load(base / "tokenizer" / "token_bytes.npy")) == tok.vocab_size
    winners = [size for size, (code, _, _) in results.items() if code == 0]
    [(loser_code, _, loser_err)] = [r for size, r in results.items() if size not in winners] or [(0, "", "")]
    ok = winners == [tok.vocab_size] and whole and loser_code == 1 and "already exists" in loser_err
    return Outcome("two first runs racing for the tokenizer", f"{tok.vocab_size}-token one kept whole ({whole}); the "
                   f"other refused (exit {loser_code}: {last_line(loser_err)})", lost=not ok)


def symlinked_step(d: Drill) -> Outcome:
    run = d.fresh("symlinked-step")
    code, _, _ = d.run(run, **{"training.num_iterations": SAVE_EVERY})
    elsewhere = d.work / "elsewhere"
    shutil.rmtree(elsewhere, ignore_errors=True)
    step = d.run_dir(run) / str(SAVE_EVERY)
    shutil.move(str(step), str(elsewhere))
    step.symlink_to(elsewhere, target_is_directory=True)
    before = folder_digest(elsewhere)
    code2, _, err = d.run(run)
    one_sentence = len(err.strip().splitlines()) == 1 and "Traceback" not in err and "symbolic link" in err
    kept = folder_digest(elsewhere) == before and step.is_symlink()
    ok = code == 0 and code2 == 1 and one_sentence and kept
    return Outcome("a step folder that is a symbolic link", f"exit {code2}: {last_line(err)}; linked step kept: {kept}",
                   lost=not ok)


def symlinked_lock(d: Drill) -> Outcome:
    run = d.fresh("symlinked-lock")
    d.run_dir(run).mkdir(parents=True)
    target = d.work / "precious.txt"
    target.write_text("not a lock file")
    (d.run_dir(run) / ".lock").symlink_to(target)
    code, _, err = d.run(run)
    kept = target.read_text() == "not a lock file"
    ok = code == 1 and kept and "symbolic link" in err and "Traceback" not in err
    return Outcome("a lock file that is a symbolic link", f"exit {code}: {last_line(err)}; its target untouched: {kept}",
                   lost=not ok)


def ctrl_c_at_startup(d: Drill) -> Outcome:
    proc = d.start(d.fresh("ctrl-c"))
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    ok = proc.returncode == 130 and len(lines) == 1 and "Traceback" not in err
    return Outcome("Ctrl-C during start-up", f"exit {proc.returncode}, stderr: {lines[-1] if lines else ''!r}",
                   lost=not ok)


CASES: dict[str, Callable[[Drill], Outcome]] = {
    "kill-startup": kill_during_startup,
    "kill-after-save": kill_after_a_save,
    "kill-during-save": kill_during_a_save,
    "sigterm": sigterm_saves,
    "rerun-finished": rerun_finished,
    "concurrent": concurrent_start,
    "garbled-metadata": lambda d: damaged_newest(d, "garbled metadata", garble_metadata),
    "truncated-arrays": lambda d: damaged_newest(d, "truncated array files", truncate_arrays),
    "flipped-byte": lambda d: damaged_newest(d, "one flipped byte", flip_a_byte),
    "all-damaged": every_step_damaged,
    "torn-log": torn_metrics_log,
    "disk-full": disk_full,
    "tokenizer-clobber": tokenizer_clobber,
    "ctrl-c-startup": ctrl_c_at_startup,
    "import-force-over-training": import_force_over_training,
    "export-force-over-foreign": export_force_over_foreign,
    "export-force-over-source": export_force_over_source,
    "tokenizer-race": tokenizer_race,
    "symlinked-step": symlinked_step,
    "symlinked-lock": symlinked_lock,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="work folder (default: a new temporary folder)")
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="run only these cases")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="revjax-drill-"))
    work.mkdir(parents=True, exist_ok=True)
    drill = Drill(work)
    outcomes = []
    for name in args.only or CASES:
        started = time.time()
        try:
            outcome = CASES[name](drill)
        except Exception as err:  # a case that cannot even run is reported, not hidden
            outcome = Outcome(name, f"drill error: {type(err).__name__}: {str(err)[:120]}", lost=True)
        outcomes.append(outcome)
        print(f"{outcome.case:<48} | {'yes' if outcome.lost else 'no':<3} | {time.time() - started:5.1f}s | "
              f"{outcome.happened}", flush=True)
    print("\n| case | what happened | data lost |\n|---|---|---|")
    for o in outcomes:
        print(f"| {o.case} | {o.happened} | {'**yes**' if o.lost else 'no'} |")
    return 1 if any(o.lost for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
