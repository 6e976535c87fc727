"""Tests for the built-in reversal-curse study: the fact generator, its queries per direction and the scorer."""

import importlib.util
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import revjax.engine
from revjax.data.pipeline import TokenBatchDataset
from revjax.data.shards import split_shards
from revjax.direction import Specials
from revjax.tasks import get_task
from revjax.tasks.base import TaskError
from revjax.tasks.facts import (
    Fact,
    engine_generate,
    extract_name,
    fact_documents,
    fact_queries,
    make_facts,
    score_queries,
    probe_facts,
    wilson_interval,
)

FACT = Fact("Ana Bel", "mentor", "Cor Dun")


def test_facts_are_seeded_with_distinct_names():
    facts = make_facts(50, seed=3)
    assert facts == make_facts(50, seed=3) and facts != make_facts(50, seed=4)
    names = [n for f in facts for n in (f.subject, f.object)]
    assert len(set(names)) == 100 and all(len(n.split()) == 2 and n.istitle() for n in names)
    with pytest.raises(TaskError, match="at least one fact"):
        make_facts(0)


def test_documents_and_probe_facts_by_hand():
    facts = [Fact(f"A{i} X", "rival", f"B{i} Y") for i in range(4)]
    assert fact_documents(facts, demo_every=3) == [
        "A0 X's rival is B0 Y.", "B0 Y is the rival of A0 X.", "A1 X's rival is B1 Y.", "A2 X's rival is B2 Y.",
        "A3 X's rival is B3 Y.", "B3 Y is the rival of A3 X.",
    ]
    assert probe_facts(facts, demo_every=3) == facts[1:3]


def test_queries_per_direction_by_hand():
    forward = [(q.order, q.prompt, q.answer, q.asked) for q in fact_queries(FACT, "forward")]
    backward = [(q.order, q.prompt, q.answer, q.asked) for q in fact_queries(FACT, "backward")]
    assert forward == [("trained", "Ana Bel's mentor is", "Cor Dun", "object"),
                       ("reversed", "Cor Dun is the mentor of", "Ana Bel", "subject")]
    assert backward == [("trained", "'s mentor is Cor Dun.", "Ana Bel", "subject"),
                        ("reversed", " is the mentor of Ana Bel.", "Cor Dun", "object")]
    # each query's prompt plus its answer, on the side the model writes, is the statement of its order
    for q in fact_queries(FACT, "forward"):
        assert f"{q.prompt} {q.answer}." == FACT.statement(q.order)
    for q in fact_queries(FACT, "backward"):
        assert q.answer + q.prompt == FACT.statement(q.order)
    with pytest.raises(TaskError, match="forward or backward"):
        fact_queries(FACT, "bidirectional")


def test_extract_name():
    assert extract_name(" Cor Dun. Ana Bel's", "forward") == "Cor Dun"
    assert extract_name(" Cor Dun\nmore", "forward") == "Cor Dun"
    assert extract_name("Tomas Ek is old.\nAna Bel", "backward") == "Ana Bel"
    assert extract_name("Ana Bel", "backward") == "Ana Bel"


def test_scorer_counts_exact_matches_per_order():
    facts = [Fact(f"S{i} Aa", "editor", f"O{i} Bb") for i in range(3)]

    def fake(prompts, way):  # right on every trained query; on reversed ones right only for fact 0 (forward)
        replies = []
        for fact in facts:
            for q in fact_queries(fact, way):
                assert q.prompt == prompts[len(replies)]
                right = q.order == "trained" or (way == "forward" and fact is facts[0])
                name = q.answer if right else "Nobody Here"
                replies.append(f" {name}. Next" if way == "forward" else f"Earlier text.\n{name}")
        return replies

    got = score_queries(fake, facts, ["forward", "backward"])
    # Wilson 95%, n = 3, z² = 3.8415: 3/3 → [3/(3 + z²), 1] = [0.4385, 1]; 0/3 → [0, z²/(3 + z²)] = [0, 0.5615]
    assert got["forward"]["trained"] == pytest.approx(
        {"accuracy": 1.0, "correct": 3, "total": 3, "low": 0.43850, "high": 1.0}, abs=1e-4)
    assert got["forward"]["reversed"]["correct"] == 1 and got["forward"]["reversed"]["accuracy"] == 1 / 3
    assert got["backward"]["trained"]["accuracy"] == 1.0
    assert got["backward"]["reversed"] == pytest.approx(
        {"accuracy": 0.0, "correct": 0, "total": 3, "low": 0.0, "high": 0.56150}, abs=1e-4)
    with pytest.raises(TaskError, match="returned 1 continuations for 6 prompts"):
        score_queries(lambda p, w: ["x"], facts, ["forward"])


