"""OpenAI's chat-completions protocol for a revjax model: request checks with OpenAI-style errors, response bodies.

Accepted fields: ``model`` (the served model's id, or omitted; another name is 404 ``model_not_found``), ``messages`` (``system`` /
``developer`` messages at the start join the first user message), ``temperature`` (default 0.6), ``top_k``
(extension, default 50, 0: off, below 2³¹), ``top_p``, ``max_tokens`` or ``max_completion_tokens``, ``stream``,
``stream_options.include_usage``, ``seed`` (a 64-bit signed integer), ``n`` (1 only), and the extension ``direction`` (``forward`` /
``backward``, for a bidirectional model; default: the model's own, forward for bidirectional). Other fields are
ignored, except ``stop``, which is refused when set. The body must be UTF-8 JSON; one that is not, or is nested
too deeply for the parser, is a 400 like any other bad request.

Tasks (extension field ``task`` in every response): ``answer`` — ``messages`` alternate user/assistant, start with
a user message and end with the user message to answer; ``reverse`` (a backward model in ``sequence`` mode) — the
model writes the question that comes before an answer, in one of two forms:

* a standard chat (any client): ``messages`` alternate user/assistant and end with a user message, as for
  ``answer``; each user message is an *answer* and each assistant message the question the model wrote for the
  user message before it. The reply's ``content`` is the question for the last user message, in reading order.
  (The conversation in reading order is the chat read newest first: each new pair goes before the earlier ones.)
* the reading-order form: ``messages`` are the conversation *after* the turn to write, so they start and end with
  an assistant message, and the model writes the user message that precedes them.

Either way the reply is the choice's message (role ``assistant``, as the protocol requires), with ``task:
"reverse"`` saying it is a question. A bidirectional model asked without ``direction`` generates forward (the
``answer`` task). Reply text is rendered for people (:func:`revjax.direction.render_reply`): it ends at the turn's
end and shows a calculator call as ``[calculator: EXPR = RESULT]``, never raw special tokens.

Streaming a backward generation: the text is written right to left, so each piece is sent as ``delta.prepend``
(it goes before the text so far) and the whole reading-order text comes as ``delta.content`` in the last chunk, so
a client that only concatenates ``content`` still gets the right text.

Reversal units: a backward ``word`` or ``entity`` model (``unit`` in ``GET /v1/models``) reads each message from its
reversed text, so a message is encoded from it (:meth:`revjax.chat.session.ChatModel.encode_message`); its replies
are sent in reading order, streamed as ``prepend`` pieces of whole words like any backward reply.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from revjax.chat.session import REVERSE, ChatError, ChatModel
from revjax.direction import Direction

DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_K = 50
MAX_TOP_K = 2**31 - 1  # the engine holds top_k as int32
SEED_RANGE = (-(2**63), 2**63 - 1)  # the engine's seed is an int64


@dataclass
class Limits:
    """What one request may ask; ``max_prompt_tokens`` None: the model's context less one token."""

    max_body_bytes: int = 1 << 20
    max_messages: int = 64
    max_prompt_tokens: int | None = None
    max_tokens: int = 1024
    max_temperature: float = 2.0
    max_queue: int = 32  # requests waiting for the engine; more get 429
    max_batch: int = 8  # requests run together in one engine batch
    batch_window_s: float = 0.01  # how long the worker waits for companions once a request arrives
    body_timeout_s: float = 30.0  # a request body not received in full within this is refused with 408

    def fit(self, model: ChatModel) -> Limits:
        """These limits with ``max_tokens`` and ``max_prompt_tokens`` cut to what ``model``'s context can hold (one
        token at least goes to the prompt): what the server enforces and what ``/v1/models`` reports."""
        room = max(1, model.max_len - 1)
        return dataclasses.replace(self, max_tokens=min(self.max_tokens, room),
                                   max_prompt_tokens=min(self.max_prompt_tokens or room, room))


class APIError(Exception):
    """A refused request: HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class Completion:
    """A checked request, ready for the engine."""

    way: Direction
    task: str
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    stream: bool
    include_usage: bool
    messages: list[list[int]] = field(default_factory=list)  # the reading-order message ids the prompt holds


def _number(body: dict, name: str, default: Any, *, integer: bool = False,
            bounds: tuple[int, int] | None = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise _bad(f"'{name}' must be {'an integer' if integer else 'a number'}, got {_short(value)}", name)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise _bad(f"'{name}' must be between {bounds[0]} and {bounds[1]}, got {value}", name)
    return value


def _short(value: Any) -> str:
    """``value`` as JSON, cut to 80 characters (an error message quotes what was sent, not all of it)."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
        raise _bad(f"{where} may only hold text parts; images, audio and files are not supported", where)
    raise _bad(f"{where} must be a string or a list of text parts", where)


