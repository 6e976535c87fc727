"""``revjax serve RUN_DIR``: an OpenAI-compatible chat server (FastAPI + uvicorn) with a one-page UI.

Routes: ``POST /v1/chat/completions`` (SSE streaming or one JSON body; fields and the ``direction`` / ``task``
extensions in :mod:`revjax.chat.protocol`), ``GET /v1/models``, ``GET /health``, and the UI at ``/``.

It binds 127.0.0.1 unless ``--host`` says otherwise. Requests are checked against :class:`Limits` (body size,
message count, prompt tokens, ``max_tokens``, temperature; 4xx with OpenAI's error object), then wait in a bounded
queue (429 when full) for the worker thread that runs compatible requests as one engine batch
(:mod:`revjax.chat.batcher`). A client that disconnects stops its generation: its row is dropped at the next
chunk, and the engine stops once no row of the batch is wanted.
"""

import argparse
import asyncio
import contextlib
import secrets
import sys
import time
from pathlib import Path
from typing import Sequence

from revjax.chat.batcher import Batcher, Closed, Job, QueueFull
from revjax.chat.protocol import (APIError, Completion, Limits, chunk_body, completion_body, parse_request, sse,
                                  usage)
from revjax.chat.session import ChatModel
from revjax.direction import Direction
from revjax.errors import require, run_command

STATIC = Path(__file__).resolve().parent / "static"
POLL_S = 0.25  # how often a non-streaming request checks that its client is still there


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {declared} bytes; this server takes at most {limit}",
                       code="request_too_large")
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise APIError(413, f"the request body exceeds {limit} bytes, the most this server takes",
                           code="request_too_large")
        parts.append(part)
    return b"".join(parts)


def create_app(model: ChatModel, limits: Limits | None = None, *, warmup: bool = False):
    """The FastAPI application serving ``model``; its batcher starts and stops with the app (``app.state.batcher``)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

    limits = limits or Limits()
    batcher = Batcher(model, max_queue=limits.max_queue, max_batch=limits.max_batch,
                      batch_window_s=limits.batch_window_s)
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    created = int(time.time())

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

    @app.exception_handler(APIError)
    async def api_error(request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model.name, "queued": batcher.queued, "active": batcher.active,
                "max_queue": limits.max_queue}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": model.name, "object": "model", "created": created, "owned_by": "revjax",
            "direction": model.direction.value, "conversation_mode": model.mode.value, "step": model.step,
            "ways": [w.value for w in model.ways], "tasks": {w.value: model.task(w) for w in model.ways},
            "context_length": model.max_len,
            "limits": {"max_tokens": limits.max_tokens, "max_temperature": limits.max_temperature,
                       "max_messages": limits.max_messages}}]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        parsed = parse_request(await read_body(request, limits.max_body_bytes), model, limits)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(kind, value):  # called from the worker thread
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening any more
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        job = Job(parsed, emit)
        try:
            batcher.submit(job)
        except QueueFull as err:
            raise APIError(429, f"the server is busy: {err}", type="rate_limit_error", code="queue_full") from None
        except Closed as err:
            raise APIError(503, str(err), type="server_error", code="shutting_down") from None
        ident, now = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        if parsed.stream:
            return StreamingResponse(_events(model, batcher, job, events, ident, now), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        generated: list[int] = []
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(events.get(), POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        batcher.cancel(job)
                        return Response(status_code=499)
                    continue
                if kind == "tokens":
                    generated += value
                elif kind == "error":
                    raise APIError(500, value, type="server_error")
                else:
                    text = model.decode(model.content(generated, parsed.way))
                    return completion_body(ident, now, model.name, parsed, text, value, len(generated))
        finally:
            batcher.cancel(job)

    return app


async def _events(model: ChatModel, batcher: Batcher, job: Job, events: asyncio.Queue, ident: str, now: int):
    """The SSE stream of one request; leaving it early (the client went away) cancels the job."""
    request: Completion = job.request
    backward = request.way is Direction.BACKWARD
    stream, generated = model.text_stream(request.way), []

    def chunk(delta, finish=None):
        return sse(chunk_body(ident, now, model.name, request, delta, finish))

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await events.get()
            if kind == "tokens":
                generated += value
                piece = stream.feed(value)
                if piece:
                    yield chunk({"prepend": piece} if backward else {"content": piece})
            elif kind == "error":
                yield sse(APIError(500, value, type="server_error").body())
                return
            else:
                tail = stream.finish()
                if backward:
                    delta = {"content": model.decode(model.content(generated, request.way))}
                    if tail:
                        delta["prepend"] = tail
                else:
                    delta = {"content": tail} if tail else {}
                yield chunk(delta, value)
                if request.include_usage:
                    yield sse({**chunk_body(ident, now, model.name, request, None), "usage": usage(request,
                                                                                             len(generated))})
                yield sse("[DONE]")
                return
    finally:
        batcher.cancel(job)


def main(argv: Sequence[str] | None = None) -> int:
    """``revjax serve RUN_DIR``: an OpenAI-compatible chat server with a web UI for a revjax run."""
    parser = argparse.ArgumentParser(prog="revjax serve", description=main.__doc__)
    parser.add_argument("run_dir", help="a revjax run folder (imported onanchat exports too)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest intact one)")
    defaults = Limits()
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch, help="requests per engine batch")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue, help="waiting requests before 429")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="largest max_tokens allowed")
    args = parser.parse_args(argv)

    def run() -> None:
        require("fastapi", "serve", "revjax serve")
        uvicorn = require("uvicorn", "serve", "revjax serve")
        from revjax.chat.session import ChatError, load_model

        if args.max_batch < 1 or args.max_queue < 1 or args.max_tokens < 1:
            raise ChatError("--max-batch, --max-queue and --max-tokens must be at least 1")
        model = load_model(args.run_dir, args.step)
        limits = Limits(max_batch=args.max_batch, max_queue=args.max_queue, max_tokens=args.max_tokens)
        app = create_app(model, limits, warmup=True)
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"revjax serve: listening on {args.host}: anyone who can reach it can use the model",
                  file=sys.stderr)
        print(f"revjax serve: {model.name} ({model.direction.value}) at http://{args.host}:{args.port}/", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")

    return run_command("revjax serve", run)
