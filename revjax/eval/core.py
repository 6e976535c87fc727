"""nanochat's CORE metric (the DCLM 22-task suite) and the runner every in-context suite shares.

The eval bundle is downloaded once from ``BUNDLE_URL``, checked against ``BUNDLE_SHA256`` and unpacked
atomically into ``<base_dir>/eval_bundle`` (a temporary folder renamed into place, so a half-unpacked bundle is
never used). Its ``core.yaml`` lists the tasks (``label``, ``icl_task_type``, ``dataset_uri``,
``num_fewshot[0]``, ``continuation_delimiter``, default ``" "``), ``eval_meta_data.csv`` gives each task's random
baseline in percent (``Eval Task``, ``Random baseline``) and ``eval_data/<dataset_uri>`` holds the JSONL items.

Each task's accuracy is centered against its baseline, ``(acc − b) / (1 − b)``, and CORE is the mean of the
centered accuracies. For each reading direction of a model the suite reports the tasks it can score and lists the
ones that have no direction-neutral meaning there (with the reason); those stay out of that direction's mean.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from revjax.direction import Direction, Specials, Unit, known_directions
from revjax.eval.choice import NotApplicable, score_tasks
from revjax.eval.icl import EvalError, TaskSpec, build_examples, centered
from revjax.eval.scorer import Scorer

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
BUNDLE_SHA256 = "90a7c19e28ee7a52b4f6e1f87658deb9fde7f63deba2379045bdb1fe9ea5d200"
BUNDLE_DIR = "eval_bundle"
CORE_NAME = "CORE"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch_bundle(base_dir: str | os.PathLike[str], *, url: str = BUNDLE_URL, sha256: str | None = BUNDLE_SHA256,
                 timeout: float = 120.0) -> Path:
    """``<base_dir>/eval_bundle``, downloading, verifying and unpacking it first if it is not there yet."""
    base = Path(base_dir).expanduser()
    target = base / BUNDLE_DIR
    if (target / "core.yaml").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".eval_bundle-", dir=base) as tmp:
        archive = Path(tmp) / "eval_bundle.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except OSError as err:
            raise EvalError(f"could not download the CORE eval bundle from {url} ({err}); if this machine is "
                            f"offline, unpack eval_bundle.zip so that {target / 'core.yaml'} exists") from None
        if sha256 is not None and (got := _sha256(archive)) != sha256:
            raise EvalError(f"the eval bundle from {url} has sha256 {got}, not the pinned {sha256}; it was not "
                            "unpacked (the upstream file may have changed)")
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(unpacked)
        except zipfile.BadZipFile as err:
            raise EvalError(f"the eval bundle from {url} is not a zip archive ({err})") from None
        if not (unpacked / BUNDLE_DIR / "core.yaml").is_file():
            raise EvalError(f"the archive from {url} has no {BUNDLE_DIR}/core.yaml")
        if target.exists():  # a half-written folder from an older version, or a concurrent fetch that won
            if (target / "core.yaml").is_file():
                return target
            shutil.rmtree(target)
        os.replace(unpacked / BUNDLE_DIR, target)
    return target


def load_core_tasks(bundle: str | os.PathLike[str]) -> list[TaskSpec]:
    """The tasks of an unpacked bundle folder, in ``core.yaml`` order, with baselines as fractions."""
    bundle = Path(bundle)
    try:
        config = yaml.safe_load((bundle / "core.yaml").read_text(encoding="utf-8"))
        with open(bundle / "eval_meta_data.csv", encoding="utf-8", newline="") as f:
            baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}
    except (OSError, yaml.YAMLError, KeyError, ValueError) as err:
        raise EvalError(f"{bundle} is not a readable eval bundle ({type(err).__name__}: {err})") from None
    tasks = config.get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise EvalError(f"{bundle / 'core.yaml'} has no icl_tasks list")
    specs = []
    for task in tasks:
        label = task.get("label")
        if label not in baselines:
            raise EvalError(f"task {label!r} of {bundle / 'core.yaml'} has no random baseline in eval_meta_data.csv")
        path = bundle / "eval_data" / task["dataset_uri"]
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            items = [json.loads(line) for line in lines if line.strip()]
        except (OSError, json.JSONDecodeError) as err:
            raise EvalError(f"cannot read the items of {label} from {path} ({err})") from None
        specs.append(TaskSpec(label, task["icl_task_type"], int(task["num_fewshot"][0]),
                              task.get("continuation_delimiter", " "), baselines[label] / 100.0, items))
    return specs


def evaluate_tasks(specs: Sequence[TaskSpec], name: str, scorer: Scorer, tokenizer: Any, direction: Direction | str,
                   ways: Sequence[Direction | str] | None = None, *, max_per_task: int | None = None,
                   max_len: int | None = None, progress: Callable[[str], Any] | None = None,
                   unit: Unit | str = Unit.TOKEN) -> dict:
    """Run in-context tasks for each reading direction (a model of reversal ``unit``); returns ``{"suite", "ways":
    {way: {...}}}``.

    Each way holds ``tasks`` (label → kind, shots, examples, accuracy, baseline, centered), ``not_applicable``
    (label → reason), ``score`` (the mean centered accuracy over its scored tasks, None if there are none) and
    ``seconds``. The tasks of one way are scored in one batched pass; ``progress(message)`` is called after each
    way.
    """
    specials = Specials.from_tokenizer(tokenizer)
    ways = [Direction.parse(w) for w in (ways or known_directions(direction))]
    examples = {spec.label: build_examples(spec, tokenizer, max_per_task) for spec in specs}
    out: dict[str, Any] = {"suite": name, "max_per_task": max_per_task, "max_len": max_len, "ways": {}}
    for way in ways:
        start = time.perf_counter()
        scored = score_tasks([(examples[spec.label], spec.kind) for spec in specs], scorer, direction, way, specials,
                             max_len=max_len, unit=unit, tokenizer=tokenizer)
        tasks, skipped = {}, {}
        for spec, results in zip(specs, scored):
            if isinstance(results, NotApplicable):
                skipped[spec.label] = str(results)
            else:
                accuracy = sum(r.correct for r in results) / max(1, len(results))
                tasks[spec.label] = {
                    "kind": spec.kind, "shots": spec.num_fewshot, "examples": len(results), "accuracy": accuracy,
                    "baseline": spec.baseline, "centered": centered(accuracy, spec.baseline),
                }
        score = sum(t["centered"] for t in tasks.values()) / len(tasks) if tasks else None
        out["ways"][way.value] = {"tasks": tasks, "not_applicable": skipped, "score": score,
                                  "seconds": time.perf_counter() - start}
        if progress is not None:
            progress(f"{way.value}: {len(specs)} tasks")
    return out


def evaluate_core(scorer: Scorer, tokenizer: Any, direction: Direction | str, base_dir: str | os.PathLike[str], *,
                  ways: Sequence[Direction | str] | None = None, max_per_task: int | None = None,
                  max_len: int | None = None, bundle: str | os.PathLike[str] | None = None,
                  progress: Callable[[str], Any] | None = None, unit: Unit | str = Unit.TOKEN) -> dict:
    """CORE for each reading direction; ``bundle`` is an unpacked bundle folder (default: fetched under
    ``base_dir``)."""
    folder = Path(bundle) if bundle is not None else fetch_bundle(base_dir)
    return evaluate_tasks(load_core_tasks(folder), CORE_NAME, scorer, tokenizer, direction, ways,
                          max_per_task=max_per_task, max_len=max_len, progress=progress, unit=unit)
