"""Tests for the reversal-curse study by reversal unit (word and entity queries of revjax.tasks.facts, the
reversal_units sweep, the study script's unit column) and the BackChat configuration."""

import importlib.util
from pathlib import Path

import pytest

import revjax.engine
from revjax.config import load_config
from revjax.config_args import find_config
from revjax.direction import Specials, orient_text, reverse_units
from revjax.experiments import load_sweep
from revjax.tasks.base import TaskError
from revjax.tasks.facts import Fact, Query, engine_generate, fact_queries, read_back, score_queries, wilson_interval
from revjax.train.chain import phase_config

FACT = Fact("Ana Bel", "mentor", "Cor Dun")
ROOT = Path(__file__).resolve().parent.parent


def _rows(queries):
    return [(q.order, q.way, q.prompt, q.answer, q.asked, q.ending) for q in queries]


@pytest.mark.parametrize("unit", ["word", "entity"])
def test_text_unit_queries_by_hand(unit):
    """A backward text-unit model is asked from the word after the asked one; forward prompts are the token ones."""
    assert _rows(fact_queries(FACT, "backward", unit)) == [
        ("trained", "backward", "mentor is Cor Dun.", "Ana Bel", "subject", "'s"),
        ("reversed", "backward", "is the mentor of Ana Bel.", "Cor Dun", "object", "")]
    assert _rows(fact_queries(FACT, "forward", unit)) == _rows(fact_queries(FACT, "forward")) == [
        ("trained", "forward", "Ana Bel's mentor is", "Cor Dun", "object", ""),
        ("reversed", "forward", "Cor Dun is the mentor of", "Ana Bel", "subject", "")]
    assert _rows(fact_queries(FACT, "backward", "token")) == [
        ("trained", "backward", "'s mentor is Cor Dun.", "Ana Bel", "subject", ""),
        ("reversed", "backward", " is the mentor of Ana Bel.", "Cor Dun", "object", "")]


# model order of the two statements and the two backward prompts, by hand
MODEL_ORDER = {
    "word": {"trained": ("Dun. Cor is mentor", " Bel's Ana"), "reversed": ("Bel. Ana of mentor the is", " Dun Cor")},
    "entity": {"trained": ("Cor Dun. is mentor", " Ana Bel's"), "reversed": ("Ana Bel. of mentor the is", " Cor Dun")},
}


@pytest.mark.parametrize("unit", ["word", "entity"])
def test_prompts_are_the_start_of_the_statements_in_model_order(unit):
    """The model-order prompt is where a training document of the statement begins, and what follows it there is
    the space and the asked word(s): what the model must write."""
    for q in fact_queries(FACT, "backward", unit):
        prompt, rest = MODEL_ORDER[unit][q.order]
        assert orient_text(q.prompt, "backward", unit) == prompt
        assert orient_text(FACT.statement(q.order), "backward", unit) == prompt + rest
        # the right continuation, read back to reading order, is a hit; the prompt comes off
        assert read_back(prompt + rest, q.prompt, unit) == reverse_units(rest, unit)
        assert q.hit(read_back(prompt + rest, q.prompt, unit))


def test_answer_extraction_from_hand_written_model_output():
    trained, reversed_ = fact_queries(FACT, "backward", "word")
    prompt = "Dun. Cor is mentor"
    assert read_back(prompt + " Bel's Ana", trained.prompt, "word") == "Ana Bel's "
    assert trained.hit("Ana Bel's ")
    # the name without "'s", another name, the words the wrong way round: misses
    assert read_back(prompt + " Bel Ana", trained.prompt, "word") == "Ana Bel "
    assert not trained.hit("Ana Bel ") and not trained.hit("Ana Bex's ") and not trained.hit("Bel's Ana ")
    # a model that goes on past the document start: the name is what follows the last sentence end
    assert read_back(prompt + " Bel's Ana old. is Tom", trained.prompt, "word") == "Tom is old. Ana Bel's "
    assert trained.hit("Tom is old. Ana Bel's ")
    # a model that changed the prompt's first word: all of it comes back, and it names no one
    changed = read_back(prompt + "'s Ana", trained.prompt, "word")
    assert changed == "Ana mentor's is Cor Dun." and not trained.hit(changed)
    assert read_back("Bel. Ana of mentor the is Dun Cor", reversed_.prompt, "word") == "Cor Dun "
    assert reversed_.hit("Cor Dun ") and not reversed_.hit("Cor Dun's ")
    # entity: the name is one piece in reading order
    assert read_back("Cor Dun. is mentor Ana Bel's", "mentor is Cor Dun.", "entity") == "Ana Bel's "
    with pytest.raises(TaskError, match="token, word or entity, got 'letter'"):
        fact_queries(FACT, "backward", "letter")


@pytest.mark.parametrize("direction", ["backward", "bidirectional"])
def test_engine_generate_with_word_units(tok, monkeypatch, direction):
    """The engine sees the prompt's reversed text tokenized as it is (after BOS and the marker), and the model-order
    continuation comes back in reading order by reversing pieces, never ids."""
    specials = Specials.from_tokenizer(tok)
    seen = []
    writes = {"backward": tok.encode(" Bel's Ana"), "forward": tok.encode(" Cor Dun.")}

    def fake_generate(graphdef, params, prompts, max_new_tokens, *, stop_ids, max_len):
        seen.extend(prompts)
        way = "forward" if prompts[0][1:2] == [specials.marker("forward")] else "backward"
        return [list(writes[way]) for _ in prompts]

    monkeypatch.setattr(revjax.engine, "generate", fake_generate)
    generate = engine_generate(None, None, tok, direction, unit="word", max_new_tokens=8)
    marker = [specials.marker("backward")] if direction == "bidirectional" else []
    assert generate(["mentor is Cor Dun."], "backward") == ["Ana Bel's "]
    assert seen == [[tok.bos_id, *marker, *tok.encode("Dun. Cor is mentor")]]
    scores = score_queries(generate, [FACT], ["backward"], unit="word")
    # both backward queries got " Bel's Ana": the trained one is right, the reversed one (asking Cor Dun) wrong
    assert scores["backward"]["trained"]["correct"] == 1 and scores["backward"]["reversed"]["correct"] == 0
    if direction == "bidirectional":
        seen.clear()
        assert generate(["Ana Bel's mentor is"], "forward") == [" Cor Dun."]
        assert seen == [[tok.bos_id, specials.marker("forward"), *tok.encode("Ana Bel's mentor is")]]


