"""Security drill: each way data could be destroyed or an attacker let in, tried at tiny size, with the verdict
"let in".

Usage: python scripts/security_drill.py [--only CASE …]

Each case plays a careless user or an attacker against one surface — the code grader's sandbox, the server, the
scripts a sweep writes, the loaders of configs and checkpoints — and checks what happened. It prints one table row
per case: what happened, and whether the attacker was let in (it must say "no" everywhere).
``tests/test_security.py`` runs the same cases.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass
class Outcome:
    case: str
    happened: str
    let_in: bool


Case = Callable[[Path], Outcome]  # a case gets a fresh empty work folder of its own


# ------------------------------------------------------------------------------------------ the code sandbox
# Each case runs a model-written program through revjax.tasks.sandbox.run_program (what HumanEval grading does).


def _sandbox_run(program: str, timeout: float = 5.0, **limits):
    from revjax.tasks.sandbox import run_program

    return run_program(program, timeout=timeout, **limits)


def _sandbox_said(result) -> str:
    """The program's last error line (paths left out) and how it ended: ``OSError: [Errno 30] …; exit 1``."""
    last = (result.stderr.strip().splitlines() or ["no error"])[-1].split(": '")[0][:100]
    return f"{last}; {'timed out' if result.timed_out else f'exit {result.returncode}'}"


def _sandbox_token() -> str:
    """A sleep length no other process uses, to find what a case's program started (``sleep 3600.123456``)."""
    import random

    return f"{3600 + random.random():.6f}"


def _sandbox_survivors(token: str) -> int:
    """How many processes whose command line holds ``token`` are still running; they are killed."""
    import os
    import signal

    found = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "cmdline").read_bytes():
                found += 1
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            pass
    return found


def _sandbox_tries(paths: list[str], how: str) -> str:
    """A program that does ``how`` (``open(p, 'w').write(...)``) to each path and prints what happened, as JSON."""
    return ("import json\nout = []\n"
            f"for p in {paths!r}:\n"
            f"    try:\n        out.append(str({how}))\n"
            "    except OSError as e:\n        out.append(f'{type(e).__name__} ({e.strerror})')\n"
            "print(json.dumps(out))\n")


def _sandbox_results(result, names: list[str]) -> tuple[list[str], str]:
    import json

    try:
        said = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [], f"program failed: {_sandbox_said(result)}"
    return said, "; ".join(f"{name}: {what}" for name, what in zip(names, said))


def sandbox_pth_in_site_packages(work: Path) -> Outcome:
    """A ``.pth`` in site-packages runs in every later Python process (the old runner let the program write it)."""
    import sysconfig

    case = "sandbox: write a .pth into site-packages"
    target = Path(sysconfig.get_paths()["purelib"]) / f"revjax_drill_{_sandbox_token()}.pth"
    result = _sandbox_run(_sandbox_tries([str(target)], "open(p, 'w').write('import os\\n')"))
    written = target.exists()
    target.unlink(missing_ok=True)
    said, happened = _sandbox_results(result, ["site-packages/x.pth"])
    return Outcome(case, f"{happened}{', FILE WRITTEN' if written else ', nothing written'}",
                   let_in=written or not said)


def sandbox_write_outside(work: Path) -> Outcome:
    """Files outside the sandbox's own /tmp: the evaluator's working folder, a folder the case made, /var/tmp."""
    import os

    case = "sandbox: write outside its temporary folder"
    token = _sandbox_token()
    targets = {"evaluator's cwd": Path.cwd() / f"revjax-drill-{token}", "case folder": work / "escaped",
               "/var/tmp": Path(f"/var/tmp/revjax-drill-{token}")}
    result = _sandbox_run(_sandbox_tries([str(p) for p in targets.values()], "open(p, 'w').write('escaped')"))
    written = [name for name, path in targets.items() if path.exists()]
    for path in targets.values():
        if path.exists() and os.access(path, os.W_OK):
            path.unlink()
    said, happened = _sandbox_results(result, list(targets))
    return Outcome(case, happened + (f"; WRITTEN: {', '.join(written)}" if written else ""),
                   let_in=bool(written) or len(said) != len(targets))


def sandbox_read_secrets(work: Path) -> Outcome:
    """/etc/shadow, a file in the evaluator's home folder, and what /root and /home list (only the folders that lead
    to the Python the sandbox runs may show)."""
    import os

    case = "sandbox: read /etc/shadow and the evaluator's home"
    token = _sandbox_token()
    secret = Path.home() / f".revjax-drill-secret-{token}"
    secret.write_text(f"secret {token}\n")
    try:
        result = _sandbox_run(_sandbox_tries(["/etc/shadow", str(secret), "/root", "/home"],
                                             "f'read {len(open(p).read())} characters' if p.startswith('/etc') "
                                             "or '.revjax' in p else sorted(__import__('os').listdir(p))"))
    finally:
        secret.unlink()
    said, happened = _sandbox_results(result, ["/etc/shadow", "~/secret", "/root lists", "/home lists"])
    python = {os.path.realpath(f) for f in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable))}
    python |= {sys.prefix, sys.base_prefix, os.path.dirname(sys.executable)}
    allowed = {str(sorted({Path(f).relative_to(top).parts[0] for f in python if f.startswith(top + "/")}))
               for top in ("/root", "/home")}
    leaked = any(said_.startswith("read ") for said_ in said[:2])  # only sizes are printed, never the contents
    listed = len(said) == 4 and not {said[2], said[3]} <= allowed
    return Outcome(case, happened + ("; SECRET READ" if leaked else ""), let_in=leaked or listed or len(said) != 4)


