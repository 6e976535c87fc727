"""``revjax serve RUN_DIR``: an OpenAI-compatible chat server (FastAPI + uvicorn) with a one-page UI.

Routes (:mod:`revjax.chat.routes`): ``POST /v1/chat/completions`` (SSE streaming or one JSON body; fields and the
``direction`` / ``task`` extensions in :mod:`revjax.chat.protocol`), ``GET /v1/models``, ``GET /health``, and the UI
at ``/``.

It binds 127.0.0.1 unless ``--host`` says otherwise. Every request passes :class:`Guard` first: its ``Host``
header must name an allowed host (loopback names, the bound host, ``--allowed-host``: a page on another site that
re-points its DNS name at this machine is refused), it must carry the API key when one is set (``Authorization:
Bearer KEY``; the page ``/`` and ``/health`` are open), and a POST must say ``Content-Type: application/json`` (so
a cross-site form or "simple" request cannot start a generation). Requests are then checked against
:class:`Limits` (body size and time, message count, prompt tokens, ``max_tokens`` cut to the model's context,
temperature, integer ranges), then wait in a bounded queue (429 when full) for the worker thread that runs
compatible requests as one engine batch (:mod:`revjax.chat.batcher`). A client that disconnects stops its
generation: its row is dropped at the next chunk, and the engine stops once no row of the batch is wanted. Every
refusal is a 4xx (5xx for the server's own state) in OpenAI's error object, 404 and 405 included.

With ``--reranker RUN --best-of N`` (:mod:`revjax.eval.rerank`) a completion samples N forward replies, answers
with the one the backward run's reverse reward (plus ``--weight`` × the forward log-probability) prefers, and
reports every candidate's scores and the chosen index in the response's ``revjax`` field; such requests are not
streamed (``stream=true`` is refused) and run one at a time. A reranker that cannot rerank, or whose tokenizer
differs, is refused at start-up in one sentence.

Connections (:func:`guarded_protocol`): one whose request head is not complete within ``--head-timeout`` seconds
is closed, and above ``--max-connections`` open connections a request is answered 503. The port is bound before
the model loads, so a port in use is one line, not a traceback after a long load.
"""

import argparse
import asyncio
import contextlib
import errno
import hmac
import ipaddress
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

from revjax.chat.batcher import Batcher
from revjax.chat.protocol import APIError, Limits
from revjax.chat.session import ChatModel
from revjax.errors import require, run_command

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
OPEN_PATHS = frozenset({"/", "/health"})  # served without the API key: the page (it asks for the key) and liveness
HEAD_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 100


