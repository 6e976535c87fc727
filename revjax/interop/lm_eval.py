"""lm-evaluation-harness (0.4.13) on revjax runs: :class:`RevjaxLM`, registered with lm-eval as ``revjax``.

``lm_eval.simple_evaluate(model=RevjaxLM(run=RUN_DIR))`` evaluates a revjax run folder (its newest intact step, or
``step``) in the direction it reads (``direction`` picks forward or backward for a bidirectional model; default
forward). ``revjax lm-eval --model revjax --model_args run=RUN_DIR,direction=backward --tasks …`` is lm-eval's own
command line with this model known (:mod:`revjax.interop.lm_eval_cli`). Text is tokenized as ``revjax eval``
tokenizes it and laid out in the model's reading order by :func:`revjax.eval.choice.model_order` (BOS first,
reversed when backward, the direction token after BOS for a bidirectional model).

* ``loglikelihood(context, continuation)`` is ``log P(context ⊕ continuation) − log P(context)``, each term in
  the model's own order, so the numbers compare across directions (forward: the continuation's tokens after the
  context, one sequence; backward: two sequences). Every request goes to :class:`revjax.eval.scorer.Scorer` in one
  batched pass; requests with one context share it. The text is split where lm-eval's ``hf`` model splits it
  (trailing spaces of the context go to the continuation; the whole text is tokenized and cut after as many tokens
  as the context has alone), so a forward run scores what ``--model hf,add_bos_token=True`` scores on its
  transformers export (``hf`` keeps the context's own tokens before the cut, which differ only where a token
  spans it). A text longer than the window loses tokens from the start of its context, as ``revjax eval`` crops
  an example: every request of one context loses as many as its longest one must, so they keep sharing it
  (``hf`` crops each request alone, BOS included).
  ``is_greedy`` is whether every continuation token is the model's greedy choice; a model reading backward sees the
  continuation before its context, so there it is always False (and a warning says so once).
* ``loglikelihood_rolling(text)`` is ``log P(text)`` of each document alone, in windows of at most ``max_length``
  tokens that each start with BOS (and the direction token), as training's continued rows do: the first window
  scores its tokens from BOS on, a later one keeps one token of context (the last one the previous window scored),
  and the last one as much context as fits. lm-eval's ``bits_per_byte`` of it measures what ``revjax eval``'s bits
  per byte measures (each document on its own instead of in a packed stream).
* ``generate_until(context, {until, max_gen_toks, …})`` generates with :class:`revjax.engine.Engine` from the
  context oriented by :func:`revjax.direction.orient_prompt`, and returns the generated text in reading order.
  Forward text ends before the first stop sequence it writes; backward text is written right to left, before the
  context, so it ends (on its left) after the first stop sequence it writes: what comes back is the text between
  that stop sequence and the context. BOS (a document boundary) always stops a row. A backward model does not
  answer: it writes what precedes its prompt, and a warning says so once.

A model whose backward reading reverses words or entities (``direction.unit`` ``word`` or ``entity``) is refused
when read backward: lm-eval splits requests into token spans of the reading-order text, which such a model never
reads; score it with ``revjax eval``. Read forward (a bidirectional model) it is evaluated as any other.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import lm_eval.models  # noqa: F401  (lm-eval's own models first: it fills an empty registry lazily, not a used one)
import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from revjax.direction import (ConversationMode, Direction, Specials, Unit, known_directions, orient_prompt,
                              reverses_text)
from revjax.engine import Engine
from revjax.errors import RevjaxError
from revjax.eval.choice import model_order
from revjax.eval.scorer import Request, Scorer

NOT_GREEDY_BACKWARD = ("a backward model reads a continuation before its context, so whether the continuation is "
                       "its greedy choice has no direction-neutral meaning; is_greedy is False for every request")
DEFAULT_MAX_GEN_TOKS = 256


class LMEvalError(RevjaxError, ValueError):
    """lm-eval asked for something a revjax model cannot do as given (one sentence, with what to do)."""


def not_answering(mode: ConversationMode | str) -> str:
    """The warning a backward model's generation gives: it writes the text before its prompt, not an answer."""
    mode = ConversationMode.parse(mode)
    before = ("what comes before its prompt (in a conversation, the question before an answer)"
              if mode is ConversationMode.SEQUENCE else "the text that comes before its prompt")
    return (f"this backward model ({mode.value} mode) writes {before}, so answering is not its task: "
            "generate_until returns that earlier text, in reading order")


