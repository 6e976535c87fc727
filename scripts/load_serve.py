"""Load test for ``revjax serve``: K concurrent streaming clients on loopback for N seconds.

    python scripts/load_serve.py --run RUN_DIR [-k 16] [--seconds 30]          # starts `revjax serve RUN_DIR`
    python scripts/load_serve.py --url http://127.0.0.1:8000                  # a server that is already running
    python scripts/load_serve.py [--config default] [key=value ...]          # random weights at a config's size

Each client sends streaming chat completions (``stream_options.include_usage``) one after another until the time is
up; requests still running then are waited for. A request is *complete* when its status is 200 and its event stream
carries a ``finish_reason``, the usage chunk and ends with ``data: [DONE]``; anything else is an error (HTTP
status, an error event, a broken connection) or, for a 200 stream that stops short, *lost*. Printed: p50/p99
latency to the first text and to the end of the stream, completion tokens/s over the whole run, requests done,
errors and lost requests (the exit status is 1 unless both are 0). A warm-up of the same load runs first and is not
counted, so the server's compilations of its batch shapes stay out of the figures.

Without ``--run`` or ``--url`` the script writes a run folder with random weights at the model size of ``--config``
(the tokenizer of that config if it has been trained, else the tests' golden tokenizer, whose vocabulary then sets
the model's) into a temporary folder and serves it. ``--direction mixed`` alternates the directions a
bidirectional model generates in; a reverse task (backward, sequence mode) is sent an assistant message to precede.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = ["What is 2+2?", "Tell me a short story.", "Why is the sky blue?", "Name three rivers.",
            "hello", "How do I boil an egg?", "What comes after Tuesday?", "Write a line of verse."]


@dataclass
class Report:
    clients: int
    seconds: float  # wall time from the first request to the end of the last
    sent: int = 0
    complete: int = 0
    lost: int = 0  # a 200 stream that ended without finish_reason, usage and [DONE]
    errors: dict[str, int] = field(default_factory=dict)
    first_s: list[float] = field(default_factory=list)  # time to the first text, per complete request
    total_s: list[float] = field(default_factory=list)  # time to [DONE]
    tokens: int = 0  # completion tokens of complete requests

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def figures(self) -> dict:
        def pct(values, q):
            return float(np.percentile(values, q)) if values else float("nan")

        return {"clients": self.clients, "seconds": round(self.seconds, 2), "sent": self.sent,
                "complete": self.complete, "errors": self.error_count, "lost": self.lost,
                "first_p50_s": pct(self.first_s, 50), "first_p99_s": pct(self.first_s, 99),
                "total_p50_s": pct(self.total_s, 50), "total_p99_s": pct(self.total_s, 99),
                "tokens": self.tokens, "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0,
                "requests_per_s": self.complete / self.seconds if self.seconds else 0.0}


def request_bodies(info: dict, direction: str, max_tokens: int, temperature: float) -> list[dict]:
    """Request bodies cycled by the clients, for the model described by ``GET /v1/models``."""
    ways = info["ways"] if direction == "mixed" else [direction or info["ways"][0]]
    bodies = []
    for i, text in enumerate(MESSAGES):
        way = ways[i % len(ways)]
        role = "assistant" if info["tasks"].get(way) == "reverse" else "user"
        bodies.append({"model": info["id"], "messages": [{"role": role, "content": text}], "direction": way,
                       "max_tokens": max_tokens, "temperature": temperature, "stream": True,
                       "stream_options": {"include_usage": True}})
    return bodies


async def _one(client: httpx.AsyncClient, url: str, body: dict, report: Report) -> None:
    report.sent += 1
    start = time.perf_counter()
    first, finish, usage, done, error = None, None, None, False, None
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                report.errors[f"HTTP {response.status_code}"] = report.errors.get(f"HTTP {response.status_code}",
                                                                                  0) + 1
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if done:  # nothing may follow [DONE]
                    error = "data after [DONE]"
                    break
                if data == "[DONE]":
                    done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    error = f"error event: {event['error'].get('message', '')[:60]}"
                    break
                usage = event.get("usage") or usage
                for choice in event.get("choices", []):
                    delta = choice.get("delta") or {}
                    if first is None and (delta.get("content") or delta.get("prepend")):
                        first = time.perf_counter() - start
                    finish = choice.get("finish_reason") or finish
    except (httpx.HTTPError, json.JSONDecodeError) as err:
        error = type(err).__name__
    if error:
        report.errors[error] = report.errors.get(error, 0) + 1
    elif not (done and finish and usage):
        report.lost += 1
    else:
        report.complete += 1
        report.total_s.append(time.perf_counter() - start)
        report.first_s.append(first if first is not None else report.total_s[-1])
        report.tokens += int(usage["completion_tokens"])


async def run_load_async(url: str, clients: int, seconds: float, bodies: list[dict],
                         timeout_s: float = 300.0) -> Report:
    """``clients`` concurrent streaming clients sending ``bodies`` in turn until ``seconds`` have passed."""
    report = Report(clients, 0.0)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(index: int) -> None:
            n = index
            while time.perf_counter() < deadline:
                await _one(client, url, bodies[n % len(bodies)], report)
                n += clients

        await asyncio.gather(*(worker(i) for i in range(clients)))
        report.seconds = time.perf_counter() - start
    return report


def model_info(url: str) -> dict:
    return httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]


def run_load(url: str, clients: int = 16, seconds: float = 30.0, *, direction: str | None = None,
             max_tokens: int = 32, temperature: float = 0.6) -> Report:
    """The load of the module docstring against the server at ``url`` (no warm-up); returns the :class:`Report`."""
    bodies = request_bodies(model_info(url), direction, max_tokens, temperature)
    return asyncio.run(run_load_async(url, clients, seconds, bodies))


# ---- the server under test ----------------------------------------------------------------------------------

def random_run(folder: Path, configs: list[str], overrides: list[str]) -> Path:
    """A run folder holding random weights at the configured model size; returns it."""
    import jax
    from flax import nnx

    from revjax.checkpoint import Checkpointer
    from revjax.runs import build_metadata
    from revjax.config import load_config
    from revjax.config_args import find_config
    from revjax.model import GPT
    from revjax.tokenizer import Tokenizer

    files = [find_config(name) for name in configs]
    trained = load_config(files, overrides).tokenizer_path()
    tokenizer_dir = trained if (trained / "tokenizer.pkl").is_file() else ROOT / "tests" / "golden" / "tokenizer"
    tokenizer = Tokenizer.load(tokenizer_dir)
    run = folder / "random-weights"
    config = load_config(files, [*overrides, f"base_dir={folder}", f"checkpoint.dir={run}", "training.phase=sft",
                                 f"tokenizer.dir={tokenizer_dir}", f"tokenizer.vocab_size={tokenizer.vocab_size}"])
    graphdef, params = nnx.split(nnx.jit(lambda: GPT(config.model, rngs=nnx.Rngs(0)))())
    rng = np.random.default_rng(0)  # every parameter non-zero, so that replies depend on the prompt
    params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.05, p.shape).astype(np.float32),
                          nnx.to_pure_dict(params))
    metadata = build_metadata(step=0, direction=config.direction.direction, phase="sft",
                              model_config=config.model.gpt_config(), config=config.to_dict(),
                              tokenizer_identity=tokenizer.identity(), tokenizer_path=str(tokenizer_dir), val_bpb=None)
    with Checkpointer(run, async_save=False) as checkpointer:
        checkpointer.save(0, {"params": params}, data_state=None, metadata=metadata)
    print(f"random weights: {config.model.n_layer} layers, n_embd {config.model.n_embd}, vocab "
          f"{tokenizer.vocab_size} ({tokenizer_dir}), {config.direction.direction}", flush=True)
    return run


def start_serve(run: Path, port: int, extra: list[str], log) -> subprocess.Popen:
    """``revjax serve RUN --port PORT`` in a subprocess writing to the file ``log``, once its /health answers."""
    command = [sys.executable, "-m", "revjax.cli", "serve", str(run), "--port", str(port), *extra]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"revjax serve exited with {server.returncode}: {log.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise SystemExit("revjax serve did not answer /health within 600 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running server (e.g. http://127.0.0.1:8000)")
    target.add_argument("--run", help="a run folder to serve with `revjax serve`")
    parser.add_argument("--config", action="append", help="config(s) for random weights (default: default)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for random weights")
    parser.add_argument("-k", "--clients", type=int, default=16, help="concurrent streaming clients (16)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long clients keep sending (30)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of uncounted load first (10)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request (32)")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--direction", help="forward, backward or mixed (default: the model's own)")
    parser.add_argument("--port", type=int, help="port for the server this script starts (default: a free one)")
    parser.add_argument("--max-batch", type=int, help="revjax serve --max-batch")
    parser.add_argument("--max-queue", type=int, help="revjax serve --max-queue")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line as well")
    args = parser.parse_args(argv)

    server, scratch, log = None, None, tempfile.TemporaryFile()
    try:
        url = args.url.rstrip("/") if args.url else None
        if url is None:
            import portpicker

            run = Path(args.run) if args.run else None
            if run is None:
                scratch = tempfile.TemporaryDirectory(prefix="revjax-load-")
                run = random_run(Path(scratch.name), args.config or ["default"], args.overrides)
            port = args.port or portpicker.pick_unused_port()
            extra = [*(["--max-batch", str(args.max_batch)] if args.max_batch else []),
                     *(["--max-queue", str(args.max_queue)] if args.max_queue else [])]
            t0 = time.perf_counter()
            server = start_serve(run, port, extra, log)
            url = f"http://127.0.0.1:{port}"
            print(f"revjax serve {run} on {url}: up in {time.perf_counter() - t0:.1f} s", flush=True)
        info = model_info(url)
        bodies = request_bodies(info, args.direction, args.max_tokens, args.temperature)
        if args.warmup > 0:
            warm = asyncio.run(run_load_async(url, args.clients, args.warmup, bodies))
            print(f"warm-up: {warm.complete} requests in {warm.seconds:.1f} s, {warm.error_count} errors, "
                  f"{warm.lost} lost (not counted)", flush=True)
        report = asyncio.run(run_load_async(url, args.clients, args.seconds, bodies))
        f = report.figures()
        print(f"model {info['id']} ({info['direction']}), K={f['clients']} streaming clients for {args.seconds:g} s, "
              f"max_tokens {args.max_tokens}, temperature {args.temperature:g}, direction {args.direction or 'own'}")
        print(f"requests: {f['sent']} sent, {f['complete']} complete, {f['errors']} errors, {f['lost']} lost"
              + (f" ({', '.join(f'{k}: {v}' for k, v in report.errors.items())})" if report.errors else ""))
        print(f"latency to first text: p50 {f['first_p50_s'] * 1e3:.0f} ms, p99 {f['first_p99_s'] * 1e3:.0f} ms")
        print(f"latency to [DONE]:     p50 {f['total_p50_s'] * 1e3:.0f} ms, p99 {f['total_p99_s'] * 1e3:.0f} ms")
        print(f"throughput: {f['tokens_per_s']:.1f} completion tokens/s, {f['requests_per_s']:.2f} requests/s "
              f"({f['tokens']} tokens in {f['seconds']:.1f} s)")
        if args.json:
            print(json.dumps(f))
        ok = report.error_count == 0 and report.lost == 0 and report.sent == report.complete
        print("no request lost, no errors" if ok else "FAILED: errors or lost requests")
        return 0 if ok else 1
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        log.close()
        if scratch is not None:
            scratch.cleanup()


if __name__ == "__main__":
    sys.exit(main())