def test_wilson_interval_by_hand():
    # 5/10 at 95%: z = 1.959964, z²/n = 0.384146; centre (0.5 + 0.192073) / 1.384146 = 0.5,
    # half 1.959964 · sqrt(0.025 + 0.0096036) / 1.384146 = 0.263407
    assert wilson_interval(5, 10) == pytest.approx((0.236593, 0.763407), abs=2e-6)
    # 117/133: p = 0.8796992, z²/n = 0.0288832; centre (0.8796992 + 0.0144416) / 1.0288832 = 0.869040,
    # half 1.959964 · sqrt(0.00079570 + 0.00005429) / 1.0288832 = 0.055538
    assert wilson_interval(117, 133) == pytest.approx((0.813502, 0.924578), abs=2e-6)
    # 0/n keeps a width: [0, z²/(n + z²)]; a higher level is wider
    assert wilson_interval(0, 10) == pytest.approx((0.0, 3.841459 / 13.841459), abs=1e-6)
    assert wilson_interval(5, 10, 0.99)[0] < wilson_interval(5, 10)[0]
    for bad in ((11, 10, 0.95), (1, 0, 0.95), (-1, 5, 0.95), (1, 5, 1.0)):
        with pytest.raises(TaskError):
            wilson_interval(*bad)


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_engine_generate_orients_prompts_and_restores_replies(tok, monkeypatch, direction):
    """The engine sees each prompt in model order (marker after BOS when bidirectional) and its reply comes back in
    reading order: a backward reply is the text to the left of the prompt."""
    specials = Specials.from_tokenizer(tok)
    answer = tok.encode(" Cor Dun.")
    seen = []

    def fake_generate(graphdef, params, prompts, max_new_tokens, *, stop_ids, max_len):
        seen.extend(prompts)
        assert stop_ids == [tok.bos_id] and max_len == max(map(len, prompts)) + max_new_tokens
        return [list(answer) if p[-1] != specials.bos else [] for p in prompts]

    monkeypatch.setattr(revjax.engine, "generate", fake_generate)
    ways = ["forward", "backward"] if direction == "bidirectional" else [direction]
    for way in ways:
        seen.clear()
        replies = engine_generate(None, None, tok, direction, max_new_tokens=8)(["Ana Bel's mentor is"], way)
        body = tok.encode("Ana Bel's mentor is")
        marker = [specials.marker(way)] if direction == "bidirectional" else []
        want = [tok.bos_id, *marker, *(body[::-1] if way == "backward" else body)]
        assert seen == [want]
        assert replies == [tok.decode(answer if way == "forward" else answer[::-1])]


def test_reversal_facts_task(tok):
    train = get_task("reversal-facts", size=6, seed=1)
    test = get_task("reversal-facts", size=6, seed=1, split="test")
    facts = make_facts(6, seed=1)
    assert len(train) == 6 and len(test) == 4 and test.eval_only and not train.eval_only
    first = test[0]
    assert first["messages"][0]["content"] == f"Whose {facts[1].relation} is {facts[1].object}?"
    assert test.evaluate(first, f"{facts[1].object} is the {facts[1].relation} of {facts[1].subject}.")
    assert test.evaluate(first, facts[1].subject)
    assert not test.evaluate(first, f"{facts[1].object} is the {facts[1].relation} of Someone Else.")
    assert train.evaluate(train[2], train[2]["messages"][1]["content"])


def test_prepared_corpus_trains_and_validates_on_reversed_statements(tok, tmp_path, golden_dir):
    spec = importlib.util.spec_from_file_location("reversal_study", golden_dir.parent.parent / "scripts" /
                                                  "reversal_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    study.prepare(size=30, seed=0, out=tmp_path, demo_every=3)
    facts = make_facts(30, 0)

    def texts(split):
        return [t for path in split_shards(tmp_path, split) for t in pq.read_table(path)["text"].to_pylist()]

    assert sorted(texts("train")) == sorted(fact_documents(facts)) and len(texts("train")) == 40
    assert texts("train") != fact_documents(facts)  # shuffled
    assert texts("val") == [f.statement("reversed") for f in probe_facts(facts)]
    rows = list(TokenBatchDataset(tmp_path, "val", tok, batch_size=2, seq_len=16, packing="bos_aligned"))
    assert rows and all(np.all(x[:, 0] == tok.bos_id) for x, _ in rows)


def test_score_table_json_and_plot(tmp_path, golden_dir):
    spec = importlib.util.spec_from_file_location("reversal_study", golden_dir.parent.parent / "scripts" /
                                                  "reversal_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)

    def order(correct, total):
        low, high = wilson_interval(correct, total)
        return {"accuracy": correct / total, "correct": correct, "total": total, "low": low, "high": high}

    results = {"runs/direction=forward-1": {"direction": "forward", "step": 9, "level": 0.95,
                                             "scores": {"forward": {"trained": order(5, 10),
                                                                    "reversed": order(0, 10)}}},
               "runs/direction=bidirectional-2": {"direction": "bidirectional", "step": 9, "level": 0.95,
                                                   "scores": {"forward": {"trained": order(10, 10),
                                                                          "reversed": order(0, 10)},
                                                              "backward": {"trained": order(9, 10),
                                                                           "reversed": order(1, 10)}}}}
    lines = study.table(results)
    assert lines[0] == ("| run | direction | generates | trained order [95% interval] | "
                        "reversed order [95% interval] |")
    assert lines[2] == ("| direction=forward-1 | forward | forward | 0.500 (5/10) [0.237, 0.763] | "
                        "0.000 (0/10) [0.000, 0.278] |")
    assert [line.split(" | ")[2] for line in lines[3:]] == ["forward", "backward"]
    png = study.plot(results, tmp_path / "reversal.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert study.main(["plot", str(tmp_path / "r.json"), "--plot", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").is_file()
