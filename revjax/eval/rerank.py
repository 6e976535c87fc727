"""Best-of-N with a reverse reward: a generator samples N answers, a backward reranker scores how well each answer
predicts its question, and a selection rule picks one.

For each question the generator (a forward model, or a bidirectional one generating forward) samples N candidate
answers. Every candidate gets two scores, both through :class:`revjax.eval.scorer.Scorer`:

* ``forward``: the generator's own ``log P(answer | question)``, the answer taken as a complete turn (its content
  and the ``<|assistant_end|>`` that closes it) after the forward chat prompt;
* ``reverse`` (the reverse reward): the reranker's ``log P(question | answer)``. A backward model in ``sequence``
  conversation mode reads a conversation as ``B ae rev(a) as ue rev(q) us``, so the reward is the sum over the
  user turn's tokens (``ue … us``) that follow the assistant turn; a bidirectional reranker reads the same layout
  after its ``<|backward|>`` marker; a word or entity reranker (BackChat) reads each message as the tokens of its
  reversed text. :func:`reverse_request` is the one place that lays the request out.

Only a model whose order puts the answer before the question can rerank (backward or bidirectional, ``sequence``
mode); a forward reranker, or a backward one in ``turn`` mode, is refused. The two models must share a tokenizer
(the identity hash each run records). All candidates of all questions of a batch are scored in one
:meth:`~revjax.eval.scorer.Scorer.score` call per model.

Selection rules (:data:`RULES`), ties broken by the earliest sample: ``pass@1`` (the first sample), ``forward``
(best forward log-probability), ``reverse`` (best reverse reward) and ``combined`` (best ``reverse + weight ×
forward``; weight 0 is the reverse reward alone). Best-of-n for n below N uses the first n samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from revjax.direction import (ConversationMode, Direction, Specials, Unit, chat_prompt, chat_reply, chat_stop_token,
                              orient_conversation)
from revjax.errors import RevjaxError
from revjax.eval.choice import TextUnits, bidirectional_index
from revjax.eval.scorer import Request, Scorer

RULES = ("pass@1", "forward", "reverse", "combined")
CAN_RERANK = ("a backward or bidirectional model trained in sequence conversation mode (what `revjax chain "
              "direction.direction=backward` trains), whose order puts the answer before the question")


class RerankError(RevjaxError):
    """A generator and reranker that cannot work together, or a reranking request that cannot be met."""


@dataclass
class RankModel:
    """A model as reranking uses it: graphdef and params, tokenizer, direction, conversation mode and a scorer."""

    graphdef: Any
    params: Any
    tokenizer: Any
    direction: Direction
    mode: ConversationMode
    max_len: int
    name: str = "model"
    scorer: Scorer | None = None
    tasks_dir: Path | None = None  # where the run's configuration keeps task downloads (GSM8K's offline copy)
    unit: Unit = Unit.TOKEN  # what the model's backward reading reverses

    def __post_init__(self) -> None:
        self.unit = Unit.parse(self.unit)
        self.direction = Direction.parse(self.direction)
        self.mode = ConversationMode.parse(self.mode)
        self.specials = Specials.from_tokenizer(self.tokenizer)
        if self.scorer is None:
            self.scorer = Scorer(self.graphdef, self.params, pad_id=self.tokenizer.bos_id)

    @classmethod
    def from_run(cls, run_dir: str | Path, step: int | None = None) -> "RankModel":
        """The model of a revjax run folder (:func:`revjax.runs.load_run`), newest intact step or ``step``."""
        from revjax.runs import load_run

        return cls.from_loaded(load_run(run_dir, step, command="eval"))

    @classmethod
    def from_loaded(cls, run: Any, scorer: Scorer | None = None) -> "RankModel":
        """The model of a loaded run (:func:`revjax.runs.load_run`, or ``revjax eval``'s loaded run and its
        ``scorer``)."""
        return cls(run.graphdef, run.params, run.tokenizer, run.direction, run.mode, run.config.model.sequence_len,
                   name=run.run_dir.resolve().name, scorer=scorer, tasks_dir=run.config.tasks_path(), unit=run.unit)

    def identity(self) -> str:
        return self.tokenizer.identity()


def check_pair(generator: RankModel, reranker: RankModel) -> None:
    """Refuse (:class:`RerankError`, one sentence) a pair that cannot rerank: different tokenizers, a generator that
    does not write answers forward, or a reranker whose order does not put the answer before the question."""
    if generator.identity() != reranker.identity():
        raise RerankError(f"the generator {generator.name} and the reranker {reranker.name} use different tokenizers "
                          f"({generator.identity()} and {reranker.identity()}); rerank with models trained on the "
                          "same tokenizer")
    if generator.direction is Direction.BACKWARD:
        raise RerankError(f"the generator {generator.name} is a backward model, which cannot write answers; generate "
                          "with a forward or bidirectional model")
    if reranker.direction is Direction.FORWARD or reranker.mode is not ConversationMode.SEQUENCE:
        raise RerankError(f"{reranker.name} ({reranker.direction.value}, {reranker.mode.value} mode) cannot score a "
                          f"question given its answer; only {CAN_RERANK} can rerank")


def _reading_conversation(question: Sequence[Sequence[int]], answer: Sequence[int],
                          specials: Specials) -> tuple[list[int], int]:
    """Reading-order ids ``B us q ue [as a ae us q ue …] as answer ae`` and how many ids precede the final
    assistant turn after BOS (the question turns)."""
    s, ids = specials, [specials.bos]
    for i, content in enumerate(question):
        start, end = (s.user_start, s.user_end) if i % 2 == 0 else (s.assistant_start, s.assistant_end)
        ids += [start, *map(int, content), end]
    before = len(ids) - 1
    return ids + [s.assistant_start, *map(int, answer), s.assistant_end], before


def reverse_request(question: Sequence[Sequence[int]], answer: Sequence[int], reranker: RankModel) -> Request:
    """The reranker's request for ``log P(question | answer)``: the conversation in the reranker's model order
    (``B [K] ae rev(answer) as ue rev(q) us``), scored over the question turns that follow the answer.

    ``question`` is the reading-order message contents before the answer (``[user]``, or ``[user, assistant, …,
    user]``), ``answer`` the reading-order content of the candidate reply. A word or entity reranker reads each
    content as the tokens of its reversed text."""
    if reranker.unit is not Unit.TOKEN:
        reread = TextUnits(reranker.unit, reranker.tokenizer).reversed_ids
        question, answer = [reread(c) for c in question], reread(answer)
    reading, before = _reading_conversation(question, answer, reranker.specials)
    index = bidirectional_index(Direction.BACKWARD)
    oriented, _ = orient_conversation(reading, [0] * len(reading), reranker.direction, reranker.specials,
                                      mode=reranker.mode, index=index, unit=reranker.unit)
    return Request(tuple(oriented), len(oriented) - before, len(oriented))


def _generate_way(model: RankModel) -> Direction | None:
    return Direction.FORWARD if model.direction is Direction.BIDIRECTIONAL else None


def forward_prompt(question: Sequence[Sequence[int]], generator: RankModel) -> list[int]:
    """The generator's model-order chat prompt for a question (it ends with ``<|assistant_start|>``)."""
    return chat_prompt(question, generator.direction, generator.specials, mode=generator.mode,
                       generate=_generate_way(generator))


