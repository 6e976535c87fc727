"""Reversal units at inference: chat prompts, replies and streams, ``revjax serve``, training samples, choice
scoring, generative chat evaluation and lm-eval, for word and entity units, against hand-built model-order ids."""

import functools
import json

import jax
import numpy as np
import pytest
from flax import nnx

from revjax import engine as engine_module
from revjax.chat import cli as chat_cli
from revjax.chat import server as chat_server
from revjax.chat.protocol import Limits
from revjax.chat.session import ChatModel, ChatSession, run_unit
from revjax.direction import Unit, reverse_units
from revjax.eval.chat import joint_answers, letter_answers
from revjax.eval.choice import score_examples
from revjax.eval.generative import generative_replies, oriented_messages, question_messages
from revjax.eval.icl import EvalError, Example
from revjax.eval.samples import chat_samples, greedy_samples
from revjax.eval.scorer import Scorer
from tests.helpers import model, run_dir  # noqa: F401  (the tiny chat run's fixtures)

# the golden tokenizer's specials, and encodings of hand-reversed texts (checked with the tokenizer by hand)
BOS, US, UE, AS, AE, FWD, BWD = 2037, 2038, 2039, 2040, 2041, 2046, 2047
SPECIAL = set(range(2037, 2048))
TYPED, TYPED_REV = "Four apples", [97, 517, 718, 482, 324]  # "apples Four"
FOUR_APPLES, HI = [70, 324, 877, 718], [383]  # "Four apples", "hi"
GREEDY = {"temperature": 0.0, "top_k": 0, "max_tokens": 6, "seed": 0}


def variant(model, direction: str, mode: str, unit: str) -> ChatModel:
    return ChatModel(model.graphdef, model.params, model.tokenizer, direction, mode, model.max_len, name=model.name,
                     unit=unit)


def greedy(model, prompt, n, stop, engine=None):
    """The greedy model-order continuation of ``prompt`` (at most ``n`` ids), cut before ``stop``, by ``engine``
    (default: the one :func:`revjax.engine.generate` makes)."""
    engine = engine or engine_module.Engine(model.graphdef, model.params)
    ids = engine.generate([prompt], n, stop_ids=[stop], max_len=len(prompt) + n).tokens[0]
    ids = [int(t) for t in ids]
    return ids[:ids.index(stop)] if stop in ids else ids


# ---- chat session -----------------------------------------------------------------------------------------------

def test_reverse_task_with_word_units(model):
    chat = variant(model, "backward", "sequence", "word")
    session = ChatSession(chat)
    assert session.task == "reverse"
    reply = session.reply(TYPED, **GREEDY)
    assert reply.prompt == [BOS, AE, *TYPED_REV, AS]  # the typed answer's reversed text, whole
    written = greedy(chat, reply.prompt, 6, US, chat.engine)
    if written[:1] == [UE]:
        written = written[1:]
    cut = next((i for i, t in enumerate(written) if t in SPECIAL), len(written))
    pieces = []
    for piece in reply:
        assert piece.prepend
        pieces.insert(0, piece.text)
    assert reply.tokens == written[:cut]  # model order: the reversed text's ids, as a later prompt takes them
    assert reply.text == "".join(pieces) == reverse_units(chat.decode(written[:cut]), "word")
    assert session.history[0].reversed and session.history[0].ids == written[:cut]
    second = session.prompt_for("hi", session.generate)
    assert second == [BOS, AE, *TYPED_REV, AS, UE, *written[:cut], US, AE, *HI, AS]  # the new answer goes last


def test_answer_task_with_entity_units_and_token_units_unchanged(model):
    chat = variant(model, "backward", "turn", "entity")
    session = ChatSession(chat)
    # "Four apples": "Four" and "apples" are not both entity words, so entity reads it as word does
    assert session.prompt_for(TYPED, session.generate) == [BOS, US, *TYPED_REV, UE, AS]
    names = chat.encode_message("met Ada Lovelace", session.generate)
    assert chat.decode(names) == "Ada Lovelace met"
    token = variant(model, "backward", "turn", "token")
    assert ChatSession(token).prompt_for(TYPED, token.way()) == [BOS, US, *FOUR_APPLES[::-1], UE, AS]


def test_bidirectional_switch_reencodes_history(model):
    chat = variant(model, "bidirectional", "sequence", "word")
    session = ChatSession(chat, generate="backward")
    reply = session.reply(TYPED, **GREEDY)
    assert reply.prompt == [BOS, BWD, AE, *TYPED_REV, AS]
    reply.run()
    session.set_direction("forward")
    question = chat.encode(reply.text)  # read forward, the model's question is encoded from its reading-order text
    assert session.prompt_for("hi", session.generate) == [BOS, FWD, US, *question, UE, AS, *FOUR_APPLES, AE,
                                                         US, *HI, UE, AS]