def sandbox_signal_evaluator(work: Path) -> Outcome:
    """``os.kill`` of the evaluator's own pid and of ``os.getppid()`` (SIGTERM), of -1 and 1 (SIGKILL) from the
    program; the evaluator (its own process here, so that a hit shows as its exit code) and a sibling of it must
    live on."""
    import subprocess

    case = "sandbox: signal the evaluator"
    # one line per try, printed before the next: kill(-1) and kill(getppid()) may end the program itself
    program = ("import os, signal\nprint(f'getppid()={os.getppid()}', flush=True)\n"
               "for pid, sig in ((EVALUATOR, signal.SIGTERM), (1, signal.SIGKILL), (-1, signal.SIGKILL),"
               " (os.getppid(), signal.SIGTERM)):\n"
               "    try:\n        os.kill(pid, sig)\n        print(f'kill({pid}) sent', flush=True)\n"
               "    except OSError as e:\n        print(f'kill({pid}) {type(e).__name__}', flush=True)\n")
    evaluator = ("import os, sys\nsys.path.insert(0, sys.argv[1])\nfrom revjax.tasks.sandbox import run_program\n"
                 "r = run_program(sys.stdin.read().replace('EVALUATOR', str(os.getpid())), timeout=5)\n"
                 "print(', '.join(r.stdout.splitlines()) or r.stderr.strip()[-200:])\n")
    sibling = subprocess.Popen(["sleep", "60"])
    try:
        done = subprocess.run([sys.executable, "-c", evaluator, str(REPO)], input=program, capture_output=True,
                              text=True, timeout=60)
        alive = sibling.poll() is None
    finally:
        sibling.kill()
        sibling.wait()
    happened = (f"program: {done.stdout.strip()[:160] or 'no output'}; evaluator exit {done.returncode}, "
                f"its sibling {'alive' if alive else 'KILLED'}")
    return Outcome(case, happened, let_in=done.returncode != 0 or not alive)


def sandbox_setsid_child(work: Path) -> Outcome:
    """A double-forked ``setsid`` child, left behind by a program that exits at once and by one that runs into the
    time limit: nothing it started may still run when the grader returns."""
    import time

    case = "sandbox: setsid child outlives the grader"
    left = []
    for wait in ("", "import time\ntime.sleep(60)\n"):
        token = _sandbox_token()
        program = ("import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                   f"        os.execvp('sleep', ['sleep', {token!r}])\n    os._exit(0)\nos.wait()\n"
                   "print('daemon started', flush=True)\n" + wait)
        started = time.perf_counter()
        result = _sandbox_run(program, timeout=1.5)
        took = time.perf_counter() - started
        left.append((result.stdout.strip(), "timed out" if result.timed_out else f"exit {result.returncode}",
                     took, _sandbox_survivors(token)))
    happened = "; ".join(f"{label}: {said or 'no output'}, {end} after {took:.1f} s, {n} left running"
                         for label, (said, end, took, n) in zip(("program exits", "program runs on"), left))
    return Outcome(case, happened, let_in=any(n for *_, n in left) or any(not said for said, *_ in left))


def sandbox_stdout_flood(work: Path) -> Outcome:
    """A program that writes to stdout and stderr without end, ignoring errors, until the time limit."""
    import time

    case = "sandbox: flood stdout and stderr"

    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    program = ("import os\nchunk = b'x' * (1 << 20)\nwhile True:\n    for fd in (1, 2):\n"
               "        try:\n            os.write(fd, chunk)\n        except OSError:\n            pass\n")
    before, started = rss(), time.perf_counter()
    result = _sandbox_run(program, timeout=2.0)
    took, grew = time.perf_counter() - started, rss() - before
    kept = len(result.stdout.encode()) + len(result.stderr.encode())
    happened = (f"kept {kept / 2**20:.1f} MiB of output (truncated: {result.truncated}), "
                f"{'timed out' if result.timed_out else f'exit {result.returncode}'} after {took:.1f} s "
                f"(limit 2 s), evaluator RSS {grew / 2**20:+.1f} MiB")
    return Outcome(case, happened, let_in=kept > 3 << 20 or took > 4.0 or grew > 64 << 20)


def sandbox_fork_storm(work: Path) -> Outcome:
    """1000 forks, each child a long ``sleep``: they must all end at the time limit (RLIMIT_NPROC may stop the
    storm earlier; the test does not count on it)."""
    import time

    case = "sandbox: fork storm"
    token = _sandbox_token()
    program = ("import os, sys, time\nn = 0\nfor _ in range(1000):\n    try:\n        pid = os.fork()\n"
               "    except OSError as e:\n        print(f'fork refused after {n} ({type(e).__name__})', flush=True)\n"
               "        break\n    if pid == 0:\n"
               f"        os.execvp('sleep', ['sleep', {token!r}])\n    n += 1\n"
               "else:\n    print(f'forked {n}', flush=True)\ntime.sleep(60)\n")
    started = time.perf_counter()
    result = _sandbox_run(program, timeout=3.0)
    took, left = time.perf_counter() - started, _sandbox_survivors(token)
    happened = (f"{result.stdout.strip() or 'no output'}; {'timed out' if result.timed_out else 'exit'} after "
                f"{took:.1f} s (limit 3 s), {left} left running")
    return Outcome(case, happened, let_in=left > 0 or took > 5.0 or not result.stdout.strip())


