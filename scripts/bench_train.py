"""Train-step benchmark: tokens/s, MFU, step time, compile time and peak memory for a config on this device.

    python scripts/bench_train.py --config default [key=value ...] [--steps 10] [--torch]

Batches are random tokens (the data pipeline has its own benchmark, scripts/bench_pipeline.py). With ``--torch``
(CPU), the same model shapes also run through the tests' PyTorch reference (forward, backward, AdamW) and the
revjax/PyTorch throughput ratio is printed.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from revjax.config_args import find_config
from revjax.config import load_config
from revjax.model import flops_per_token, num_params
from revjax.optim import build_optimizer
from revjax.sharding import data_parallel_size, make_mesh
from revjax.train.loop import device_peak_flops
from revjax.state import init_train_state
from revjax.train.step import accumulation_steps, build_train_step


def peak_memory_gib() -> tuple[float, str]:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host peak RSS"


def bench_revjax(config, steps: int) -> dict:
    mesh = make_mesh(config.mesh)
    T, B = config.model.sequence_len, config.training.device_batch_size
    dp = data_parallel_size(mesh)
    accum = accumulation_steps(config.training.total_batch_tokens, B, T, dp)
    tx = build_optimizer(config.optimizer, config.model)
    graphdef, state, shardings = init_train_state(config.model, tx, mesh, seed=0)
    step = build_train_step(graphdef, tx, mesh, shardings)
    rng = np.random.default_rng(0)
    data = rng.integers(0, config.model.vocab_size, (accum, B * dp, T + 1), dtype=np.int32)
    batch = {"inputs": data[..., :-1], "targets": data[..., 1:]}
    lrm, mom = np.float32(1.0), np.float32(0.95)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, lrm, mom).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(state, batch, lrm, mom)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, lrm, mom)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens = config.training.total_batch_tokens
    peak = device_peak_flops(jax.devices()[0])
    mfu = flops_per_token(config.model) * tokens / step_s / (peak * jax.device_count()) if peak else None
    return {"compile_s": compile_s, "step_s": step_s, "tokens_per_s": tokens / step_s, "mfu": mfu}


def bench_torch(config, steps: int) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.torch_reference import RefConfig, RefGPT

    torch.manual_seed(0)
    model = RefGPT(RefConfig(**config.model.gpt_config()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95), eps=1e-10)
    T, B = config.model.sequence_len, config.training.device_batch_size
    accum = config.training.total_batch_tokens // (B * T)
    data = torch.randint(0, config.model.vocab_size, (accum, B, T + 1))

    def one_step():
        for micro in data:
            loss = model(micro[:, :-1], micro[:, 1:]) / accum
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    one_step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {"step_s": step_s, "tokens_per_s": config.training.total_batch_tokens / step_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", metavar="FILE")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--torch", action="store_true", help="also time the PyTorch reference (CPU)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config([find_config(c) for c in (args.config or ["default"])], args.overrides)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} x{jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"model: {num_params(config.model):,} params, {flops_per_token(config.model):.3e} FLOPs/token, "
          f"compute {config.model.compute_dtype}, batch {config.training.total_batch_tokens:,} tokens/step")
    r = bench_revjax(config, args.steps)
    mem, what = peak_memory_gib()
    mfu = "n/a (no peak known for this device)" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    print(f"revjax:  compile {r['compile_s']:.1f}s  step {1000 * r['step_s']:.1f} ms  "
          f"{r['tokens_per_s']:,.0f} tok/s  MFU {mfu}  {what} {mem:.2f} GiB")
    if args.torch:
        t = bench_torch(config, args.steps)
        print(f"pytorch: step {1000 * t['step_s']:.1f} ms  {t['tokens_per_s']:,.0f} tok/s  "
              f"(torch {__import__('torch').__version__}, AdamW on every parameter)")
        print(f"revjax/pytorch throughput ratio: {r['tokens_per_s'] / t['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