def split_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context ids, continuation ids)`` as lm-eval's ``hf`` model splits a pair: the context's trailing spaces
    join the continuation, the whole text is tokenized and the context's own token count cuts it."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        return [], list(tokenizer.encode(continuation))
    whole = list(tokenizer.encode(context + continuation))
    cut = len(tokenizer.encode(context))
    return whole[:cut], whole[cut:]


def rolling_windows(n: int, room: int) -> list[tuple[int, int, int]]:
    """``(lo, first, end)`` per window over ``n`` tokens, each window holding tokens ``[lo, end)`` (at most
    ``room``) and scoring ``[first, end)``: every token scored once, a window after the first keeps at least its
    one token of context, the last as much as fits."""
    if room < 2:
        raise LMEvalError(f"a window of {room} text tokens cannot hold context and a target; raise max_length")
    out, first = [], 0
    while first < n:
        end = min(n, first + (room if first == 0 else room - 1))
        out.append((max(0, end - room), first, end))
        first = end
    return out


@register_model("revjax")
class RevjaxLM(LM):
    """A revjax run (``run``: its folder; ``step``: default newest intact) as an lm-eval model, read ``direction``.

    ``max_length`` bounds a scored or generated sequence (default and at most the model's ``sequence_len``),
    ``batch_tokens`` the tokens of one scoring call, ``batch_size`` the rows of one generation call (``auto``:
    16); ``seed`` seeds sampling when a task asks for it. ``max_batch_size`` and ``device`` (lm-eval's own
    options) are accepted and unused: jax places the model on its default device.
    """

    def __init__(self, run: str | None = None, step: int | None = None, direction: str | None = None, *,
                 max_length: int | None = None, batch_tokens: int = 8192, batch_size: int | str = 16,
                 seed: int = 0, max_batch_size: Any = None, device: Any = None, **unknown: Any):
        super().__init__()
        if unknown:
            raise LMEvalError(f"the revjax model has no option {', '.join(sorted(unknown))}; it takes run, step, "
                              "direction, max_length, batch_tokens, batch_size and seed")
        if run is None:
            raise LMEvalError("the revjax model needs its run folder: --model_args run=RUN_DIR")
        if not (str(batch_size).startswith("auto") or str(batch_size).isdigit()):
            raise LMEvalError(f"batch_size={batch_size} is neither a number of rows nor auto")
        from revjax.runs import load_run

        loaded = load_run(str(run), None if step is None else int(step), command="eval")
        self.run_dir, self.step, self.mode = loaded.run_dir, loaded.step, loaded.mode
        self.tokenizer, self.direction = loaded.tokenizer, loaded.direction
        self.graphdef, self.params = loaded.graphdef, loaded.params
        self.specials = Specials.from_tokenizer(self.tokenizer)
        self.way = self._way(direction)
        unit = Unit.parse(getattr(loaded, "unit", None) or Unit.TOKEN)
        if reverses_text(self.way, unit):
            raise LMEvalError(f"this model reads backward by {unit.value}s (direction.unit={unit.value}), which "
                              "lm-eval's token spans cannot express; evaluate it with revjax eval instead")
        limit = loaded.config.model.sequence_len
        self.max_length = limit if max_length is None else int(max_length)
        if not 2 < self.max_length <= limit:
            raise LMEvalError(f"max_length={max_length} is outside 3…{limit} (the model's sequence_len)")
        self.head = model_order([], self.direction, self.way, self.specials)[1]  # BOS, and the direction token
        self.scorer = Scorer(self.graphdef, self.params, pad_id=self.tokenizer.bos_id,
                             tokens_per_call=int(batch_tokens))
        self.engine = Engine(self.graphdef, self.params, chunk_size=16)
        self.batch_size = 16 if str(batch_size).startswith("auto") else max(1, int(batch_size))
        self.seed = int(seed)
        self._warned: set[str] = set()

    def _way(self, direction: str | None) -> Direction:
        ways = known_directions(self.direction)
        if direction is None:
            return ways[0]
        try:
            way = Direction.parse(str(direction))
        except ValueError:
            way = None
        if way not in ways:
            known = " or ".join(w.value for w in ways)
            raise LMEvalError(f"this {self.direction.value} model reads {known}, not {direction!r}; set "
                              f"direction={ways[0].value}" + (" or leave it out" if len(ways) == 1 else ""))
        return way

    @property
    def backward(self) -> bool:
        return self.way is Direction.BACKWARD

    @property
    def tokenizer_name(self) -> str:
        return f"revjax-{self.run_dir.name}"

    def get_model_info(self) -> dict:
        return {"revjax_run": str(self.run_dir), "revjax_step": self.step, "revjax_direction": self.way.value}

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, UserWarning, stacklevel=3)

    def _order(self, body: Sequence[int]) -> tuple[tuple[int, ...], int]:
        ids, first = model_order(list(body), self.direction, self.way, self.specials)
        return tuple(int(t) for t in ids), first

    # ---- loglikelihood -----------------------------------------------------------------------------------------

    def _pair_requests(self, context: list[int], continuation: list[int]) -> list[Request]:
        """The requests whose sums give ``log P(context ⊕ continuation) − log P(context)``: ``+first − rest``."""
        if len(context) + len(continuation) > self.max_length - self.head:
            raise LMEvalError(f"a continuation of {len(continuation)} tokens does not fit the model's "
                              f"{self.max_length}-token window; shorten it or raise max_length")
        body, start = context + continuation, len(context)
        ids, first = self._order(body)
        if not self.backward:
            return [Request(ids, first + start, len(ids))]
        full = Request(ids, first, len(ids))
        if start == 0:
            return [full]
        ctx, ctx_first = self._order(context)
        return [full, Request(ctx, ctx_first, len(ctx))]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if self.backward and requests:
            self._warn_once(NOT_GREEDY_BACKWARD)
        pairs = [split_pair(self.tokenizer, *request.args) for request in requests]
        longest: dict[tuple, int] = {}  # per context, its longest text: what cropping that context must cut
        for context, continuation in pairs:
            key = tuple(context)
            longest[key] = max(longest.get(key, 0), len(context) + len(continuation))
        plans, unique, groups = [], {}, {}
        for context, continuation in pairs:
            cut = max(0, longest[tuple(context)] - (self.max_length - self.head))
            plan = self._pair_requests(context[cut:], continuation)
            for r in plan:
                unique.setdefault(r, len(unique))
            groups.setdefault(tuple(context), []).append(unique[plan[0]])  # one context: shared prefix
            plans.append(plan)
        sums, greedy = self.scorer.score(list(unique), groups=list(groups.values()))
        out = []
        for request, plan in zip(requests, plans):
            score = float(sums[unique[plan[0]]] - sum(sums[unique[r]] for r in plan[1:]))
            result = (score, bool(greedy[unique[plan[0]]]) and not self.backward)
            self.cache_hook.add_partial("loglikelihood", request.args, result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        plans, unique = [], {}
        for request in requests:
            (text,) = request.args
            ids, first = self._order(self.tokenizer.encode(text))
            head, body = ids[:first], ids[first:]
            plan = []
            for lo, start, end in rolling_windows(len(body), self.max_length - first):
                window = Request(head + body[lo:end], first + start - lo, first + end - lo)
                plan.append(unique.setdefault(window, len(unique)))
            plans.append(plan)
        sums, _ = self.scorer.score(list(unique))
        out = []
        for request, plan in zip(requests, plans):
            total = float(np.sum(sums[plan])) if plan else 0.0
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
            out.append(total)
        return out

    # ---- generation --------------------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if self.backward and requests:
            self._warn_once(not_answering(self.mode))
        out: list[str | None] = [None] * len(requests)
        jobs: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            settings = _settings(request.args[1])
            jobs.setdefault(settings, []).append(i)
        for settings, members in jobs.items():
            prompts = {i: self._prompt(requests[i].args[0], settings[1]) for i in members}
            order = sorted(members, key=lambda i: len(prompts[i]))
            for at in range(0, len(order), self.batch_size):
                chunk = order[at: at + self.batch_size]
                for i, text in zip(chunk, self._generate([prompts[i] for i in chunk], settings)):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out  # type: ignore[return-value]

    def _prompt(self, context: str, max_new: int) -> list[int]:
        """The model-order prompt of ``context``, its text cut (on the side away from the generation) to leave
        ``max_new`` positions."""
        oriented = orient_prompt([self.tokenizer.bos_id, *self.tokenizer.encode(context)], self.direction,
                                 self.specials, generate=self.way)
        head, body = oriented[: self.head], oriented[self.head:]
        keep = max(0, self.max_length - max_new - self.head)
        return head + body[max(0, len(body) - keep):]  # model order: the generation continues the body's end

    def _generate(self, prompts: list[list[int]], settings: tuple) -> list[str]:
        """Reading-order texts generated from ``prompts``, each cut at its first stop sequence."""
        until, max_new, temperature, top_k, top_p = settings
        max_new = max(1, min(max_new, self.max_length - max(map(len, prompts))))
        generated: list[list[int]] = [[] for _ in prompts]
        stream = self.engine.stream(prompts, max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                                    seed=self.seed, stop_ids=[self.tokenizer.bos_id],
                                    max_len=max(map(len, prompts)) + max_new)
        for chunk in stream:
            for ids, new in zip(generated, chunk.tokens):
                ids.extend(new)
            if all(_stop_at(self._text(ids), until, self.backward) is not None for ids in generated):
                break  # every row has written a stop sequence
        texts = [self._text(ids) for ids in generated]
        return [_cut(text, until, self.backward) for text in texts]

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids[::-1] if self.backward else ids)


