"""Overhead of the HDF5 research log (logging.hdf5): the diagnostic step against the plain one, and whole runs.

    python scripts/bench_hdf5.py [--config default] [--steps 100] [--repeats 2] [--step-only] [key=value ...]

1. Step: compile time and median time, on random tokens, of the plain train step and of the research log's
   program (the same update with the diagnostics behind a ``lax.cond``) with the diagnostics skipped and computed,
   and what diagnostics every ``logging.hdf5_every`` / ``logging.hdf5_layers_every`` steps add to the average
   step of a ``--steps`` run.
2. Run: ``--steps`` training steps of the config on a synthetic corpus (random words, built once in a temporary
   folder, with a tokenizer of the config's size), with the research log off and on, alternately ``--repeats``
   times; reports the steps' wall time (sum of the logged step seconds, compile excluded: steps ≥ 2) and the whole
   loop's (training start to end, compile, the final evaluation and checkpoint included), best of the repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from revjax.config import load_config
from revjax.config_args import find_config
from revjax.data.shards import write_shards
from revjax.optim import build_optimizer
from revjax.sharding import data_parallel_size, make_mesh
from revjax.state import init_train_state
from revjax.tokenizer import train_tokenizer
from revjax.train.loop import train
from revjax.train.step import accumulation_steps, build_train_step


def step_bench(config, steps: int) -> dict:
    mesh = make_mesh(config.mesh)
    T, B = config.model.sequence_len, config.training.device_batch_size
    accum = accumulation_steps(config.training.total_batch_tokens, B, T, data_parallel_size(mesh))
    tx = build_optimizer(config.optimizer, config.model)
    graphdef, state, shardings = init_train_state(config.model, tx, mesh, seed=0)
    data = np.random.default_rng(0).integers(0, config.model.vocab_size, (accum, B * data_parallel_size(mesh), T + 1),
                                              dtype=np.int32)
    batch = {"inputs": data[..., :-1], "targets": data[..., 1:]}
    lrm, mom = np.float32(1.0), np.float32(0.95)
    box = [state]
    plain = build_train_step(graphdef, tx, mesh, shardings)
    research = build_train_step(graphdef, tx, mesh, shardings, diagnostics=True)
    t0 = time.perf_counter()
    plain = plain.lower(state, batch, lrm, mom).compile()
    compile_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    research = research.lower(state, batch, lrm, mom, np.bool_(False)).compile()
    compile_research = time.perf_counter() - t0
    calls = {"plain": lambda s: plain(s, batch, lrm, mom),
             "skipped": lambda s: research(s, batch, lrm, mom, np.bool_(False)),
             "diagnostic": lambda s: research(s, batch, lrm, mom, np.bool_(True))}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(2 + steps):  # interleaved, so all see the same machine load
        for name, call in calls.items():
            t0 = time.perf_counter()
            box[0], metrics = call(box[0])
            jax.block_until_ready(metrics)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    return {**{f"{name}_s": statistics.median(t) for name, t in times.items()},
            "plain_compile_s": compile_plain, "research_compile_s": compile_research}


def synthetic_corpus(folder: Path, vocab_size: int) -> None:
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lexicon = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(3000)]
    docs = [" ".join(rng.choice(lexicon, rng.integers(50, 400))) + "." for _ in range(3000)]
    write_shards(docs, folder / "corpus", docs_per_shard=1000)
    train_tokenizer(docs, folder / "tokenizer", vocab_size, progress=False)


def run_bench(files: list[str], overrides: list[str], steps: int, repeats: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="revjax-bench-hdf5-"))
    vocab = load_config(files, overrides).tokenizer.vocab_size
    synthetic_corpus(folder, vocab)
    common = [f"base_dir={folder}", "data.corpus=parquet", f"data.dir={folder / 'corpus'}",
              f"training.num_iterations={steps}", "training.eval_every=0", "training.sample_every=0",
              "training.eval_tokens=4096", "logging.log_every=1", "logging.progress=false", *overrides]
    results: dict[str, list] = {"off": [], "on": []}
    for r in range(repeats):
        for mode in ("off", "on"):
            config = load_config(files, [*common, f"run_name=bench-{mode}-{r}", f"logging.hdf5={mode == 'on'}"])
            t0 = time.perf_counter()
            result = train(config, progress=False)
            total = time.perf_counter() - t0
            rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
            step_s = sum(row["step_seconds"] for row in rows if "step_seconds" in row and row["step"] >= 2)
            results[mode].append((step_s, total))
    config = load_config(files, [*common, "logging.hdf5=true"])
    return {"off": min(results["off"]), "on": min(results["on"]), "every": config.logging.hdf5_every,
            "layers_every": config.logging.hdf5_layers_every, "all": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--step-only", action="store_true", help="only the step comparison")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    files = [str(find_config(name)) for name in (args.config or ["default"])]
    config = load_config(files, args.overrides)
    print(f"{jax.device_count()} {jax.devices()[0].platform} device(s); model L{config.model.n_layer} "
          f"d{config.model.n_embd} V{config.model.vocab_size} T{config.model.sequence_len}, "
          f"{config.training.total_batch_tokens} tokens per step", flush=True)
    s = step_bench(config, steps=20)
    n, m = config.logging.hdf5_every, config.logging.hdf5_layers_every
    skipped, extra = s["skipped_s"] / s["plain_s"] - 1, s["diagnostic_s"] / s["plain_s"] - 1
    print(f"step (median of 20): plain {1e3 * s['plain_s']:.1f} ms; research program, diagnostics skipped "
          f"{1e3 * s['skipped_s']:.1f} ms ({100 * skipped:+.1f}%), computed {1e3 * s['diagnostic_s']:.1f} ms "
          f"({100 * extra:+.1f}%)")
    print(f"compile: plain {s['plain_compile_s']:.1f} s, research program {s['research_compile_s']:.1f} s")
    due = sum(1 for step in range(args.steps) if any(e > 0 and step % e == 0 for e in (n, m)) or step == args.steps - 1)
    average = (due * extra + (args.steps - due) * skipped) / args.steps
    print(f"  → {args.steps} steps with diagnostics on {due} of them (every {n}/{m} and the last): "
          f"{100 * average:+.2f}% on the average step (compile excluded)")
    if args.step_only:
        return 0
    r = run_bench(files, args.overrides, args.steps, args.repeats)
    (off_s, off_total), (on_s, on_total) = r["off"], r["on"]
    print(f"run of {args.steps} steps (research log every {r['every']}/{r['layers_every']} steps), best of "
          f"{args.repeats}:")
    print(f"  steps 2…: off {off_s:.2f} s, on {on_s:.2f} s → {100 * (on_s / off_s - 1):+.2f}%")
    print(f"  whole loop: off {off_total:.2f} s, on {on_total:.2f} s → {100 * (on_total / off_total - 1):+.2f}%")
    print("  all repeats (steps 2…, whole loop): " + json.dumps(r["all"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