def _messages(body: dict, limits: Limits) -> list[tuple[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of {role, content} objects", "messages")
    if len(messages) > limits.max_messages:
        raise _bad(f"'messages' has {len(messages)} messages; this server takes at most {limits.max_messages}",
                   "messages", "too_many_messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise _bad(f"messages[{i}].role is {_short(role)}; only system, developer, user and assistant "
                       "messages are supported", f"messages[{i}].role")
        out.append(("system" if role == "developer" else role, _text(message.get("content"), f"messages[{i}].content")))
    return out


def _turns(messages: list[tuple[str, str]], task: str) -> list[str]:
    """Message texts in alternating order, leading system messages joined to the first user message."""
    system = []
    while messages and messages[0][0] == "system":
        system.append(messages.pop(0)[1])
    if any(role == "system" for role, _ in messages):
        raise _bad("system messages must come before the conversation", "messages")
    chat_form = task == REVERSE and bool(messages) and messages[-1][0] == "user"  # a standard client's chat
    first = "assistant" if task == REVERSE and not chat_form else "user"
    if system and task == REVERSE:
        raise _bad("the reverse task writes the first user message, so it takes no system message", "messages")
    if not messages:
        raise _bad(f"'messages' holds no {first} message", "messages")
    for i, (role, _) in enumerate(messages):
        want = first if i % 2 == 0 else ("user" if first == "assistant" else "assistant")
        if role != want:
            raise _bad(_order_hint(task), "messages", "invalid_message_order")
    if len(messages) % 2 == 0:
        raise _bad(_order_hint(task), "messages", "invalid_message_order")
    texts = [content for _, content in messages]
    if chat_form:  # newest answer first: the chat read backwards is the reverse task's reading order
        return texts[::-1]
    if system:
        texts[0] = "\n\n".join([*system, texts[0]])
    return texts


def _order_hint(task: str) -> str:
    if task == REVERSE:
        return ("for the reverse task (a backward model in sequence mode) messages alternate user/assistant and end "
                "with the user message (an answer) to write the question for, or alternate assistant/user and start "
                "and end with an assistant message: the model writes the user message before them")
    return "messages must alternate user/assistant and end with the user message to answer"


def parse_request(raw: bytes, model: ChatModel, limits: Limits) -> Completion:
    """Check a request body; raises :class:`APIError` (4xx) naming the field and the limit."""
    limits = limits.fit(model)
    if len(raw) > limits.max_body_bytes:
        raise APIError(413, f"the request body is {len(raw)} bytes; this server takes at most {limits.max_body_bytes}",
                       code="request_too_large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _bad(f"the request body is not UTF-8 text (byte {err.start}); send JSON encoded as UTF-8") from None
    try:
        body = json.loads(text)
    except ValueError:
        raise _bad("the request body is not valid JSON") from None
    except RecursionError:
        raise _bad("the request body nests JSON too deeply to parse; send a flat chat-completions object") from None
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    name = body.get("model")
    if name is not None and not isinstance(name, str):
        raise _bad(f"'model' must be a string, got {_short(name)}", "model")
    if name is not None and name != model.name:
        raise APIError(404, f"the model {_short(name)} is not served here; this server serves {json.dumps(model.name)} "
                       "(GET /v1/models lists it)", param="model", code="model_not_found")
    try:
        way = model.way(body.get("direction"))
    except ChatError as err:
        raise _bad(str(err), "direction") from None
    task = model.task(way)
    texts = _turns(_messages(body, limits), task)
    if body.get("stop") not in (None, [], ""):
        raise _bad("stop sequences are not supported; generation ends at the end of the turn", "stop")
    if _number(body, "n", 1, integer=True) != 1:
        raise _bad("only n=1 is supported", "n")
    temperature = _number(body, "temperature", DEFAULT_TEMPERATURE)
    if not 0 <= temperature <= limits.max_temperature:
        raise _bad(f"'temperature' must be between 0 and {limits.max_temperature}, got {temperature}", "temperature")
    top_k = _number(body, "top_k", DEFAULT_TOP_K, integer=True, bounds=(0, MAX_TOP_K))
    top_p = _number(body, "top_p", None)
    if top_p is not None and not 0 < top_p <= 1:
        raise _bad(f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    seed = _number(body, "seed", None, integer=True, bounds=SEED_RANGE)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, name, None, integer=True)
    if max_tokens is not None and not 1 <= max_tokens <= limits.max_tokens:
        raise _bad(f"'{name}' must be between 1 and {limits.max_tokens}, got {max_tokens}", name)
    stream = body.get("stream") or False
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise _bad("'stream' must be true or false and 'stream_options' an object", "stream")

    messages = [model.encode_message(t, way) for t in texts]
    prompt = model.prompt(messages, way)
    most = limits.max_prompt_tokens
    if len(prompt) > most:
        raise _bad(f"the prompt is {len(prompt)} tokens; this model takes at most {most}; shorten the messages",
                   "messages", "context_length_exceeded")
    room = model.max_len - len(prompt)
    if max_tokens is None:
        max_tokens = min(limits.max_tokens, room)
    elif max_tokens > room:
        raise _bad(f"the prompt ({len(prompt)} tokens) and '{name}' ({max_tokens}) exceed the model's "
                   f"{model.max_len}-token context; ask for at most {room}", name, "context_length_exceeded")
    return Completion(way, task, prompt, max_tokens, float(temperature), top_k or None, top_p, seed, stream,
                      bool(options.get("include_usage")), messages)


def completion_body(ident: str, created: int, model: str, request: Completion, text: str, finish_reason: str,
                    completion_tokens: int) -> dict:
    return {
        "id": ident, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": finish_reason}],
        "usage": usage(request, completion_tokens),
        "direction": request.way.value, "task": request.task,
    }


def usage(request: Completion, completion_tokens: int) -> dict:
    prompt = len(request.prompt)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


def chunk_body(ident: str, created: int, model: str, request: Completion, delta: dict,
               finish_reason: str | None = None) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
            "direction": request.way.value, "task": request.task}


def sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