def test_cli_names_the_unit(model):
    session = ChatSession(variant(model, "backward", "sequence", "word"))
    text = chat_cli.describe(session)
    assert "a backward model (sequence conversations, word units)" in text and "Reverse task" in text
    assert "units" not in chat_cli.describe(ChatSession(variant(model, "backward", "sequence", "token")))


def test_run_unit_reads_the_run_or_its_config():
    class Direction:
        unit = "entity"

    class Config:
        direction = Direction()

    class Run:
        config = Config()

    assert run_unit(Run()) is Unit.ENTITY
    run = Run()
    run.unit = Unit.WORD
    assert run_unit(run) is Unit.WORD
    Run.config = object()  # an older config without direction.unit
    assert run_unit(Run()) is Unit.TOKEN


# ---- revjax serve --------------------------------------------------------------------------------------------------

def test_serve_word_units_stream_in_reading_order(model):
    from fastapi.testclient import TestClient

    chat = variant(model, "backward", "sequence", "word")
    with TestClient(chat_server.create_app(chat, Limits(max_tokens=16)), base_url="http://localhost") as client:
        info = client.get("/v1/models").json()["data"][0]
        assert info["unit"] == "word" and info["tasks"] == {"backward": "reverse"}
        body = {"messages": [{"role": "user", "content": TYPED}], "temperature": 0, "max_tokens": 6}
        plain = client.post("/v1/chat/completions", json=body).json()
        expected = ChatSession(chat).reply(TYPED, **GREEDY).run()
        assert plain["task"] == "reverse" and plain["choices"][0]["message"]["content"] == expected
        assert plain["usage"]["prompt_tokens"] == len([BOS, AE, *TYPED_REV, AS])  # "Four apples" itself is 4 ids
        streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
    lines = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    growing, content = "", ""
    for chunk in map(json.loads, lines[:-1]):
        delta = chunk["choices"][0]["delta"]
        growing, content = delta.get("prepend", "") + growing, content + delta.get("content", "")
    assert growing == content == expected


# ---- training samples ---------------------------------------------------------------------------------------------

def test_greedy_samples_word_units(model):
    out = greedy_samples(model.graphdef, model.params, model.tokenizer, "bidirectional", ["backward"], model.max_len,
                         max_new_tokens=5, unit="word")
    given = [70, 783, 46, 293, 509, 112, 276, 347, 266, 327]  # "France. of capital the is"
    written = greedy(model, [BOS, BWD, *given], 5, BOS)
    assert not SPECIAL & set(written)
    assert out["backward"][0] == reverse_units(model.decode(given + written), "word")
    assert out["backward"][0].endswith("is the capital of France.")


def test_chat_samples_word_units(model):
    out = chat_samples(model.graphdef, model.params, model.tokenizer, "backward", "sequence", ["backward"],
                       model.max_len, max_new_tokens=6, unit="word")
    answer = "I am a language model trained with revjax."
    prompt = [BOS, AE, *model.encode("revjax. with trained model language a am I"), AS]
    written = greedy(model, prompt, 6, US)
    written = written[1:] if written[:1] == [UE] else written
    written = written[:next((i for i, t in enumerate(written) if t in SPECIAL), len(written))]
    assert out["backward"][1] == f"{answer} → {reverse_units(model.decode(written), 'word')}"


# ---- choice scoring -------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def plain_forward(graphdef):
    return jax.jit(lambda params, ids: nnx.merge(graphdef, params)(ids))


def logits_of(model, ids):
    """The model's logits for ``ids`` by one plain forward pass (padded at the end to 32: causal, so unchanged)."""
    padded = np.full((1, 32), BOS, np.int32)
    padded[0, :len(ids)] = ids
    return np.asarray(plain_forward(model.graphdef)(model.params, padded))[0, :len(ids)].astype(np.float64)


def log_p(model, ids):
    """log P of ids[1:] given what precedes each."""
    logits = logits_of(model, ids)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(sum(logp[t - 1, ids[t]] for t in range(1, len(ids))))


@pytest.mark.parametrize("direction,head", [("backward", [BOS]), ("bidirectional", [BOS, BWD])])
def test_choice_score_word_units_by_hand(model, direction, head):
    tok = model.tokenizer
    context, options = "The sky is", [" blue", " green"]
    sequences = [tok.encode(context + o, prepend=BOS) for o in options]
    start = len(tok.encode(context, prepend=BOS))
    assert all(s[:start] == sequences[0][:start] for s in sequences)
    example = Example(sequences, [start] * 2, [len(s) for s in sequences], gold=0)
    scorer = Scorer(model.graphdef, model.params, pad_id=BOS)
    (result,) = score_examples([example], "multiple_choice", scorer, direction, "backward", model.specials,
                               unit="word", tokenizer=tok)
    ctx = [*head, 269, 1966, 121, 685]  # "is sky The"
    full = {" blue": [*head, 1121, 559, 327, 1966, 121, 685], " green": [*head, *tok.encode("green is sky The")]}
    expected = [log_p(model, full[o]) - log_p(model, ctx) for o in options]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-4)
    assert result.tokens == [len(s) - start for s in sequences]
    with pytest.raises(EvalError, match="pass its tokenizer"):
        score_examples([example], "multiple_choice", scorer, direction, "backward", model.specials, unit="word")