def sandbox_memory(work: Path) -> Outcome:
    """Three children holding 500 MB each (written, so resident) and then one 2 GB allocation: the per-process cap
    refuses the large one, and everything is gone at the time limit."""
    import time

    case = "sandbox: 3 × 500 MB and one 2 GB allocation"
    token = _sandbox_token()
    child = ("import os, sys, time\nblock = b'x' * (500 << 20)\nos.write(int(sys.argv[1]), b'1')\n"
             f"time.sleep({token})\n")
    program = ("import os, select, sys, time\nr, w = os.pipe()\nos.set_inheritable(w, True)\nfor _ in range(3):\n"
               "    if os.fork() == 0:\n"
               f"        os.execv(sys.executable, [sys.executable, '-c', {child!r}, str(w)])\n"
               "held, end = 0, time.time() + 3.5\n"
               "while held < 3 and select.select([r], [], [], end - time.time())[0]:\n"
               "    held += len(os.read(r, 3))\nprint(f'{held} children hold 500 MB', flush=True)\n"
               "try:\n    big = b'x' * (2 << 30)\n    print('2 GB allocated', flush=True)\n"
               "except MemoryError:\n    print('2 GB refused (MemoryError)', flush=True)\ntime.sleep(60)\n")
    started = time.perf_counter()
    result = _sandbox_run(program, timeout=4.0)
    took, left = time.perf_counter() - started, _sandbox_survivors(token)
    said = ", ".join(result.stdout.strip().splitlines()) or f"no output ({_sandbox_said(result)})"
    happened = (f"{said}; {'timed out' if result.timed_out else 'exit'} after {took:.1f} s (limit 4 s), "
                f"{left} left running")
    return Outcome(case, happened, let_in=left > 0 or took > 6.0 or "2 GB allocated" in result.stdout
                   or "refused" not in result.stdout)


def sandbox_network(work: Path) -> Outcome:
    """A connection to a port the evaluator listens on, from a child Python the in-process socket block does not
    reach, and to an outside address."""
    import socket

    case = "sandbox: network"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    probe = ("import socket\nfor address in (('127.0.0.1', %d), ('1.1.1.1', 53)):\n    try:\n"
             "        socket.create_connection(address, timeout=2)\n        print(address[0], 'connected')\n"
             "    except OSError as e:\n        print(address[0], type(e).__name__)\n" % port)
    program = f"import subprocess, sys\nsubprocess.run([sys.executable, '-I', '-c', {probe!r}])\n"
    try:
        result = _sandbox_run(program, timeout=5.0)
        try:
            server.accept()[0].close()
            accepted = True
        except BlockingIOError:
            accepted = False
    finally:
        server.close()
    said = ", ".join(result.stdout.strip().splitlines()) or f"no output ({_sandbox_said(result)})"
    happened = f"child Python: {said}; evaluator's port {'CONNECTED' if accepted else 'never reached'}"
    return Outcome(case, happened, let_in=accepted or "connected" in result.stdout or not result.stdout.strip())


# ------------------------------------------------------------------------------------------ the server
# Each case plays an attacker against ``revjax serve``: FastAPI's TestClient on create_app, or raw sockets against
# a real uvicorn on a free loopback port, serving one tiny random model (128-token context) made once per process.

_SERVER_MODEL = []
_SERVER_KEY = "drill-key"
_SERVER_ASK = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 2}


def _server_model():
    """A tiny random-weight forward chat model with a 128-token context (made once per process)."""
    if not _SERVER_MODEL:
        from flax import nnx

        from revjax.chat.session import ChatModel
        from revjax.config import load_config
        from revjax.model import GPT
        from revjax.tokenizer import Tokenizer

        tokenizer_dir = REPO / "tests" / "golden" / "tokenizer"
        config = load_config(overrides=[
            "tokenizer.vocab_size=2048", f"tokenizer.dir={tokenizer_dir}", "model.depth=null", "model.n_layer=1",
            "model.n_embd=32", "model.n_head=2", "model.n_kv_head=2", "model.sequence_len=128",
            "model.compute_dtype=float32", "direction.direction=forward", "direction.conversation=sequence"])
        graphdef, state = nnx.split(GPT(config.model, rngs=nnx.Rngs(0)))
        _SERVER_MODEL.append(ChatModel(graphdef, state, Tokenizer.load(tokenizer_dir), "forward", "sequence", 128,
                                       name="tiny-drill"))
    return _SERVER_MODEL[0]


def _server_client(**options):
    """A TestClient (Host: localhost) on a fresh app serving the drill model; ``options`` go to create_app."""
    from fastapi.testclient import TestClient

    from revjax.chat.server import create_app

    return TestClient(create_app(_server_model(), **options), base_url="http://localhost")


def _server_said(response) -> str:
    """``401 missing_api_key``: the status and the OpenAI error's code, else its param or type (``not
    OpenAI-shaped`` when the body is not one)."""
    try:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    except Exception:  # noqa: BLE001 - any other shape is the finding
        return f"{response.status_code} not OpenAI-shaped"
    return f"{response.status_code} {error['code'] or error['param'] or error['type']}"


def _server_verdict(case: str, responses: dict[str, object], want: int, client=None) -> Outcome:
    """Every response must be ``want`` in OpenAI's error object, and no generation may have run."""
    said = {name: _server_said(r) for name, r in responses.items()}
    ran = client.app.state.batcher.stats["requests"] if client is not None else 0
    let_in = ran > 0 or any(not s.startswith(f"{want} ") or "not OpenAI" in s for s in said.values())
    return Outcome(case, "; ".join(f"{k}: {v}" for k, v in said.items()) + f"; {ran} generations run", let_in)


