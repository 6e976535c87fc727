"""Compile time of the train step against depth, unrolled and scanned layers (``model.scan_layers``).

    python scripts/bench_compile.py [--layers 2 4 8 16] [--remat none] [key=value ...]

For each depth and mode the step (forward, backward, optimizer) is lowered and compiled from abstract shapes, so
nothing is allocated; the table gives seconds to trace+lower and to compile, and XLA's temporary memory. The
defaults are a tiny width (n_embd 128, T 128) so that the figures show how compile time grows with depth. The
persistent compilation cache is switched off so that every figure is a real compile. A model whose layers differ
(the nanochat-2026 recipe, ``model.recipe=nanochat-2026``) cannot scan its layers: its rows show the unrolled
figures only.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from revjax import sharding as shd
from revjax.architecture import scan_refusal
from revjax.config import load_config
from revjax.optim import build_optimizer, schedule_names
from revjax.sharding import data_parallel_size, make_mesh
from revjax.state import train_state_shardings
from revjax.train.step import accumulation_steps, build_train_step

TINY = ["model.depth=null", "model.n_embd=128", "model.n_head=2", "model.n_kv_head=2", "model.sequence_len=128",
        "tokenizer.vocab_size=4096", "training.device_batch_size=4", "mesh.data=1"]


def compile_step(overrides: list[str]) -> dict:
    config = load_config(overrides=overrides)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    T, B = config.model.sequence_len, config.training.device_batch_size
    accum = accumulation_steps(B * T, B, T, data_parallel_size(mesh))
    tx = build_optimizer(config.optimizer, config.model)
    graphdef, abstract, shardings = train_state_shardings(config.model, tx, mesh)
    step = build_train_step(graphdef, tx, mesh, shardings)
    batch = jax.ShapeDtypeStruct((accum, B, T), jnp.int32, sharding=shd.step_batch_sharding(mesh))
    # one fp32 scalar per scheduled hyperparameter of the optimizer (three for the nanochat-2026 one)
    scalars = (jax.ShapeDtypeStruct((), jnp.float32),) * len(schedule_names(abstract.opt_state))
    t0 = time.perf_counter()
    lowered = step.lower(abstract, {"inputs": batch, "targets": batch}, *scalars)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", 0) or 0
    return {"lower_s": t1 - t0, "compile_s": t2 - t1, "temp_mib": temp / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--remat", default="none", choices=["none", "dots", "full"])
    parser.add_argument("overrides", nargs="*", help="config overrides on top of the tiny defaults")
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    base = TINY + [f"model.remat={args.remat}"] + args.overrides
    probe = load_config(overrides=base + ["model.n_layer=2"])
    m = probe.model
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; n_embd {m.n_embd}, "
          f"T {m.sequence_len}, batch {probe.training.device_batch_size}, {m.compute_dtype}, remat {args.remat}")
    print(f"{'layers':>6} | {'unrolled lower':>14} {'compile':>8} {'temp MiB':>9} | {'scanned lower':>13} "
          f"{'compile':>8} {'temp MiB':>9}")
    for n_layer in args.layers:
        layers = base + [f"model.n_layer={n_layer}"]
        u = compile_step(layers + ["model.scan_layers=false"])
        scanned = "  (refused: its layers differ)"
        if not scan_refusal(load_config(overrides=layers).model):
            s = compile_step(layers + ["model.scan_layers=true"])
            scanned = f"{s['lower_s']:>12.2f}s {s['compile_s']:>7.2f}s {s['temp_mib']:>9.1f}"
        print(f"{n_layer:>6} | {u['lower_s']:>13.2f}s {u['compile_s']:>7.2f}s {u['temp_mib']:>9.1f} | {scanned}",
              flush=True)


if __name__ == "__main__":
    main()