def forward_request(question: Sequence[Sequence[int]], answer: Sequence[int], generator: RankModel) -> Request:
    """The generator's request for ``log P(answer | question)``: the chat prompt, then the answer and its
    ``<|assistant_end|>``, scored over the answer and its end."""
    prompt = forward_prompt(question, generator)
    ids = prompt + [int(t) for t in answer] + [generator.specials.assistant_end]
    return Request(tuple(ids), len(prompt), len(ids))


def choose(forward: np.ndarray, reverse: np.ndarray, weight: float, n: int | None = None) -> dict[str, np.ndarray]:
    """Per question (rows of the ``(Q, N)`` score arrays), the index each rule of :data:`RULES` picks among the
    first ``n`` samples (default all); ``np.argmax`` keeps the earliest of equal scores."""
    n = forward.shape[1] if n is None else n
    forward, reverse = np.asarray(forward)[:, :n], np.asarray(reverse)[:, :n]
    return {"pass@1": np.zeros(len(forward), int), "forward": np.argmax(forward, axis=1),
            "reverse": np.argmax(reverse, axis=1), "combined": np.argmax(reverse + weight * forward, axis=1)}


@dataclass
class Candidate:
    """One sampled answer: its reading-order ids and text, and its scores."""

    ids: list[int]
    text: str
    forward: float
    reverse: float
    combined: float

    def as_dict(self) -> dict:
        return {"text": self.text, "forward": self.forward, "reverse": self.reverse, "combined": self.combined}