def _settings(gen_kwargs: dict) -> tuple:
    """``(stop sequences, max new tokens, temperature, top_k, top_p)`` of lm-eval's generation arguments (greedy
    unless ``do_sample``, or a temperature above 0 without it)."""
    kwargs = dict(gen_kwargs or {})
    until = kwargs.get("until") or []
    until = (until,) if isinstance(until, str) else tuple(until)
    temperature = float(kwargs.get("temperature") or 0.0)
    if not kwargs.get("do_sample", temperature > 0):
        temperature = 0.0
    top_k, top_p = kwargs.get("top_k"), kwargs.get("top_p")
    return (until, int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)), temperature,
            None if top_k is None else int(top_k), None if top_p is None else float(top_p))


def _stop_at(text: str, until: Sequence[str], backward: bool) -> int | None:
    """Where the kept text ends (forward: the leftmost start of a stop sequence) or starts (backward: the
    rightmost end of one, the first written right to left); None when there is none."""
    if backward:
        ends = [i + len(s) for s in until if s and (i := text.rfind(s)) >= 0]
        return max(ends, default=None)
    starts = [i for s in until if s and (i := text.find(s)) >= 0]
    return min(starts, default=None)


def _cut(text: str, until: Sequence[str], backward: bool) -> str:
    at = _stop_at(text, until, backward)
    if at is None:
        return text
    return text[at:] if backward else text[:at]
