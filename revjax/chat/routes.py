"""The chat server's routes and error handlers, registered on the app by :func:`install`.

Each handler finds the model, the batcher and the limits on ``request.app.state`` (set by
:func:`revjax.chat.server.create_app`). Imported only with the ``serve`` extra (FastAPI) installed.
"""

import asyncio
import contextlib
import secrets
import time

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from revjax.chat.batcher import Batcher, Closed, Job, QueueFull
from revjax.chat.protocol import APIError, Completion, chunk_body, completion_body, parse_request, sse, usage
from revjax.chat.session import ChatModel
from revjax.direction import Direction

POLL_S = 0.25  # how often a non-streaming request checks that its client is still there

router = APIRouter()


def install(app) -> None:
    """Add the routes and the error handlers (every refusal in OpenAI's error object) to ``app``."""
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, server_error)
    app.include_router(router)


async def api_error(request, err: APIError):
    return JSONResponse(err.body(), status_code=err.status)


async def http_error(request, err: HTTPException):  # no route (404), a method the route lacks (405)
    where = f"{request.method} {request.url.path}"
    if err.status_code == 404:
        message = f"there is no {where} on this server; it serves POST /v1/chat/completions and GET /v1/models"
    elif err.status_code == 405:
        message = f"{where} is not allowed; this path takes {err.headers.get('Allow', 'another method')}"
    else:
        message = f"{where}: {err.detail}"
    kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
    return JSONResponse(APIError(err.status_code, message, type=kind).body(), status_code=err.status_code,
                        headers=err.headers)


async def validation_error(request, err: RequestValidationError):
    return JSONResponse(APIError(400, f"the request is not valid: {err.errors()[:1]}").body(), status_code=400)


async def server_error(request, err: Exception):  # a bug: logged with its traceback by the server, no details out
    return JSONResponse(APIError(500, "the server failed on this request; its log says why",
                                 type="server_error").body(), status_code=500)


@router.get("/", response_class=HTMLResponse)
async def index(request: Request):
    return HTMLResponse(request.app.state.page, headers={"Cache-Control": "no-cache"})


@router.get("/health")
async def health(request: Request):
    state = request.app.state
    return {"status": "ok", "model": state.model.name, "queued": state.batcher.queued,
            "active": state.batcher.active, "max_queue": state.limits.max_queue}


@router.get("/v1/models")
async def models(request: Request):
    model, limits = request.app.state.model, request.app.state.limits
    return {"object": "list", "data": [{
        "id": model.name, "object": "model", "created": request.app.state.created, "owned_by": "revjax",
        "direction": model.direction.value, "unit": model.unit.value, "conversation_mode": model.mode.value,
        "step": model.step,
        "ways": [w.value for w in model.ways], "tasks": {w.value: model.task(w) for w in model.ways},
        "context_length": model.max_len,
        "limits": {"max_tokens": limits.max_tokens, "max_prompt_tokens": limits.max_prompt_tokens,
                   "max_temperature": limits.max_temperature, "max_messages": limits.max_messages,
                   "max_body_bytes": limits.max_body_bytes}}]}


@router.post("/v1/chat/completions")
async def completions(request: Request):
    model, batcher, limits = request.app.state.model, request.app.state.batcher, request.app.state.limits
    raw = await read_body(request, limits.max_body_bytes, limits.body_timeout_s)
    parsed = parse_request(raw, model, limits)
    if request.app.state.reranker is not None:
        return await best_of(request, parsed)
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
                text = model.render(generated, parsed.way)
                return completion_body(ident, now, model.name, parsed, text, value, len(generated))
    finally:
        batcher.cancel(job)


async def best_of(request: Request, parsed: Completion) -> dict:
    """``--reranker RUN --best-of N``: sample N replies, answer with the one the reranker chooses, and report every
    candidate's scores and the chosen index in the ``revjax`` field (one request at a time, not streamed)."""
    from revjax.eval.rerank import RerankError

    state = request.app.state
    if parsed.stream:
        raise APIError(400, "this server answers with the best of several replies, which it cannot stream; send "
                            "stream=false", param="stream")
    if parsed.way is not Direction.FORWARD:
        raise APIError(400, "best-of reranking chooses among forward answers; ask for direction forward",
                       param="direction")

    def work():
        with state.rerank_lock:
            return state.reranker.best_of([parsed.messages], state.best_of, temperature=parsed.temperature,
                                          seed=secrets.randbits(31) if parsed.seed is None else parsed.seed,
                                          max_new_tokens=parsed.max_tokens)[0]

    try:
        ranking = await asyncio.to_thread(work)
    except RerankError as err:
        raise APIError(400, str(err)) from None
    model, chosen = state.model, ranking.chosen["combined"]
    text = model.render(ranking.candidates[chosen].ids, parsed.way)
    body = completion_body(f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), model.name, parsed, text, "stop",
                           len(ranking.candidates[chosen].ids))
    body["revjax"] = {"best_of": state.best_of, "weight": state.reranker.weight, "rule": "combined",
                      "reranker": state.reranker.reranker.name, "chosen": chosen, "chosen_by": ranking.chosen,
                      "candidates": [c.as_dict() for c in ranking.candidates]}
    return body


async def read_body(request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes, and with 408 when it has
    not arrived in full within ``timeout_s`` seconds (a client trickling its body holds no worker for long)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {declared} bytes; this server takes at most {limit}",
                       code="request_too_large")
    parts, size = [], 0

    async def read():
        nonlocal size
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise APIError(413, f"the request body exceeds {limit} bytes, the most this server takes",
                               code="request_too_large")
            parts.append(part)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise APIError(408, f"the request body did not arrive in full within {timeout_s:g} s; send it at once",
                       code="request_timeout") from None
    return b"".join(parts)


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
                    delta = {"content": model.render(generated, request.way)}
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