@dataclass
class Ranking:
    """The candidates of one question and the index each rule chose (over all of them)."""

    candidates: list[Candidate]
    chosen: dict[str, int] = field(default_factory=dict)

    @property
    def best(self) -> Candidate:
        """The candidate the combination chose (the reverse reward's choice when the weight is 0)."""
        return self.candidates[self.chosen["combined"]]


class Reranker:
    """A generator and a reranker (refused by :func:`check_pair` when they cannot work together) and the weight of
    the forward log-probability in the combined score."""

    def __init__(self, generator: RankModel, reranker: RankModel, *, weight: float = 1.0):
        check_pair(generator, reranker)
        if not np.isfinite(weight):
            raise RerankError(f"the weight must be a finite number, got {weight}")
        self.generator, self.reranker, self.weight = generator, reranker, float(weight)

    def sample(self, questions: Sequence[Sequence[Sequence[int]]], n: int, *, temperature: float = 1.0,
               seed: int = 0, max_new_tokens: int = 64) -> list[list[list[int]]]:
        """``n`` sampled answers (reading-order ids, turn end removed) per question."""
        from revjax.engine import Engine

        if n < 1:
            raise RerankError(f"best-of needs at least one sample, got {n}")
        if n > 1 and temperature <= 0:
            raise RerankError("best-of-N with N > 1 needs a temperature above 0, or every sample is the same")
        g = self.generator
        prompts = [forward_prompt(q, g) for q in questions]
        longest = max(map(len, prompts))
        room = g.max_len - longest
        if room < 1:
            raise RerankError(f"a question of {longest} tokens leaves no room to answer in {g.name}'s "
                              f"{g.max_len}-token context; ask shorter questions")
        stop = chat_stop_token(g.direction, g.specials, mode=g.mode, generate=_generate_way(g))
        engine = Engine(g.graphdef, g.params, tokenizer=g.tokenizer)
        rows = engine.generate(prompts, min(max_new_tokens, room), num_samples=n, temperature=temperature, seed=seed,
                               stop_ids=[stop], max_len=longest + min(max_new_tokens, room),
                               tool_order="forward").tokens
        answers = [chat_reply(ids, g.direction, g.specials, mode=g.mode, generate=_generate_way(g)) for ids in rows]
        return [answers[i * n: (i + 1) * n] for i in range(len(questions))]

    def score(self, questions: Sequence[Sequence[Sequence[int]]],
              answers: Sequence[Sequence[Sequence[int]]]) -> tuple[np.ndarray, np.ndarray]:
        """``(forward, reverse)``, each ``(Q, N)``: every candidate scored in one scorer call per model."""
        n = len(answers[0]) if answers else 0
        if any(len(a) != n for a in answers):
            raise RerankError("every question needs the same number of candidate answers")
        pairs = [(q, a) for q, cands in zip(questions, answers) for a in cands]
        forward, _ = self.generator.scorer.score([forward_request(q, a, self.generator) for q, a in pairs])
        reverse, _ = self.reranker.scorer.score([reverse_request(q, a, self.reranker) for q, a in pairs])
        return forward.reshape(len(questions), n), reverse.reshape(len(questions), n)

    def rank(self, questions: Sequence[Sequence[Sequence[int]]], answers: Sequence[Sequence[Sequence[int]]],
             ) -> list[Ranking]:
        """The candidates of each question with their scores and each rule's choice."""
        forward, reverse = self.score(questions, answers)
        picks = choose(forward, reverse, self.weight)
        decode = self.generator.tokenizer.decode
        out = []
        for i, cands in enumerate(answers):
            candidates = [Candidate(list(a), decode(list(a)), float(forward[i, j]), float(reverse[i, j]),
                                    float(reverse[i, j] + self.weight * forward[i, j])) for j, a in enumerate(cands)]
            out.append(Ranking(candidates, {rule: int(picks[rule][i]) for rule in RULES}))
        return out

    def best_of(self, questions: Sequence[Sequence[Sequence[int]]], n: int, *, temperature: float = 1.0,
                seed: int = 0, max_new_tokens: int = 64) -> list[Ranking]:
        """Sample ``n`` answers per question and rank them."""
        answers = self.sample(questions, n, temperature=temperature, seed=seed, max_new_tokens=max_new_tokens)
        return self.rank(questions, answers)