def host_name(host: str) -> str:
    """``host`` as a ``Host`` header names it: lower case, IPv6 literals in brackets, no port."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host.partition("]")
        name += bracket
    elif host.count(":") > 1:  # a bare IPv6 literal
        return f"[{host}]"
    else:
        name, colon, rest = host.partition(":")
        rest = colon + rest
    return name if not rest or (rest[0] == ":" and rest[1:].isdigit()) else host  # anything else matches no name


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine (a name other than ``localhost`` counts as not)."""
    if host.strip().lower() == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return False


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` names a request may carry: loopback names, the bound host (unless a wildcard address), ``extra``
    (``*``: any)."""
    names = {*LOOPBACK_HOSTS, *(host_name(h) for h in extra)}
    if host_name(bound) not in ("0.0.0.0", "[::]", ""):
        names.add(host_name(bound))
    return frozenset(names)


class Guard:
    """ASGI middleware run before any route: the ``Host`` allow-list (400), the API key (401) and, for POST,
    ``Content-Type: application/json`` (415), each refused with OpenAI's error object."""

    def __init__(self, app, *, api_key: str | None = None, hosts: Iterable[str] = LOOPBACK_HOSTS):
        self.app, self.hosts = app, frozenset(hosts)
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            error = self.check(scope)
            if error is not None:
                return await send_error(send, error)
        await self.app(scope, receive, send)

    def check(self, scope) -> APIError | None:
        headers = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        host = headers.get("host")
        if "*" not in self.hosts and (host is None or host_name(host) not in self.hosts):
            return APIError(400, f"the Host header {json.dumps(host)} is not one this server answers to; open it as "
                            f"http://localhost:PORT/ or start it with --allowed-host NAME", code="invalid_host")
        if self.key is not None and scope["path"] not in OPEN_PATHS:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if not given or scheme.lower() != "bearer":
                return APIError(401, "this server needs its API key: send it as the header 'Authorization: Bearer "
                                "KEY'", type="authentication_error", code="missing_api_key")
            if not hmac.compare_digest(given.strip().encode(), self.key):
                return APIError(401, "the API key sent is not this server's; send the key it was started with",
                                type="authentication_error", code="invalid_api_key")
        if scope["method"] == "POST":
            kind, *params = [p.strip().lower() for p in headers.get("content-type", "").split(";")]
            charset = next((p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")), "utf-8")
            if kind != "application/json" or charset != "utf-8":
                return APIError(415, f"the request body must be sent as 'Content-Type: application/json' (UTF-8), "
                                f"not {json.dumps(headers.get('content-type', ''))}", code="unsupported_media_type")
        return None


async def send_error(send, error: APIError, *, close: bool = False) -> None:
    """Answer with ``error`` as OpenAI's error object straight through ASGI ``send``."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(model: ChatModel, limits: Limits | None = None, *, warmup: bool = False, api_key: str | None = None,
               hosts: Iterable[str] = LOOPBACK_HOSTS, reranker=None, best_of: int = 1):
    """The FastAPI application serving ``model``; its batcher starts and stops with the app (``app.state.batcher``).
    With ``reranker`` (a :class:`revjax.eval.rerank.Reranker` whose generator is ``model``) a completion is the best
    of ``best_of`` sampled replies.

    Requests pass :class:`Guard` with ``api_key`` (None: none needed) and the ``Host`` names ``hosts``; the routes
    and error handlers are :mod:`revjax.chat.routes`'."""
    from fastapi import FastAPI

    from revjax.chat import routes

    limits = (limits or Limits()).fit(model)
    batcher = Batcher(model, max_queue=limits.max_queue, max_batch=limits.max_batch,
                      batch_window_s=limits.batch_window_s)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if warmup:
            await asyncio.to_thread(batcher.warm_up)
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)

    app = FastAPI(title="revjax chat", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.model, app.state.limits = batcher, model, limits
    app.state.reranker, app.state.best_of, app.state.rerank_lock = reranker, best_of, threading.Lock()
    app.state.page = (STATIC / "index.html").read_text(encoding="utf-8")
    app.state.created = int(time.time())
    app.add_middleware(Guard, api_key=api_key, hosts=hosts)
    routes.install(app)
    return app


def guarded_protocol(head_timeout_s: float = HEAD_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
    """uvicorn's h11 protocol, plus: a connection is closed when a request head it owes is not complete within
    ``head_timeout_s`` seconds (counted from the connection's start or the end of the previous response), and a
    request arriving while more than ``max_connections`` connections are open is answered 503 in OpenAI's error
    object. (uvicorn times out idle keep-alive connections, but not one that sends its head slowly, and its own
    ``limit_concurrency`` answers 503 in plain text.) Pass it as ``uvicorn.Config(http=...)``."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.head_timer: asyncio.TimerHandle | None = None
            self.app = self.capped(self.app)

        def capped(self, app):
            async def capped_app(scope, receive, send):
                if len(self.connections) > max_connections or len(self.tasks) > max_connections:
                    return await send_error(send, APIError(
                        503, f"the server has more than {max_connections} open connections; retry shortly",
                        type="server_error", code="too_many_connections"), close=True)
                return await app(scope, receive, send)

            return capped_app

        def connection_made(self, transport):
            super().connection_made(transport)
            self.watch_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.watch_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.watch_head()

        def connection_lost(self, exc):
            self.stop_head_timer()
            super().connection_lost(exc)

        def watch_head(self) -> None:
            """Run the head timer while the client owes a request (head, or a body nobody reads any more)."""
            state = self.conn.their_state
            owed = state is h11.IDLE or (state is h11.SEND_BODY and self.cycle is not None
                                         and self.cycle.response_complete)
            if owed and not self.transport.is_closing():
                if self.head_timer is None:
                    self.head_timer = self.loop.call_later(head_timeout_s, self.head_timed_out)
            else:
                self.stop_head_timer()

        def stop_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def head_timed_out(self) -> None:
            self.head_timer = None
            if not self.transport.is_closing():
                self.logger.info("closing a connection whose request did not arrive within %g s", head_timeout_s)
                self.transport.close()

    return GuardedH11Protocol


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (listening starts with the server); a port in use, or an address
    this machine does not have, is a :class:`ChatError` of one sentence."""
    from revjax.chat.session import ChatError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError, OverflowError) as err:
        raise ChatError(f"cannot bind --host {host!r} --port {port}: {err}; give an address of this machine "
                        "(127.0.0.1 by default) and a port from 1 to 65535") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ChatError(f"port {port} on {host} is already in use; stop what is listening there or choose "
                            "another with --port") from None
        raise ChatError(f"cannot listen on {host} port {port}: {err.strerror or err}; choose another --host or "
                        "--port") from None
    return sock


def make_server(app, sock: socket.socket | None = None, *, head_timeout_s: float = HEAD_TIMEOUT_S,
                max_connections: int = MAX_CONNECTIONS, log_level: str = "info", **config):
    """A ``uvicorn.Server`` for ``app`` with :func:`guarded_protocol`; run it with ``server.run(sockets=[sock])``."""
    import uvicorn

    if sock is not None:
        host, port = sock.getsockname()[:2]
        config = {"host": host, "port": port, **config}
    return uvicorn.Server(uvicorn.Config(app, http=guarded_protocol(head_timeout_s, max_connections),
                                         log_level=log_level, **config))


DESCRIPTION = "``revjax serve RUN_DIR``: an OpenAI-compatible chat server with a web UI for a revjax run."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``RUN_DIR [--host H] [--port P] [--step N] [--api-key KEY | --no-auth] [--allowed-host NAME]… [limits]``."""
    parser.add_argument("run_dir", help="a revjax run folder (imported onanchat exports too)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only); another address needs "
                             "--api-key or an explicit --no-auth")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000); checked before the model loads")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest intact one)")
    parser.add_argument("--api-key", default=os.environ.get("REVJAX_API_KEY") or None,
                        help="require this key as 'Authorization: Bearer KEY' on every route but the page / and "
                             "/health (default: the environment variable REVJAX_API_KEY, which keeps it out of the "
                             "process list); the page asks for it")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve an address beyond this machine without an API key (anyone who reaches it can "
                             "use the model)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a Host name requests may carry besides localhost, 127.0.0.1, [::1] and --host "
                             "(repeatable; a port suffix is always allowed; '*': any, e.g. behind a proxy that "
                             "checks it); other names are refused, which stops DNS-rebinding pages")
    parser.add_argument("--head-timeout", type=float, default=HEAD_TIMEOUT_S, metavar="SECONDS",
                        help=f"close a connection whose request head is not complete within this (default "
                             f"{HEAD_TIMEOUT_S:g})")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                        help=f"open connections above which requests get 503 (default {MAX_CONNECTIONS})")
    defaults = Limits()
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch, help="requests per engine batch")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue, help="waiting requests before 429")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens,
                        help="largest max_tokens allowed (cut to the model's context length)")
    parser.add_argument("--reranker", default=None, metavar="RUN",
                        help="answer with the best of --best-of sampled replies, chosen by this backward run's "
                             "reverse reward (reported in each response's 'revjax' field; no streaming)")
    parser.add_argument("--best-of", type=int, default=4, metavar="N", help="replies sampled per request with "
                        "--reranker")
    parser.add_argument("--weight", type=float, default=1.0,
                        help="--reranker's combined score: reverse + weight × forward log-probability")


def load_reranker(model: ChatModel, run_dir: str, best_of: int, weight: float):
    """The :class:`revjax.eval.rerank.Reranker` of ``--reranker`` for ``model``, refused in one sentence when the
    two cannot rerank together."""
    from revjax.eval.rerank import RankModel, Reranker, RerankError

    if best_of < 1:
        raise RerankError(f"--best-of must be at least 1, got {best_of}")
    generator = RankModel(model.graphdef, model.params, model.tokenizer, model.direction, model.mode, model.max_len,
                          name=model.name)
    return Reranker(generator, RankModel.from_run(run_dir), weight=weight)


def run(args: argparse.Namespace) -> int:
    """Serve the run ``args`` name until stopped; returns the exit code."""

    def body() -> None:
        require("fastapi", "serve", "revjax serve")
        require("uvicorn", "serve", "revjax serve")
        from revjax.chat.session import ChatError, load_model

        if args.max_batch < 1 or args.max_queue < 1 or args.max_tokens < 1 or args.max_connections < 1:
            raise ChatError("--max-batch, --max-queue, --max-tokens and --max-connections must be at least 1")
        if not args.head_timeout > 0:
            raise ChatError(f"--head-timeout must be a positive number of seconds, not {args.head_timeout}")
        if args.api_key is not None and not args.api_key.strip():
            raise ChatError("--api-key is empty; give a key (e.g. from python -c 'import secrets; "
                            "print(secrets.token_urlsafe())') or leave it out")
        if args.api_key and args.no_auth:
            raise ChatError("--api-key and --no-auth contradict each other; keep one")
        if not is_loopback(args.host) and not args.api_key and not args.no_auth:
            raise ChatError(f"--host {args.host} lets other machines use the model, so it needs --api-key (or "
                            "REVJAX_API_KEY); pass --no-auth to serve it without one")
        sock = bind(args.host, args.port)
        try:
            model = load_model(args.run_dir, args.step, command="serve", batch=args.max_batch)
            reranker = load_reranker(model, args.reranker, args.best_of, args.weight) if args.reranker else None
            limits = Limits(max_batch=args.max_batch, max_queue=args.max_queue, max_tokens=args.max_tokens)
            hosts = allowed_hosts(args.host, args.allowed_host)
            app = create_app(model, limits, warmup=True, api_key=args.api_key, hosts=hosts, reranker=reranker,
                             best_of=args.best_of)
            server = make_server(app, sock, head_timeout_s=args.head_timeout, max_connections=args.max_connections)
            if not is_loopback(args.host):
                print(f"revjax serve: listening on {args.host}: "
                      + ("requests need the API key" if args.api_key else
                         "no API key (--no-auth): anyone who can reach it can use the model"), file=sys.stderr)
            shown = host_name(args.host) if host_name(args.host) in hosts else "localhost"
            print(f"revjax serve: {model.name} ({model.direction.value}) at http://{shown}:{args.port}/ "
                  f"(Host names answered: {', '.join(sorted(hosts))})", flush=True)
            server.run(sockets=[sock])
        finally:
            sock.close()

    return run_command("revjax serve", body)


def main(argv: Sequence[str] | None = None) -> int:
    """``revjax serve RUN_DIR``: an OpenAI-compatible chat server with a web UI for a revjax run."""
    parser = argparse.ArgumentParser(prog="revjax serve", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
