"""Train-step benchmark: tokens/s, MFU, step time, compile time and peak memory for a config on this device.

    python scripts/bench_train.py --config default [key=value ...] [--steps 10] [--torch] [--breakdown]
    python scripts/bench_train.py --config d20 --aot training.device_batch_size=32   # memory only, nothing allocated
    python scripts/bench_train.py --config model/d20 --aot --remat none,dots,full model.depth=24 \
        model.recipe=nanochat-2026 tokenizer.vocab_size=32768 model.sequence_len=2048 model.compute_dtype=bfloat16 \
        training.device_batch_size=16 training.total_batch_tokens=32768   # the 2026 recipe's d24, per remat policy
    python scripts/bench_train.py --config d20 --fit-batch 32 16 8                    # the largest batch that fits

Batches are random tokens (the data pipeline has its own benchmark, scripts/bench_pipeline.py). The step is compiled
from abstract shapes first, so XLA's memory analysis (``--aot`` stops there) is known before anything is allocated;
``--fit-batch`` tries device batch sizes in turn (one micro-batch per step) and keeps the first whose analysis fits
the device memory and that runs. ``--torch`` runs the same shapes through the tests' PyTorch reference with the
same optimizer (Muon with bf16 Newton–Schulz for the block matrices, AdamW for embedding and head, clipping as
configured; bf16 autocast when the compute dtype is bf16) and prints the revjax/PyTorch throughput ratio; the
reference is the onanchat-2025 model, so it refuses a nanochat-2026 config. ``--breakdown`` splits each side's step
into forward+backward and the optimizer update. ``--remat`` sets ``model.remat``; with ``--aot`` it takes several
policies and prints one memory analysis for each, and XLA's cost analysis of the step. The analysis is the backend's
own: on a CPU it is for XLA's attention (full-context scores) and its buffer assignment, which shows little of what
rematerialisation saves on a GPU.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from revjax import sharding as shd
from revjax.config import load_config
from revjax.config_args import find_config
from revjax.errors import RevjaxError
from revjax.model import flops_per_token, num_params
from revjax.optim import build_optimizer, get_schedule, schedule_names, set_schedule
from revjax.sharding import data_parallel_size, make_mesh
from revjax.state import init_train_state, train_state_shardings
from revjax.train.loop import device_peak_flops
from revjax.train.step import LOSSES, accumulation_steps, build_train_step

GIB = 2**30
REMAT_POLICIES = ("none", "dots", "full")


def peak_memory_gib() -> tuple[float, str]:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / GIB, "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host peak RSS"


def timed(fn, steps: int) -> float:
    """Median seconds of ``fn()`` (which blocks until its work is done) over ``steps`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Setup:
    """A config's mesh, optimizer, jitted step and abstract inputs, lowered and compiled without allocating."""

    def __init__(self, config):
        self.config = config
        self.mesh = make_mesh(config.mesh)
        T, B = config.model.sequence_len, config.training.device_batch_size
        self.dp = data_parallel_size(self.mesh)
        self.accum = accumulation_steps(config.training.total_batch_tokens, B, T, self.dp)
        self.tx = build_optimizer(config.optimizer, config.model, init_lr_frac=config.schedule.init_lr_frac,
                                  batch_tokens=config.training.total_batch_tokens)
        self.graphdef, self.abstract, self.shardings = train_state_shardings(config.model, self.tx, self.mesh)
        self.step = build_train_step(self.graphdef, self.tx, self.mesh, self.shardings)
        # the optimizer's scheduled scalars, in the step's order (the nanochat-2026 optimizer has three)
        self.scheduled = schedule_names(self.abstract.opt_state)
        self.batch_shape = (self.accum, B * self.dp, T)
        sharding = shd.step_batch_sharding(self.mesh)
        batch = jax.ShapeDtypeStruct(self.batch_shape, jnp.int32, sharding=sharding)
        scalars = (jax.ShapeDtypeStruct((), jnp.float32),) * len(self.scheduled)
        t0 = time.perf_counter()
        lowered = self.step.lower(self.abstract, {"inputs": batch, "targets": batch}, *scalars)
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        self.lower_s, self.compile_s = t1 - t0, time.perf_counter() - t0

    def memory(self) -> dict[str, int]:
        """XLA's memory analysis in bytes; ``total`` = temp + arguments + outputs − aliased (donated) buffers, and
        ``peak`` the backend's own peak estimate (0 where it gives none)."""
        m = self.compiled.memory_analysis()
        keys = ("temp", "argument", "output", "alias", "generated_code")
        out = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0) for k in keys}
        out["total"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
        out["peak"] = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
        return out

    def step_flops(self) -> float:
        """XLA's count of the floating-point operations of one device's compiled step (0 if it gives none)."""
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list of one dict on older jax
        return float((cost or {}).get("flops", 0.0))

    def batch(self, seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        a, rows, T = self.batch_shape
        data = rng.integers(0, self.config.model.vocab_size, (a, rows, T + 1), dtype=np.int32)
        return {"inputs": data[..., :-1], "targets": data[..., 1:]}


def bench_revjax(setup: Setup, steps: int, breakdown: bool = False) -> dict:
    config = setup.config
    _, state, _ = init_train_state(config.model, setup.tx, setup.mesh, seed=0)
    batch = setup.batch()
    scalars = [np.float32(v) for v in get_schedule(state.opt_state)]  # the optimizer's own starting values
    box = [state]

    def one_step():
        box[0], metrics = setup.compiled(box[0], batch, *scalars)
        jax.block_until_ready(metrics)

    step_s = timed(one_step, steps)
    tokens = config.training.total_batch_tokens
    peak = device_peak_flops(jax.devices()[0])
    mfu = flops_per_token(config.model) * tokens / step_s / (peak * jax.device_count()) if peak else None
    out = {"compile_s": setup.compile_s, "step_s": step_s, "tokens_per_s": tokens / step_s, "mfu": mfu}
    if breakdown:
        out.update(revjax_parts(setup, box[0], batch, steps))
    return out


def revjax_parts(setup: Setup, state, batch, steps: int) -> dict:
    """Seconds of the gradient pass alone (all micro-batches) and of the optimizer update alone."""
    loss, graphdef, tx = LOSSES["next_token"], setup.graphdef, setup.tx

    @jax.jit
    def grads_only(params, batch):
        def micro(acc, mb):
            g = jax.grad(lambda p: loss(nnx.merge(graphdef, p), mb))(params)
            return jax.tree.map(jnp.add, acc, g), None
        return jax.lax.scan(micro, jax.tree.map(jnp.zeros_like, params), batch)[0]

    values = get_schedule(state.opt_state)

    @jax.jit
    def update_only(grads, opt_state, params):
        opt_state = set_schedule(opt_state, *values)
        return tx.update(grads, opt_state, params)

    grads = grads_only(state.params, batch)
    return {"grad_s": timed(lambda: jax.block_until_ready(grads_only(state.params, batch)), steps),
            "update_s": timed(lambda: jax.block_until_ready(update_only(grads, state.opt_state, state.params)),
                              steps)}


def bench_torch(config, steps: int, breakdown: bool = False, compile_model: bool = False) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.torch_reference import RefConfig, RefGPT, nanochat_optimizers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = RefGPT(RefConfig(**config.model.gpt_config())).to(device)
    o = config.optimizer
    opts = nanochat_optimizers(model, o.matrix_lr, o.embedding_lr, o.unembedding_lr, (o.adam_beta1, o.adam_beta2),
                               o.adam_eps, o.muon_momentum)
    forward = torch.compile(model) if compile_model else model
    T, B = config.model.sequence_len, config.training.device_batch_size
    accum = config.training.total_batch_tokens // (B * T)
    data = torch.randint(0, config.model.vocab_size, (accum, B, T + 1), device=device)
    bf16 = config.model.compute_dtype == "bfloat16"

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def grads():
        for micro in data:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = forward(micro[:, :-1], micro[:, 1:]) / accum
            loss.backward()

    def update():
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        for opt in opts:
            opt.step()

    def one_step():
        grads()
        update()
        model.zero_grad(set_to_none=True)
        sync()

    t0 = time.perf_counter()
    one_step()  # warm-up (and compilation)
    first_s = time.perf_counter() - t0
    out = {"step_s": timed(one_step, steps), "first_s": first_s, "device": device}
    out["tokens_per_s"] = config.training.total_batch_tokens / out["step_s"]
    if device == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
    if breakdown:
        def grads_then_zero():
            grads()
            sync()
            model.zero_grad(set_to_none=True)

        grads()
        out["grad_s"] = timed(grads_then_zero, steps)
        grads()
        out["update_s"] = timed(lambda: (update(), sync()), steps)
        model.zero_grad(set_to_none=True)
    return out


def fitting_setup(files, overrides, batches):
    """The first device batch size in ``batches`` whose compiled step fits the device memory (one micro-batch)."""
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    for B in batches:
        probe = load_config(files, overrides)
        T, dp = probe.model.sequence_len, data_parallel_size(make_mesh(probe.mesh))
        config = load_config(files, overrides + [f"training.device_batch_size={B}",
                                                 f"training.total_batch_tokens={B * T * dp}"])
        try:
            setup = Setup(config)
        except Exception as exc:  # XLA reports an allocation that cannot fit at compile time on some backends
            print(f"device batch {B}: does not compile ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
            continue
        need = setup.memory()["total"]
        if limit and need > limit:
            print(f"device batch {B}: needs {need / GIB:.1f} GiB > {limit / GIB:.1f} GiB of device memory, skipped")
            continue
        yield setup


def print_memory(setup: Setup) -> None:
    m = setup.memory()
    c = setup.config
    peak = f", XLA peak estimate {size(m['peak'])}" if m["peak"] else ""
    print(f"memory analysis (B={c.training.device_batch_size}, T={c.model.sequence_len}, accum {setup.accum}, "
          f"remat {c.model.remat}, loss_chunk {c.model.loss_chunk or 'plain'}): temp {size(m['temp'])}, "
          f"arguments {size(m['argument'])}, outputs {size(m['output'])}, aliased {size(m['alias'])}, "
          f"generated code {size(m['generated_code'])}, total {size(m['total'])}{peak}; lower {setup.lower_s:.1f}s, "
          f"compile {setup.compile_s:.1f}s", flush=True)
    if flops := setup.step_flops():
        tokens = c.training.total_batch_tokens / setup.dp
        print(f"  XLA cost analysis: {flops:.3e} FLOPs a device a step, {flops / tokens:.3e} per token of its "
              f"share (the whole step as this backend runs it: attention scores over the full context where it "
              f"masks windows, the optimizer), against the model's {flops_per_token(c.model):.3e}", flush=True)


def size(n: int) -> str:
    """Bytes in GiB (two decimals), or in MiB below 1 GiB."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def check_torch_reference(config) -> None:
    """The PyTorch reference is onanchat's (2025) model: refuse a config of another recipe."""
    if config.model.recipe != "onanchat-2025":
        raise RevjaxError(f"--torch and --torch-only time the PyTorch reference of the onanchat-2025 model, not "
                          f"model.recipe={config.model.recipe}; drop them or set model.recipe=onanchat-2025")


def remat_policies(text: str) -> list[str]:
    """``--remat``'s comma-separated policies."""
    policies = text.split(",")
    bad = [p for p in policies if p not in REMAT_POLICIES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown remat policy {', '.join(bad)}; use {', '.join(REMAT_POLICIES)} "
                                         f"(several comma-separated, e.g. none,dots,full)")
    return policies


def remat_overrides(args) -> list[list[str]]:
    """One override list per ``--remat`` policy (several only with ``--aot``), or the overrides alone."""
    if not args.remat:
        return [args.overrides]
    if len(args.remat) > 1 and not args.aot:
        raise RevjaxError(f"--remat takes several policies ({','.join(args.remat)}) only with --aot, which compiles "
                          f"one step per policy; give one policy or add --aot")
    return [args.overrides + [f"model.remat={policy}"] for policy in args.remat]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", metavar="FILE")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--aot", action="store_true", help="XLA's memory analysis only; allocates nothing")
    parser.add_argument("--fit-batch", type=int, nargs="+", metavar="B", help="device batch sizes to try in turn")
    parser.add_argument("--torch", action="store_true", help="also time the PyTorch reference (same optimizer)")
    parser.add_argument("--torch-only", action="store_true",
                        help="time only the PyTorch reference (on a GPU: apart from jax, which holds its memory)")
    parser.add_argument("--torch-compile", action="store_true", help="torch.compile the PyTorch model")
    parser.add_argument("--breakdown", action="store_true", help="time forward+backward and the update apart")
    parser.add_argument("--remat", type=remat_policies, metavar="POLICIES",
                        help="model.remat (none, dots or full); several, comma-separated, with --aot: one memory "
                             "analysis each")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    try:
        run(args)
    except RevjaxError as exc:
        sys.exit(f"bench_train: {exc}")


def run(args) -> None:
    files = [find_config(c) for c in (args.config or ["default"])]
    variants = remat_overrides(args)
    config = load_config(files, variants[0])
    if args.torch or args.torch_only:
        check_torch_reference(config)
    device = jax.devices()[0]
    m = config.model
    print(f"device: {device.device_kind} x{jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"model: {m.recipe}, depth {m.n_layer} (n_embd {m.n_embd}, {m.n_head} heads, vocab {m.vocab_size}), "
          f"{num_params(m):,} params, {flops_per_token(m):.3e} FLOPs/token, compute {m.compute_dtype}, "
          f"T {m.sequence_len}")
    if args.aot:
        for overrides in variants:
            print_memory(Setup(load_config(files, overrides)))
        return
    args.overrides = variants[0]
    if args.torch_only:
        print_torch(config, args)
        return
    if args.fit_batch:
        setup = None
        for candidate in fitting_setup(files, args.overrides, args.fit_batch):
            try:
                print_memory(candidate)
                r = bench_revjax(candidate, args.steps, args.breakdown)
                setup = candidate
                break
            except Exception as exc:  # an out-of-memory at run time: try the next size
                print(f"device batch {candidate.config.training.device_batch_size}: failed to run "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
        if setup is None:
            sys.exit(f"no device batch size in {args.fit_batch} fits this device")
        config = setup.config
    else:
        setup = Setup(config)
        print_memory(setup)
        r = bench_revjax(setup, args.steps, args.breakdown)
    print(f"batch: device batch {config.training.device_batch_size}, {config.training.total_batch_tokens:,} "
          f"tokens/step ({setup.accum} micro-batch(es))")
    mem, what = peak_memory_gib()
    mfu = "n/a (no peak known for this device)" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    print(f"revjax:  compile {r['compile_s']:.1f}s  step {1000 * r['step_s']:.1f} ms  "
          f"{r['tokens_per_s']:,.0f} tok/s  MFU {mfu}  {what} {mem:.2f} GiB")
    if args.breakdown:
        print(f"  revjax parts: forward+backward {1000 * r['grad_s']:.1f} ms, optimizer update "
              f"{1000 * r['update_s']:.1f} ms")
    if args.torch:
        t = print_torch(config, args)
        print(f"revjax/pytorch throughput ratio: {r['tokens_per_s'] / t['tokens_per_s']:.2f}")


def print_torch(config, args) -> dict:
    import torch

    t = bench_torch(config, args.steps, args.breakdown, args.torch_compile)
    extra = f"  peak {t['peak_gib']:.2f} GiB" if "peak_gib" in t else ""
    print(f"pytorch: step {1000 * t['step_s']:.1f} ms  {t['tokens_per_s']:,.0f} tok/s  first step "
          f"{t['first_s']:.1f}s{extra} (torch {torch.__version__} on {t['device']}, "
          f"{'compiled' if args.torch_compile else 'eager'}, Muon bf16 NS + AdamW, device batch "
          f"{config.training.device_batch_size})")
    if args.breakdown:
        print(f"  pytorch parts: forward+backward {1000 * t['grad_s']:.1f} ms, optimizer update "
              f"{1000 * t['update_s']:.1f} ms")
    return t


if __name__ == "__main__":
    main()