def accuracy_table(correct: np.ndarray, rankings_n: Sequence[int], forward: np.ndarray, reverse: np.ndarray,
                   weight: float) -> dict[str, dict[str, dict]]:
    """Per n of ``rankings_n`` and rule: the questions answered right (``correct`` is ``(Q, N)`` booleans), their
    share and its 95 % Wilson interval."""
    from revjax.tasks.facts import wilson_interval

    total = len(correct)
    table: dict[str, dict[str, dict]] = {}
    for n in rankings_n:
        picks = choose(forward, reverse, weight, n)
        row = {}
        for rule in RULES:
            right = int(correct[np.arange(total), picks[rule]].sum())
            low, high = wilson_interval(right, total)
            row[rule] = {"correct": right, "total": total, "accuracy": right / total, "low": low, "high": high}
        table[str(n)] = row
    return table


def evaluate_task(task: Any, reranker: Reranker, best_of: Sequence[int], *, limit: int | None = None,
                  temperature: float = 1.0, seed: int = 0, max_new_tokens: int = 64, batch_size: int = 16,
                  progress: Callable[[int], Any] | None = None, min_room: int = 16) -> dict:
    """Best-of-n accuracy of each rule on a generative task for every n of ``best_of``, with Wilson intervals.

    The first ``limit`` questions whose chat prompt leaves at least ``min_room`` tokens of the generator's context
    are asked (``skipped`` counts those passed over as too long).

    ``max(best_of)`` answers are sampled per question once; smaller n use the first n of them. Questions go in
    batches of ``batch_size`` (all their candidates scored in one call per model)."""
    from revjax.eval.generative import question_messages

    ns = sorted({int(n) for n in best_of})
    if not ns or ns[0] < 1:
        raise RerankError(f"--best-of takes positive sample counts, got {list(best_of)}")
    count = len(task) if not limit or limit <= 0 else min(len(task), limit)
    g, tokenizer = reranker.generator, reranker.generator.tokenizer
    kept, skipped = [], 0  # questions whose prompt leaves min_room tokens in the generator's context, in order
    for i in range(len(task)):
        if len(kept) == count:
            break
        question = question_messages(task[i], tokenizer)
        if len(forward_prompt(question, g)) + min_room <= g.max_len:
            kept.append((task[i], question))
        else:
            skipped += 1
    count = len(kept)
    if not count:
        raise RerankError(f"no question of {getattr(task, 'name', 'the task')} leaves {min_room} tokens to answer in "
                          f"{g.name}'s {g.max_len}-token context; use a model with a longer context")
    forward, reverse, correct, details = [], [], [], []
    for at in range(0, count, batch_size):
        conversations = [c for c, _ in kept[at: at + batch_size]]
        questions = [q for _, q in kept[at: at + batch_size]]
        answers = reranker.sample(questions, ns[-1], temperature=temperature, seed=seed + at,
                                  max_new_tokens=max_new_tokens)
        f, r = reranker.score(questions, answers)
        forward.append(f)
        reverse.append(r)
        for c, q, cands, fs, rs in zip(conversations, questions, answers, f, r):
            texts = [tokenizer.decode(a) for a in cands]
            right = [bool(task.evaluate(c, text)) for text in texts]
            correct.append(right)
            details.append({"question": tokenizer.decode(q[-1]), "candidates": [
                {"text": text, "forward": float(x), "reverse": float(y), "correct": ok}
                for text, x, y, ok in zip(texts, fs, rs, right)]})
        if progress is not None:
            progress(len(conversations))
    forward_all, reverse_all, correct = np.concatenate(forward), np.concatenate(reverse), np.asarray(correct, bool)
    table = accuracy_table(correct, ns, forward_all, reverse_all, reranker.weight)
    return {"task": getattr(task, "name", type(task).__name__), "questions": count, "skipped": skipped,
            "best_of": ns,
            "weight": reranker.weight, "temperature": temperature, "seed": seed,
            "generator": reranker.generator.name, "reranker": reranker.reranker.name, "results": table,
            "any_correct": float(np.mean(correct.any(axis=1))),
            "questions_detail": details}
