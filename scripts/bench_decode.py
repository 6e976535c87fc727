"""Decode benchmark: revjax's engine (prefill + compiled KV-cache chunks) against a PyTorch KV-cache decode loop.

    python scripts/bench_decode.py --config default [key=value ...] [--batch 1 8] [--prompt 16] [--new 128]

Both sides run the same weights (random, every parameter non-zero) greedily on this machine's CPU (or revjax on its
accelerator): prompt of ``--prompt`` random tokens, ``--new`` new tokens per row. PyTorch is the tests' reference
model (tests/torch_reference.py) with its own cache (``past`` keys/values concatenated each step) under
``inference_mode``, on the faster of one thread and torch's default. Figures are medians over ``--repeats`` runs,
revjax and PyTorch alternating (a shared CPU's busy moments hit both), after a warm-up (compilation reported apart).
revjax's time is split into prefill (the prompt pass), decode (compiled chunks, including each chunk's transfer back
to the host) and host (Python bookkeeping between chunks).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from revjax.config import load_config
from revjax.config_args import find_config
from revjax.engine import Engine
from revjax.interop.state_dict import to_torch_layout
from revjax.model import GPT, num_params


def random_model(config, seed: int = 0):
    """(graphdef, params) of a model whose every parameter is non-zero, so its outputs depend on the input."""
    graphdef, params = nnx.split(nnx.jit(lambda: GPT(config, rngs=nnx.Rngs(seed)))())
    rng = np.random.default_rng(seed)
    return graphdef, jax.tree.map(lambda p: p + rng.normal(0, 0.05, p.shape).astype(np.float32), params)


def revjax_runner(graphdef, params, prompts, new: int, chunk: int):
    """A function that generates once and returns its timings (the first call compiles)."""
    engine = Engine(graphdef, params, chunk_size=chunk)
    engine.sync_prefill = True  # time the prefill apart from the first chunk

    def run():
        tokens = engine.generate(prompts, new).tokens
        return dict(engine.timings, tokens=tokens)

    return run


def torch_runner(config, params, prompts, new: int):
    """The same, for the PyTorch reference with its ``past`` cache; greedy, under ``inference_mode``."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.torch_reference import RefConfig, RefGPT

    model = RefGPT(RefConfig(**config.gpt_config()))
    state = to_torch_layout(jax.tree.map(np.asarray, nnx.to_pure_dict(params)), config)
    model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}, strict=True)
    model.eval()
    idx = torch.tensor(prompts, dtype=torch.long)

    def run():
        with torch.inference_mode():
            t0 = time.perf_counter()
            logits, past = model(idx)
            t1 = time.perf_counter()
            tokens = []
            for i in range(new):
                tok = logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(tok)
                if i < new - 1:
                    logits, past = model(tok, past=past)
            out = torch.cat(tokens, dim=1).tolist()
            t2 = time.perf_counter()
        return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "total_s": t2 - t0, "tokens": out,
                "threads": torch.get_num_threads()}

    speeds = {}
    for threads in sorted({1, torch.get_num_threads()}):  # on a busy CPU one thread can beat several
        torch.set_num_threads(threads)
        speeds[threads] = min(run()["total_s"] for _ in range(2))
    torch.set_num_threads(min(speeds, key=speeds.get))
    return run


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]  # the median run, its split included


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", metavar="FILE")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=16, help="decode steps per compiled chunk")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch loop (e.g. on an accelerator)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config([find_config(c) for c in (args.config or ["default"])], args.overrides).model
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; model "
          f"{num_params(config):,} params (L={config.n_layer}, d={config.n_embd}, V={config.vocab_size}), "
          f"{config.compute_dtype}; prompt {args.prompt}, {args.new} new tokens, greedy, chunk {args.chunk}")
    graphdef, params = random_model(config)
    rng = np.random.default_rng(1)
    for batch in args.batch:
        prompts = rng.integers(0, config.vocab_size, (batch, args.prompt)).tolist()
        runners = {"revjax": revjax_runner(graphdef, params, prompts, args.new, args.chunk)}
        t0 = time.perf_counter()
        runners["revjax"]()
        compile_s = time.perf_counter() - t0
        if not args.no_torch:
            runners["pytorch"] = torch_runner(config, params, prompts, args.new)
        runs = {name: [] for name in runners}
        for _ in range(args.repeats):  # alternate, so that a busy moment on a shared CPU hits both sides
            for name, run in runners.items():
                runs[name].append(run())
        r = median_run(runs["revjax"])
        made = batch * args.new
        print(f"\nbatch {batch}: {made} new tokens (medians of {args.repeats} alternating runs)")
        print(f"  revjax : {made / r['total_s']:9,.0f} tok/s end to end ({1000 * r['total_s']:.1f} ms; first call "
              f"{compile_s:.1f} s with compilation) | decode {made / r['decode_s']:9,.0f} tok/s, "
              f"{1e3 * r['decode_s'] / args.new:.3f} ms/step")
        print(f"           prefill {1000 * r['prefill_s']:.2f} ms, decode {1000 * r['decode_s']:.2f} ms "
              f"({r['chunks']} chunks, device work + transfer), host {1000 * r['host_s']:.2f} ms, other "
              f"{1000 * (r['total_s'] - r['prefill_s'] - r['decode_s'] - r['host_s']):.2f} ms")
        if args.no_torch:
            continue
        t = median_run(runs["pytorch"])
        agree = np.mean(np.array(r["tokens"]) == np.array(t["tokens"]))
        print(f"  pytorch: {made / t['total_s']:9,.0f} tok/s end to end ({1000 * t['total_s']:.1f} ms) | decode "
              f"{made / t['decode_s']:9,.0f} tok/s, {1e3 * t['decode_s'] / args.new:.3f} ms/step "
              f"(prefill {1000 * t['prefill_s']:.2f} ms; {t['threads']} thread(s), the faster setting)")
        print(f"  ratio revjax/pytorch: end to end {t['total_s'] / r['total_s']:.1f}x, decode "
              f"{t['decode_s'] / r['decode_s']:.1f}x; greedy tokens agree {100 * agree:.0f}%")


if __name__ == "__main__":
    main()