def test_score_queries_by_unit():
    facts = [Fact(f"S{i} Aa", "editor", f"O{i} Bb") for i in range(4)]

    def fake(prompts, way):  # right on trained queries of facts 0-2, on no reversed one
        replies = []
        for i, fact in enumerate(facts):
            for q in fact_queries(fact, way, "entity"):
                assert q.prompt == prompts[len(replies)]
                name = q.answer if q.order == "trained" and i < 3 else "Nobody Here"
                replies.append(f"{name}{q.ending} ")
        return replies

    got = score_queries(fake, facts, ["backward"], unit="entity")["backward"]
    low, high = wilson_interval(3, 4)
    assert got["trained"] == pytest.approx({"accuracy": 0.75, "correct": 3, "total": 4, "low": low, "high": high})
    assert got["reversed"]["correct"] == 0
    # the same replies scored as token-unit queries: their prompts differ, so the fake refuses them
    with pytest.raises(AssertionError):
        score_queries(fake, facts, ["backward"], unit="token")


def test_reversal_units_sweep_resolves(tmp_path):
    """Four runs, backward and bidirectional by word and entity, trained exactly as the reversal sweep's runs."""
    sweep = load_sweep("reversal_units", tmp_path / "units")
    assert [r.name for r in sweep.runs] == ["direction=backward,unit=word", "direction=backward,unit=entity",
                                            "direction=bidirectional,unit=word",
                                            "direction=bidirectional,unit=entity"]
    assert [(r.config.direction.direction, r.config.direction.unit) for r in sweep.runs] == [
        ("backward", "word"), ("backward", "entity"), ("bidirectional", "word"), ("bidirectional", "entity")]
    tokens = {r.config.direction.direction: r.config for r in load_sweep("reversal", tmp_path / "tokens").runs}
    assert set(tokens) == {"forward", "backward", "bidirectional"}
    for run in sweep.runs:
        mine, theirs = run.config.to_dict(), tokens[run.config.direction.direction].to_dict()
        assert mine["direction"].pop("unit") != "token" and theirs["direction"].pop("unit") == "token"
        for data in (mine, theirs):
            data.pop("run_name")
            data["checkpoint"].pop("dir")
        assert mine == theirs
        assert run.config.training.num_iterations == 300 and run.config.data.packing == "bos_aligned"


def test_backchat_config_resolves(tmp_path):
    files = [find_config("backchat")]
    config = load_config(files, [f"base_dir={tmp_path}"])
    assert (config.direction.direction, config.direction.unit, config.direction.conversation,
            config.direction.loss_mask) == ("backward", "word", "sequence", "generated")
    assert config.chain.phases == ["base", "mid", "sft"] and config.run_name == "backchat"
    default = load_config([find_config("default")], [f"base_dir={tmp_path}"])
    assert config.tasks.train == default.tasks.train and config.data.corpus == default.data.corpus == "default"
    assert [t["task"] if isinstance(t, dict) else t for t in config.tasks.train] == [
        "arithmetic", "sums", "simple-spelling", "spelling-bee", "identity", "chatterbot"]
    sft = phase_config(files, [f"base_dir={tmp_path}"], "sft", tmp_path / "mid")
    assert (sft.run_name, sft.training.phase, sft.training.num_iterations) == ("backchat-backward-sft", "sft", 60)
    assert (sft.direction.unit, sft.schedule.init_lr_frac, sft.training.init_from) == ("word", 0.02,
                                                                                        str(tmp_path / "mid"))


def _study():
    spec = importlib.util.spec_from_file_location("reversal_study", ROOT / "scripts" / "reversal_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    return study


def test_study_table_and_plot_by_unit(tmp_path):
    study = _study()

    def order(correct, total):
        low, high = wilson_interval(correct, total)
        return {"accuracy": correct / total, "correct": correct, "total": total, "low": low, "high": high}

    def result(direction, unit, trained, reversed_):
        return {"direction": direction, "unit": unit, "step": 300, "level": 0.95,
                "scores": {direction: {"trained": order(trained, 10), "reversed": order(reversed_, 10)}}}

    results = {"u/direction=backward,unit=entity-1": result("backward", "entity", 9, 2),
               "t/direction=forward-2": result("forward", "token", 8, 0),
               "u/direction=backward,unit=word-3": result("backward", "word", 7, 1),
               "t/direction=backward-4": result("backward", "token", 6, 0)}
    lines = study.table(results)
    assert lines[0] == ("| run | direction | unit | generates | trained order [95% interval] | "
                        "reversed order [95% interval] |")
    assert lines[1] == "|---|---|---|---|---|---|"
    assert [tuple(line.split(" | ")[1:3]) for line in lines[2:]] == [
        ("forward", "token"), ("backward", "token"), ("backward", "word"), ("backward", "entity")]
    assert lines[5] == ("| direction=backward,unit=entity-1 | backward | entity | backward | 0.900 (9/10) "
                        "[0.596, 0.982] | 0.200 (2/10) [0.057, 0.510] |")
    assert study.plot(results, tmp_path / "units.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