def test_choice_word_units_crop_to_fit(model):
    tok = model.tokenizer
    text = "one two three four five six seven eight nine ten"
    sequence = tok.encode(text + " eleven", prepend=BOS)
    start = len(tok.encode(text, prepend=BOS))
    example = Example([sequence, sequence], [start] * 2, [len(sequence)] * 2, gold=0)
    scorer = Scorer(model.graphdef, model.params, pad_id=BOS)
    (result,) = score_examples([example], "multiple_choice", scorer, "backward", "backward", model.specials,
                               unit="word", tokenizer=tok, max_len=8)
    def model_ids(kept):  # the last ``kept`` reading-order tokens, reversed as text
        return [BOS, *tok.encode(reverse_units(tok.decode(sequence[len(sequence) - kept:]), "word"))]

    kept = max(k for k in range(1, 8) if len(model_ids(k)) <= 8)  # the most that fit (not 7: see the assert)
    assert kept < 7 and len(model_ids(kept + 1)) > 8
    full = model_ids(kept)
    ctx_text = tok.decode(sequence[len(sequence) - kept:start])
    expected = log_p(model, full) - log_p(model, [BOS, *tok.encode(reverse_units(ctx_text, "word"))])
    np.testing.assert_allclose(result.scores[0], expected, rtol=1e-4, atol=1e-4)


# ---- generative and categorical chat evaluation -----------------------------------------------------------------------

CONVERSATION = {"messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "What is two plus two?"},
                             {"role": "assistant", "content": "Four"}], "letters": ["A", "B"]}


def test_question_messages_reversed_text(model):
    tok = model.tokenizer
    assert question_messages(CONVERSATION, tok, "backward", "word") == [tok.encode("two? plus two is What\n\nbrief. Be")]
    assert question_messages(CONVERSATION, tok, "forward", "word") == question_messages(CONVERSATION, tok)
    assert oriented_messages(CONVERSATION, "backward", "token")[0]["content"] == "Be brief.\n\nWhat is two plus two?"
    with pytest.raises(EvalError, match="plain text"):
        oriented_messages({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "backward", "word")


def test_generative_replies_word_units(model):
    replies = generative_replies(model.graphdef, model.params, model.tokenizer, [CONVERSATION], "backward", "backward",
                                 "turn", max_new_tokens=6, unit="word")
    prompt = [BOS, US, *model.encode("two? plus two is What\n\nbrief. Be"), UE, AS]
    written = greedy(model, prompt, 6, AE)
    assert replies == [reverse_units(model.decode(written), "word")]


def test_letter_and_joint_answers_word_units(model):
    tok = model.tokenizer
    scorer = Scorer(model.graphdef, model.params, pad_id=BOS)
    (letter,) = letter_answers([CONVERSATION], scorer, tok, "backward", "backward", "turn", "word")
    prompt = [BOS, US, *tok.encode("two? plus two is What\n\nbrief. Be"), UE, AS]
    last = logits_of(model, prompt)[-1]
    assert letter == "AB"[int(np.argmax([last[tok.encode("A")[0]], last[tok.encode("B")[0]]]))]
    (joint,) = joint_answers([CONVERSATION], scorer, tok, "backward", "backward", "sequence", "word")
    rev = tok.encode("two? plus two is What\n\nbrief. Be")
    totals = [log_p(model, [BOS, AE, *tok.encode(x), AS, UE, *rev, US]) for x in "AB"]
    assert joint == "AB"[int(np.argmax(totals))]
    jax.clear_caches()


# ---- lm-eval ------------------------------------------------------------------------------------------------------------

def test_lm_eval_refuses_backward_text_units(run_dir, monkeypatch):  # noqa: F811
    import revjax.runs
    from revjax.interop.lm_eval import LMEvalError, RevjaxLM

    loaded = revjax.runs.load_run(run_dir, command="eval")
    loaded.__dict__["unit"] = Unit.WORD  # the loaded run's unit (a cached property)
    monkeypatch.setattr(revjax.runs, "load_run", lambda *a, **k: loaded)
    with pytest.raises(LMEvalError, match="reads backward by words"):
        RevjaxLM(run=str(run_dir), direction="backward")
    assert RevjaxLM(run=str(run_dir), direction="forward").way.value == "forward"