def _server_real(app, **options) -> tuple[int, Callable[[], None]]:
    """``app`` on a real uvicorn (revjax's guarded protocol) on a free loopback port, in a thread: (port, stop)."""
    import threading

    import portpicker

    from revjax.chat.server import bind, make_server

    sock = bind("127.0.0.1", portpicker.pick_unused_port())
    server = make_server(app, sock, log_level="critical", **options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the drill server did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(30)
        sock.close()

    return sock.getsockname()[1], stop


def server_no_api_key(work: Path) -> Outcome:
    with _server_client(api_key=_SERVER_KEY) as client:
        body = {**_SERVER_ASK, "model": "tiny-drill"}
        responses = {
            "no key": client.post("/v1/chat/completions", json=body),
            "wrong key": client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer guess"}),
            "key as Basic": client.get("/v1/models", headers={"Authorization": f"Basic {_SERVER_KEY}"}),
            "key as query": client.get(f"/v1/models?api_key={_SERVER_KEY}"),
        }
        return _server_verdict("server: no or wrong API key", responses, 401, client)


def server_dns_rebinding(work: Path) -> Outcome:
    with _server_client() as client:  # a page on attacker.example whose DNS name now points at 127.0.0.1
        responses = {host: client.post("/v1/chat/completions", json=_SERVER_ASK, headers={"Host": host})
                     for host in ("attacker.example:8000", "localhost.attacker.example", "127.0.0.1.nip.io")}
        return _server_verdict("server: DNS-rebinding page (foreign Host)", responses, 400, client)


def server_cross_site_simple_post(work: Path) -> Outcome:
    import json

    with _server_client() as client:  # a form or no-cors fetch from another site: no preflight, so no JSON type
        raw = json.dumps(_SERVER_ASK).encode()
        responses = {kind.split(";")[0]: client.post("/v1/chat/completions", content=raw, headers={"Content-Type": kind})
                     for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b")}
        responses["preflight"] = client.options("/v1/chat/completions", headers={
            "Origin": "http://attacker.example", "Access-Control-Request-Method": "POST"})
        outcome = _server_verdict("server: cross-site simple POST", {k: v for k, v in responses.items()
                                                                     if k != "preflight"}, 415, client)
        opened = "access-control-allow-origin" in responses["preflight"].headers
        return Outcome(outcome.case, outcome.happened + f"; preflight {_server_said(responses['preflight'])}, "
                       f"{'CORS allowed' if opened else 'no CORS header'}", outcome.let_in or opened)


def server_bad_values(work: Path) -> Outcome:
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with _server_client() as client:
        sent = {"top_k 2^31": {**_SERVER_ASK, "top_k": 2**31}, "seed 2^63": {**_SERVER_ASK, "seed": 2**63},
                "seed -2^63-1": {**_SERVER_ASK, "seed": -(2**63) - 1}, "top_k -1": {**_SERVER_ASK, "top_k": -1},
                "max_tokens -1": {**_SERVER_ASK, "max_tokens": -1}}
        responses = {name: client.post("/v1/chat/completions", json=body) for name, body in sent.items()}
        for name, raw in [("JSON 100000 deep", deep), ("not UTF-8", b'{"messages": "\xff"}')]:
            responses[name] = client.post("/v1/chat/completions", content=raw,
                                          headers={"Content-Type": "application/json"})
        return _server_verdict("server: out-of-range integers, deep or non-UTF-8 JSON", responses, 400, client)


def server_unknown_model_and_routes(work: Path) -> Outcome:
    with _server_client() as client:
        unknown = client.post("/v1/chat/completions", json={**_SERVER_ASK, "model": "gpt-4o"})
        route = client.get("/v1/completions")
        method = client.get("/v1/chat/completions")
        said = f"model gpt-4o: {_server_said(unknown)}; GET /v1/completions: {_server_said(route)}; " \
               f"GET /v1/chat/completions: {_server_said(method)}"
        let_in = (_server_said(unknown) != "404 model_not_found" or not _server_said(route).startswith("404 ")
                  or not _server_said(method).startswith("405 ") or client.app.state.batcher.stats["requests"] > 0)
        return Outcome("server: unknown model, route and method", said, let_in)


def server_limits_fit_the_model(work: Path) -> Outcome:
    with _server_client() as client:  # default Limits (max_tokens 1024) on a 128-token model
        info = client.get("/v1/models").json()["data"][0]
        context, most = info["context_length"], info["limits"]["max_tokens"]
        asked = client.post("/v1/chat/completions", json={**_SERVER_ASK, "max_tokens": 1024})
        return Outcome("server: /v1/models limits against a 128-token model",
                       f"advertises max_tokens {most} for context {context}; max_tokens 1024: {_server_said(asked)}",
                       most >= context or not _server_said(asked).startswith("400 "))


def server_slow_heads(work: Path) -> Outcome:
    import socket

    from revjax.chat.server import create_app

    port, stop = _server_real(create_app(_server_model()), head_timeout_s=0.5, max_connections=100)
    try:
        started = time.monotonic()
        conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(30)]
        for i, conn in enumerate(conns):
            if i % 2:
                conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        still_open = 0
        for conn in conns:
            with conn:
                try:
                    while conn.recv(4096):
                        pass
                except OSError:  # socket.timeout: the server held it past 5 s
                    still_open += 1
        took = time.monotonic() - started
    finally:
        stop()
    return Outcome("server: 30 slow or silent request heads",
                   f"{30 - still_open}/30 closed by the server, the last after {took:.2f} s (head timeout 0.5 s)",
                   still_open > 0 or took > 5)


def server_connection_flood(work: Path) -> Outcome:
    import socket

    import httpx

    from revjax.chat.server import create_app

    port, stop = _server_real(create_app(_server_model()), head_timeout_s=30, max_connections=8)
    held = []
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
        time.sleep(0.2)
        response = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
    finally:
        for conn in held:
            conn.close()
        stop()
    said = _server_said(response)
    return Outcome("server: 20 idle connections over a cap of 8", f"the next request: {said}",
                   said != "503 too_many_connections")


def server_bind_checks(work: Path) -> Outcome:
    import contextlib as _contextlib
    import io
    import os
    import socket

    from revjax.chat import server as chat_server

    key = os.environ.pop("REVJAX_API_KEY", None)  # the drill's own environment must not supply a key
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            err = io.StringIO()
            with _contextlib.redirect_stderr(err), _contextlib.redirect_stdout(io.StringIO()):
                in_use = chat_server.main([str(work / "no-run"), "--port", str(port)])
                open_bind = chat_server.main([str(work / "no-run"), "--host", "0.0.0.0", "--port", "0"])
    finally:
        if key is not None:
            os.environ["REVJAX_API_KEY"] = key
    lines = err.getvalue().splitlines()
    ok = (in_use == open_bind == 1 and len(lines) == 2 and "already in use" in lines[0]
          and "needs --api-key" in lines[1] and "Traceback" not in err.getvalue())
    return Outcome("server: port in use; 0.0.0.0 without a key",
                   f"exit {in_use}, {open_bind}: " + " / ".join(line.split(": error: ")[-1][:60] for line in lines),
                   not ok)


# ------------------------------------------------------------------------------------------ scripts and loaders


# A sweep's settings are written into a bash script (SLURM) or a shell command (pods), and the hints it prints are
# pasted into shells; config and sweep files are YAML a colleague may have written; status.json is read back.


def _scripts_sweep(work: Path, name: str, **content) -> Path:
    """A one-run sweep file (nothing is trained) with its experiment folder under ``work``."""
    import yaml

    content = {"name": "drill", "overrides": {"base_dir": str(work)}, "dir": str(work / "exp"), **content}
    path = work / name
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def _scripts_sweep_cli(argv: list[str]) -> tuple[int, str, str]:
    """``revjax sweep ARGV`` in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from revjax.experiments.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _scripts_stub(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/bash\nexit 0\n")
    path.chmod(0o755)
    return path


def scripts_newline_in_settings(work: Path) -> Outcome:
    """A newline in a setting written into the SLURM script (or the pod command) starts a command line of its own;
    each such script is run (as array task 0, with a stand-in Python) to see whether the injected line ran."""
    import os
    import shutil
    import subprocess

    case = "scripts: newline in slurm/pod settings and dir"
    stub = _scripts_stub(work / "bin" / "python")
    tried = [("slurm", key) for key in ("job_name", "partition", "account", "qos", "time", "mem", "sbatch", "python",
                                        "workdir", "dir")] + [("pod", key) for key in ("python", "workdir", "dir")]
    ran, unnamed, refused = [], [], 0
    for backend, key in tried:
        marker = work / f"INJECTED-{backend}-{key}"
        value = f"x\ntouch {marker} #"
        settings = {"python": str(stub)}
        content: dict = {}
        if key == "dir":
            content["dir"] = str(work / value)
        else:
            settings[key] = [value] if key == "sbatch" else value
        content[backend] = settings
        shutil.rmtree(work / "exp", ignore_errors=True)
        code, out, err = _scripts_sweep_cli([str(_scripts_sweep(work, f"{backend}-{key}.yaml", **content)),
                                             "--backend", backend, "--dry-run"])
        name = "'dir'" if key == "dir" else f"{backend}.{key}"
        if code:
            refused += 1
            if name not in err or err.count("\n") != 1:
                unnamed.append(f"{name} ({err.strip()[:60]!r})")
            continue
        pod_command = "\n".join(line for line in out.splitlines() if not line.startswith("#"))  # all of it
        command = ["bash", "-c", pod_command] if backend == "pod" else ["bash", "-s"]
        (work / "cwd").mkdir(exist_ok=True)
        subprocess.run(command, input=None if backend == "pod" else out, cwd=work / "cwd", capture_output=True,
                       text=True, timeout=60, env={**os.environ, "SLURM_ARRAY_TASK_ID": "0"})
        if marker.exists():
            ran.append(name)
    happened = (f"{len(tried)} values tried: {refused} refused in one sentence"
                + (f", the injected line RAN for {', '.join(ran)}" if ran else ", no injected line ran")
                + (f"; refusals not naming the key: {', '.join(unnamed)}" if unnamed else ""))
    return Outcome(case, happened, let_in=bool(ran or unnamed))


def scripts_printed_hints_substitute(work: Path) -> Outcome:
    """The commands a sweep prints for the user to paste (``sbatch PATH``, the follow-up ``revjax sweep FILE
    --status``, the gcloud example) with a ``$(...)`` in a path: pasted into bash, nothing may run."""
    import os
    import subprocess

    case = "scripts: $(...) in a path of a printed command"
    bin_dir = work / "bin"
    for tool in ("sbatch", "revjax"):
        (bin_dir / tool).parent.mkdir(exist_ok=True)
        (bin_dir / tool).write_text("#!/bin/bash\necho 4242\n")
        (bin_dir / tool).chmod(0o755)
    stub = _scripts_stub(bin_dir / "python")
    marker = work / "INJECTED"
    odd = "$(touch${IFS}INJECTED)"  # no space: the experiment folder also goes into an #SBATCH line
    sweep = _scripts_sweep(work, "drill.yaml", dir=str(work / f"exp{odd}"), slurm={"python": str(stub)},
                           pod={"python": str(stub), "hosts": 2, "workdir": str(work / odd)})
    sweep = sweep.rename(work / f"s{odd}.yaml")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    pasted = []
    _, _, err = _scripts_sweep_cli([str(sweep), "--backend", "slurm", "--dry-run"])
    pasted.append(("sbatch hint", err.split("(--dry-run): ", 1)[-1].strip()))
    path = os.environ["PATH"]
    os.environ["PATH"] = env["PATH"]
    try:
        _, out, _ = _scripts_sweep_cli([str(sweep), "--backend", "slurm"])
    finally:
        os.environ["PATH"] = path
    pasted.append(("follow-up command", out.split("follow them with ", 1)[-1].strip()))
    _, out, _ = _scripts_sweep_cli([str(sweep), "--backend", "pod"])
    gcloud = next((line for line in out.splitlines() if "--command=" in line), "")
    pasted.append(("gcloud example", "printf %s " + gcloud.split("--command=", 1)[-1].removesuffix(");")))
    ran = []
    for what, command in pasted:
        marker.unlink(missing_ok=True)
        subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, timeout=60)
        if marker.exists():
            ran.append(what)
    happened = (f"pasted {', '.join(w for w, _ in pasted)}: "
                + (f"the $(...) RAN from {', '.join(ran)}" if ran else "each path stayed one word, nothing ran"))
    return Outcome(case, happened, let_in=bool(ran))


# a "billion laughs" list: each element holds nine aliases of the one before; the last expands to 9**9 strings
_LOADERS_LAUGHS = "[" + ", ".join(["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
    f"&{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]) + "]"


def _loaders_bounded(work: Path, code: str) -> tuple[float, str, bool]:
    """Run ``code`` (which prints what happened) in a child Python held to 1 GiB of memory and 30 s:
    (seconds, its last line, whether it was stopped by a limit)."""
    import resource
    import subprocess
    import time

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    program = ("import time\nfrom revjax.errors import RevjaxError\nstarted = time.perf_counter()\n"
               f"try:\n    {code}\n    said = 'LOADED'\nexcept RevjaxError as err:\n    said = 'refused: ' + str(err)\n"
               "print(f'{time.perf_counter() - started:.3f}|{said}')\n")
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=30,
                              preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - started, "still loading after 30 s", True
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return time.perf_counter() - started, f"crashed: {last[:100]}", True
    seconds, said = done.stdout.strip().splitlines()[-1].split("|", 1)
    return float(seconds), said.replace(str(work), "WORK"), False


def loaders_alias_bomb_config(work: Path) -> Outcome:
    """A config file of three lines whose aliases expand to 9**9 values (a "billion laughs")."""
    path = work / "bomb.yaml"
    path.write_text(f"logging:\n  project: {_LOADERS_LAUGHS}\n")
    seconds, said, stopped = _loaders_bounded(work, f"__import__('revjax.config').config.load_config([{str(path)!r}])")
    return Outcome("loaders: alias bomb in a config file", f"{seconds:.2f} s: {said[:150]}",
                   let_in=stopped or not said.startswith("refused") or seconds > 1)


def loaders_alias_bomb_sweep(work: Path) -> Outcome:
    """The same bomb in a sweep file, where each override is written out as text for every run."""
    path = work / "bomb.yaml"
    path.write_text(f"name: bomb\ndir: {work / 'exp'}\noverrides:\n  base_dir: {work}\n"
                    f"  logging.project: {_LOADERS_LAUGHS}\n")
    code = f"__import__('revjax.experiments.spec').experiments.spec.load_sweep({str(path)!r})"
    seconds, said, stopped = _loaders_bounded(work, code)
    return Outcome("loaders: alias bomb in a sweep file", f"{seconds:.2f} s: {said[:150]}",
                   let_in=stopped or not said.startswith("refused") or seconds > 1)


def loaders_duplicate_key_sweep(work: Path) -> Outcome:
    """A sweep file that gives ``dir`` twice: YAML alone silently takes the second one."""
    from revjax.errors import RevjaxError
    from revjax.experiments.spec import load_sweep

    path = work / "dup.yaml"
    path.write_text(f"name: dup\noverrides:\n  base_dir: {work}\ndir: {work / 'reviewed'}\n"
                    f"dir: {work / 'elsewhere'}\n")
    try:
        sweep = load_sweep(path)
    except RevjaxError as err:
        return Outcome("loaders: duplicate key in a sweep file", f"refused: {str(err).replace(str(work), 'WORK')}",
                       let_in=False)
    return Outcome("loaders: duplicate key in a sweep file", f"LOADED: the experiment folder is {sweep.dir.name}",
                   let_in=True)


def status_json_list(work: Path) -> Outcome:
    """A run's status.json holding a list: ``revjax sweep --status``, the runner, a cluster task and the analysis
    must each say which file to delete, in one sentence, not fail with a traceback."""
    from revjax.analysis.experiment import read_experiment
    from revjax.errors import RevjaxError
    from revjax.experiments.execute import main as execute_main
    from revjax.experiments.runner import prepare
    from revjax.experiments.spec import load_sweep

    sweep = _scripts_sweep(work, "drill.yaml")
    spec = load_sweep(sweep)
    prepare(spec)  # writes the run folders
    run_dir = spec.runs[0].dir
    status = run_dir / "status.json"
    status.write_text("[1, 2]\n")
    readers = {"--status": lambda: _scripts_sweep_cli([str(sweep), "--status"]),
               "runner": lambda: _scripts_sweep_cli([str(sweep)]),
               "cluster task": lambda: _scripts_execute(execute_main, run_dir),
               "analysis": lambda: read_experiment(work / "exp")}
    bad = []
    for name, read in readers.items():
        try:
            result = read()
            said = result[2] if isinstance(result, tuple) else "read without a word"
        except RevjaxError as err:
            said = str(err)
        except Exception as err:  # what the user would see as a traceback
            said = f"traceback {type(err).__name__}"
        if str(status) not in said or "delete it" not in said or said.strip().count("\n"):
            bad.append(f"{name}: {said.strip()[:80]}")
    happened = ("each of --status, the runner, a cluster task and the analysis names the file and says to delete it"
                if not bad else "; ".join(bad))
    return Outcome("loaders: status.json holding a list", happened, let_in=bool(bad))


def _scripts_execute(execute_main, run_dir: Path) -> tuple[int, str, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = execute_main([str(run_dir)])
    return code, "", err.getvalue()


# ------------------------------------------------------------------------------------------ sizes

_SIZES_TINY_DIMS = {"sequence_len": 16, "vocab_size": 320, "n_layer": 2, "n_head": 2, "n_kv_head": 1, "n_embd": 64}


def _sizes_flat_release(folder: Path, **dims) -> Path:
    """An onanchat flat release folder whose meta.json declares ``dims`` (model.pt is an empty placeholder)."""
    import json

    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"")
    (folder / "meta.json").write_text(json.dumps({"model_config": {**_SIZES_TINY_DIMS, **dims}, "step": 0}))
    return folder


def _sizes_one_sentence(text: str, *needles: str) -> bool:
    """A refusal naming one of ``needles``, in one line, without a traceback."""
    return any(needle in text for needle in needles) and "\n" not in text.strip() and "Traceback" not in text


def _sizes_gist(text: str) -> str:
    """The part of a refusal after the (temporary) path it names."""
    text = text.strip()
    for word in ("gives", "needs"):
        if word in text:
            return text[text.find(word):][:100]
    return text[:100]


def sizes_import_n_layer(work: Path) -> Outcome:
    """``revjax import`` of a meta.json declaring 10⁹ layers (it used to allocate 10.8 GB for minutes)."""
    import os
    import subprocess

    case = "sizes: import meta.json n_layer 10⁹"
    src, out = _sizes_flat_release(work / "src", n_layer=10**9), work / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "revjax.interop.importer", str(src), str(out)], cwd=work,
                              env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return Outcome(case, "still running after 60 s (allocating for the layers)", let_in=True)
    took = time.perf_counter() - started
    refused = done.returncode != 0 and _sizes_one_sentence(done.stderr, "above the largest n_layer")
    written = out.exists()
    happened = (f"{'refused' if refused else 'not refused'} in {took:.1f} s (whole process, exit {done.returncode})"
                f"{', OUT written' if written else ', nothing written'}: {_sizes_gist(done.stderr)}")
    return Outcome(case, happened, let_in=not refused or written or took > 30)


def sizes_import_sequence_len(work: Path) -> Outcome:
    """``import_checkpoint`` of a meta.json declaring 10¹² positions (it used to import, then chat/eval died)."""
    from revjax.errors import RevjaxError
    from revjax.interop.importer import import_checkpoint

    case = "sizes: import meta.json sequence_len 10¹²"
    src, out = _sizes_flat_release(work / "src", sequence_len=10**12), work / "out"
    started = time.perf_counter()
    try:
        import_checkpoint(src, out)
    except RevjaxError as err:
        refused = _sizes_one_sentence(str(err), "above the largest sequence_len")
        written = "OUT written" if out.exists() else "nothing written"
        return Outcome(case, f"{'refused' if refused else 'stopped for another reason'} in "
                             f"{time.perf_counter() - started:.2f} s, {written}: {_sizes_gist(str(err))}",
                       let_in=not refused or out.exists())
    return Outcome(case, "imported", let_in=True)


def _sizes_tiny_run(folder: Path) -> Path:
    """A revjax run folder with a tiny random model (2 layers, width 64) and a tokenizer of its own."""
    import contextlib
    import io
    import warnings

    import jax
    import numpy as np
    from flax import nnx

    from revjax.checkpoint import Checkpointer
    from revjax.runs import build_metadata
    from revjax.config import load_config
    from revjax.model import GPT
    from revjax.tokenizer import train_tokenizer

    words = "the cat sat on a mat while dogs ran far away from home".split()
    docs = [" ".join(words[(i * 3 + j) % len(words)] for j in range(12)) for i in range(60)]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # a small corpus gives fewer merges than asked for; the size is taken as is
        tokenizer = train_tokenizer(docs, folder / "tokenizer", 320, progress=False)
    config = load_config(overrides=[
        f"base_dir={folder}", "run_name=tiny", f"tokenizer.vocab_size={tokenizer.vocab_size}",
        f"tokenizer.dir={folder / 'tokenizer'}",
        "model.depth=null", "model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.n_kv_head=1",
        "model.sequence_len=16", "model.compute_dtype=float32", f"checkpoint.dir={folder}",
        "training.total_batch_tokens=128"])
    _, state = nnx.split(nnx.eval_shape(lambda: GPT(config.model, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), nnx.to_pure_dict(state))
    metadata = build_metadata(step=1, direction="forward", phase="base", model_config=config.model.gpt_config(),
                              config=config.to_dict(), tokenizer_identity=tokenizer.identity(),
                              tokenizer_path=str(folder / "tokenizer"), val_bpb=None)
    with Checkpointer(folder, async_save=False) as checkpointer:
        checkpointer.save(1, {"params": params}, data_state=None, metadata=metadata)
    return folder


def sizes_checkpoint_sequence_len(work: Path) -> Outcome:
    """A revjax checkpoint whose metadata says sequence_len 10¹², loaded by chat's load_model and eval's LoadedRun
    (chat used to die at its first reply on a 3.64 TiB allocation)."""
    import json

    from revjax.chat.session import load_model
    from revjax.errors import RevjaxError
    from revjax.eval.run import LoadedRun

    case = "sizes: checkpoint sequence_len 10¹² → chat, eval"
    run = _sizes_tiny_run(work / "run")
    meta_file = run / "1" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["model_config"]["sequence_len"] = meta["config"]["model"]["sequence_len"] = 10**12
    meta["config"]["training"]["total_batch_tokens"] = 10**12  # consistent, as an import of such a model writes it
    meta_file.write_text(json.dumps(meta))
    verdicts, let_in, last = [], False, ""
    for name, load in (("chat", load_model), ("eval", LoadedRun)):
        started = time.perf_counter()
        try:
            load(run)
        except RevjaxError as err:
            refused = _sizes_one_sentence(str(err), "above the largest sequence_len", "lower sequence_len")
            verdicts.append(f"{name} {'refused' if refused else 'stopped otherwise'} in "
                            f"{time.perf_counter() - started:.2f} s")
            let_in |= not refused
            last = str(err)
        else:
            verdicts.append(f"{name} loaded it")
            let_in = True
    return Outcome(case, "; ".join(verdicts) + (f": {_sizes_gist(last)}" if last else ""), let_in=let_in)




# ------------------------------------------------------------------------------------------ folders replaced


def _replaced_files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def replace_foreign_folder(work: Path) -> Outcome:
    """``--force`` aimed at someone's folder, directly and through a symbolic link to it (export and import)."""
    from revjax.replace import ReplaceRefused, publish_folder

    foreign = work / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    (work / "link").symlink_to(foreign, target_is_directory=True)
    said = []
    for out in (foreign, work / "link"):
        for command in ("export", "import"):
            try:
                publish_folder(out, command, lambda tmp: (tmp / "model.pt").write_text("x"), force=True)
                said.append(f"{command} into {out.name}: replaced")
            except ReplaceRefused as err:
                said.append(f"{command} into {out.name}: refused ({str(err).split(';')[0].split(' and ')[-1]})"
                            .replace(f"{work}/", ""))
    kept = _replaced_files(foreign) == {"thesis.tex": "years of work"} and len(list(work.iterdir())) == 2
    return Outcome("--force over someone's folder (direct, via a link)", "; ".join(said) + f"; untouched: {kept}",
                   let_in=not kept or any(s.endswith("replaced") for s in said))


def replace_own_source(work: Path) -> Outcome:
    """``--force`` aimed at the folder the command reads from, a folder inside it, and the folder holding it."""
    from revjax.replace import ReplaceRefused, publish_folder

    source = work / "run"
    source.mkdir()
    (source / "1").mkdir()
    (source / "1" / "weights").write_text("trained for a week")
    refused = 0
    for out in (source, source / "1", work):
        try:
            publish_folder(out, "export", lambda tmp: None, force=True, sources=[source])
        except ReplaceRefused:
            refused += 1
    kept = _replaced_files(source) == {"1/weights": "trained for a week"}
    return Outcome("--force over its own source", f"{refused} of 3 refused; source untouched: {kept}",
                   let_in=refused != 3 or not kept)


def replace_held_folder(work: Path) -> Outcome:
    """``--force`` over the command's own earlier output while another process holds the folder's run lock."""
    import subprocess

    from revjax.replace import publish_folder
    from revjax.runlock import RunFolderLocked

    out = work / "imported"
    publish_folder(out, "import", lambda tmp: (tmp / "0").mkdir(), force=False)
    holder = subprocess.Popen([sys.executable, "-c", f"from revjax.runlock import RunLock; import sys; "
                               f"RunLock({str(out)!r}, 'training').acquire(); print('held', flush=True); "
                               f"sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        publish_folder(out, "import", lambda tmp: None, force=True)
        said = "replaced while held"
    except RunFolderLocked as err:
        said = f"refused: {str(err).split(' since ')[0].split('/')[-1]}"
    finally:
        holder.communicate("")
    kept = (out / "0").is_dir() and not list(work.glob(".imported.replaced-*"))
    return Outcome("--force over a folder another process holds", f"{said}; untouched: {kept}",
                   let_in=not kept or said == "replaced while held")


def lock_file_symlink(work: Path) -> Outcome:
    """A run folder whose ``.lock`` is a symbolic link to a file the attacker wants truncated."""
    from revjax.runlock import RunFolderLocked, RunLock

    (work / "run").mkdir()
    target = work / "precious.txt"
    target.write_text("someone's data")
    (work / "run" / ".lock").symlink_to(target)
    try:
        RunLock(work / "run", "training").acquire()
        said = "lock taken through the link"
    except RunFolderLocked as err:
        said = f"refused: {str(err).split(', which')[0].split('/')[-1]}"
    kept = target.read_text() == "someone's data"
    return Outcome("a lock file that is a symbolic link", f"{said}; target untouched: {kept}", let_in=not kept)



CASES: dict[str, Case] = {
    # sandbox
    "sandbox-pth-in-site-packages": sandbox_pth_in_site_packages,
    "sandbox-write-outside": sandbox_write_outside,
    "sandbox-read-secrets": sandbox_read_secrets,
    "sandbox-signal-evaluator": sandbox_signal_evaluator,
    "sandbox-setsid-child": sandbox_setsid_child,
    "sandbox-stdout-flood": sandbox_stdout_flood,
    "sandbox-fork-storm": sandbox_fork_storm,
    "sandbox-memory": sandbox_memory,
    "sandbox-network": sandbox_network,

    # server
    "server_no_api_key": server_no_api_key,
    "server_dns_rebinding": server_dns_rebinding,
    "server_cross_site_simple_post": server_cross_site_simple_post,
    "server_bad_values": server_bad_values,
    "server_unknown_model_and_routes": server_unknown_model_and_routes,
    "server_limits_fit_the_model": server_limits_fit_the_model,
    "server_slow_heads": server_slow_heads,
    "server_connection_flood": server_connection_flood,
    "server_bind_checks": server_bind_checks,

    # scripts and loaders
    "scripts-newline-in-settings": scripts_newline_in_settings,
    "scripts-printed-hints-substitute": scripts_printed_hints_substitute,
    "loaders-alias-bomb-config": loaders_alias_bomb_config,
    "loaders-alias-bomb-sweep": loaders_alias_bomb_sweep,
    "loaders-duplicate-key-sweep": loaders_duplicate_key_sweep,
    "loaders-status-json-list": status_json_list,

    # sizes
    "sizes-import-n-layer": sizes_import_n_layer,
    "sizes-import-sequence-len": sizes_import_sequence_len,
    "sizes-checkpoint-sequence-len": sizes_checkpoint_sequence_len,

    # folders replaced
    "replace-foreign-folder": replace_foreign_folder,
    "replace-own-source": replace_own_source,
    "replace-held-folder": replace_held_folder,
    "lock-file-symlink": lock_file_symlink,

}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="run only these cases")
    args = parser.parse_args(argv)
    outcomes = []
    for name in args.only or CASES:
        started = time.time()
        with tempfile.TemporaryDirectory(prefix=f"revjax-security-{name}-") as work:
            try:
                outcome = CASES[name](Path(work))
            except Exception as err:  # a case that cannot even run is reported, not hidden
                outcome = Outcome(name, f"drill error: {type(err).__name__}: {str(err)[:160]}", let_in=True)
        outcomes.append(outcome)
        print(f"{outcome.case:<48} | {'yes' if outcome.let_in else 'no':<3} | {time.time() - started:5.1f}s | "
              f"{outcome.happened}", flush=True)
    print("\n| case | what happened | let in |\n|---|---|---|")
    for o in outcomes:
        print(f"| {o.case} | {o.happened} | {'**yes**' if o.let_in else 'no'} |")
    return 1 if any(o.let_in for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
