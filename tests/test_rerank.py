"""Best-of-N with the reverse reward: scores checked against a direct forward pass on hand-built layouts, the
selection rules and their ties, one scorer call per model per batch, the refusals, ``revjax rerank``, the ``rerank``
suite of ``revjax eval`` and ``revjax serve --reranker``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

from revjax.chat import server as chat_server
from revjax.chat.protocol import Limits
from revjax.chat.session import load_model
from revjax.eval import rerank_cli
from revjax.eval.rerank import (RULES, RankModel, Reranker, RerankError, accuracy_table, choose, forward_request,
                                reverse_request)
from revjax.tasks.facts import wilson_interval
from tests.helpers import forward, make_run

QUESTION = "What is 3 plus 5?"
ANSWERS = ["3 + 5 = 8. #### 8", "8", "no idea at all"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank")
    for name, direction, mode in [("fwd", "forward", "sequence"), ("bwd", "backward", "sequence"),
                                  ("bid", "bidirectional", "sequence"), ("turn", "backward", "turn")]:
        make_run(root / name, direction, mode)
    return root


@pytest.fixture(scope="module")
def models(runs):
    return {name: RankModel.from_run(runs / name) for name in ("fwd", "bwd", "bid", "turn")}


def hand_logprob(model: RankModel, ids: list[int], first: int) -> float:
    """Sum of log p(ids[i] | ids[:i]) for i >= first, by one plain forward pass of the whole sequence (padded at
    the end to 64 ids, which a causal model's earlier positions do not see)."""
    net = nnx.merge(model.graphdef, model.params)
    padded = np.zeros((1, 64), np.int32)
    padded[0, : len(ids)] = ids
    logits = np.asarray(forward(net, padded)[0], np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(sum(logp[i - 1, ids[i]] for i in range(first, len(ids))))


def test_reverse_reward_matches_a_hand_computation(models):
    """The backward reranker's layout is B ae rev(a) as ue rev(q) us, scored over ue … us; a bidirectional
    reranker adds <|backward|> after BOS. Scores and the chosen candidate equal a direct forward pass."""
    g, tok = models["fwd"], models["fwd"].tokenizer
    s = g.specials
    q, answers = tok.encode(QUESTION), [tok.encode(a) for a in ANSWERS]
    for name, head in (("bwd", [s.bos]), ("bid", [s.bos, s.marker("backward")])):
        r = models[name]
        hand = []
        for a in answers:
            ids = head + [s.assistant_end, *a[::-1], s.assistant_start, s.user_end, *q[::-1], s.user_start]
            first = len(head) + len(a) + 2
            request = reverse_request([q], a, r)
            assert list(request.ids) == ids and (request.first, request.last) == (first, len(ids))
            hand.append(hand_logprob(r, ids, first))
        reranker = Reranker(g, r, weight=0.0)
        ranking = reranker.rank([[q]], [answers])[0]
        np.testing.assert_allclose([c.reverse for c in ranking.candidates], hand, atol=1e-4)
        assert ranking.chosen["reverse"] == ranking.chosen["combined"] == int(np.argmax(hand))
        hand_forward = []
        for a in answers:
            ids = [s.bos, s.user_start, *q, s.user_end, s.assistant_start, *a, s.assistant_end]
            assert list(forward_request([q], a, g).ids) == ids
            hand_forward.append(hand_logprob(g, ids, len(q) + 4))
        np.testing.assert_allclose([c.forward for c in ranking.candidates], hand_forward, atol=1e-4)
        assert ranking.chosen["forward"] == int(np.argmax(hand_forward)) and ranking.chosen["pass@1"] == 0


def test_rules_weights_and_ties():
    forward = np.array([[-1.0, -5.0, -2.0], [-3.0, -3.0, -9.0]])
    reverse = np.array([[-3.0, -1.0, -1.0], [-2.0, -4.0, -1.0]])
    picks = choose(forward, reverse, 0.0)
    assert picks["pass@1"].tolist() == [0, 0]
    assert picks["forward"].tolist() == [0, 0]  # row 2: a tie between 0 and 1, the earliest wins
    assert picks["reverse"].tolist() == [1, 2]  # row 1: a tie between 1 and 2
    assert picks["combined"].tolist() == [1, 2]  # weight 0: the reverse reward alone
    assert choose(forward, reverse, 1.0)["combined"].tolist() == [2, 0]  # [-4, -6, -3], [-5, -7, -10]
    assert choose(forward, reverse, 10.0)["combined"].tolist() == [0, 0]
    assert choose(forward, reverse, 1.0, n=2)["combined"].tolist() == [0, 0]  # [-4, -6], [-5, -7]
    assert choose(forward, reverse, 0.0, n=1)["reverse"].tolist() == [0, 0]


def test_accuracy_table_by_hand():
    correct = np.array([[False, True, False], [True, False, False], [False, False, True], [False, False, False]])
    forward = np.array([[-1.0, -2, -3], [-1, -2, -3], [-3, -2, -1], [-1, -2, -3]])
    reverse = np.array([[-5.0, -1, -2], [-1, -2, -3], [-1, -2, -3], [-1, -2, -3]])
    table = accuracy_table(correct, [1, 3], forward, reverse, weight=1.0)
    assert table["1"]["pass@1"]["correct"] == table["1"]["reverse"]["correct"] == 1  # the first samples: only #2
    # N=3: forward picks 0, 0, 2, 0 → 2 right; reverse picks 1, 0, 0, 0 → 2 right; combined (sum) picks 1, 0, 0/2
    # tie → 0 (−4 vs −4), 0 → 2 right
    assert [table["3"][r]["correct"] for r in RULES] == [1, 2, 2, 2]
    assert table["3"]["forward"]["accuracy"] == 0.5
    assert (table["3"]["forward"]["low"], table["3"]["forward"]["high"]) == wilson_interval(2, 4)


def test_one_scorer_call_per_model_per_batch(models, monkeypatch):
    from revjax.tasks import get_task

    reranker = Reranker(models["fwd"], models["bwd"], weight=0.5)
    calls = {"fwd": 0, "bwd": 0}
    for name in calls:
        scorer = models[name].scorer
        original = scorer.score

        def counted(requests, groups=(), name=name, original=original):
            calls[name] += 1
            return original(requests, groups)

        monkeypatch.setattr(scorer, "score", counted)
    out = rerank_cli.evaluate_task(get_task("sums", split="test", size=5), reranker, [3, 1], limit=5,
                                   max_new_tokens=6, batch_size=3)
    assert calls == {"fwd": 2, "bwd": 2}  # two batches (3 + 2 questions), each of 3 candidates per question
    assert out["questions"] == 5 and sorted(out["results"]) == ["1", "3"]
    detail = out["questions_detail"]
    assert [len(d["candidates"]) for d in detail] == [3] * 5
    forward = np.array([[c["forward"] for c in d["candidates"]] for d in detail])
    reverse = np.array([[c["reverse"] for c in d["candidates"]] for d in detail])
    correct = np.array([[c["correct"] for c in d["candidates"]] for d in detail])
    assert out["results"] == accuracy_table(correct, [1, 3], forward, reverse, 0.5)


def test_refusals(models, tmp_path):
    from revjax.tokenizer import train_tokenizer

    with pytest.raises(RerankError, match="only a backward or bidirectional model trained in sequence"):
        Reranker(models["fwd"], models["fwd"])
    with pytest.raises(RerankError, match=r"\(backward, turn mode\) cannot score a question"):
        Reranker(models["fwd"], models["turn"])
    with pytest.raises(RerankError, match="is a backward model, which cannot write answers"):
        Reranker(models["bwd"], models["bwd"])
    with pytest.raises(RerankError, match="needs a temperature above 0"):
        Reranker(models["fwd"], models["bwd"]).sample([[[5]]], 2, temperature=0.0)
    docs = [f"word{i} and word{i + 1} are words number {i}" for i in range(200)]
    other = train_tokenizer(docs, tmp_path / "tok", 300, progress=False)
    g = models["fwd"]
    foreign = RankModel(g.graphdef, g.params, other, "backward", "sequence", g.max_len, name="foreign")
    with pytest.raises(RerankError, match="use different tokenizers .* rerank with models trained on the same"):
        Reranker(g, foreign)


def test_rerank_command_with_a_prompt(runs, tmp_path, capsys):
    out = tmp_path / "prompt.json"
    code = rerank_cli.main([str(runs / "fwd"), "--reranker", str(runs / "bwd"), "--prompt", QUESTION, "--best-of",
                            "3", "--max-new-tokens", "6", "--weight", "0.5", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    candidates = data["candidates"]
    assert len(candidates) == 3 and f"question: {QUESTION!r}" in text
    for c in candidates:
        assert c["combined"] == pytest.approx(c["reverse"] + 0.5 * c["forward"])
        assert f"{c['reverse']:>9.3f} {c['combined']:>9.3f}" in text
    assert data["chosen"]["combined"] == int(np.argmax([c["combined"] for c in candidates]))
    assert data["chosen"]["forward"] == int(np.argmax([c["forward"] for c in candidates]))
    assert f"chosen (combined): {candidates[data['chosen']['combined']]['text']!r}" in text


def test_rerank_command_with_sums_and_refusal(runs, tmp_path, capsys):
    out = tmp_path / "sums.json"
    code = rerank_cli.main([str(runs / "fwd"), "--reranker", str(runs / "bwd"), "--task", "sums", "--limit", "5",
                            "--best-of", "1", "3", "--max-new-tokens", "6", "--batch-size", "3", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["questions"] == 5 and list(data["results"]) == ["1", "3"]
    row = data["results"]["3"]["reverse"]
    assert (row["low"], row["high"]) == pytest.approx(wilson_interval(row["correct"], 5))
    text = capsys.readouterr().out
    assert "| N | pass@1 | forward | reverse | combined |" in text and "\n| 3 | " in text
    code = rerank_cli.main([str(runs / "fwd"), "--reranker", str(runs / "fwd"), "--prompt", QUESTION])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("revjax rerank: error:") and err.count("\n") == 1


def test_eval_rerank_suite(runs, monkeypatch):
    from revjax.eval.run import evaluate_run, format_markdown
    from revjax.tasks import get_task
    from tests.conftest import REPO_ROOT

    load = rerank_cli.load_task  # GSM8K from the repository's fixture (its offline copy is a registry download)
    fixture = REPO_ROOT / "tests" / "fixtures" / "tasks" / "gsm8k"
    monkeypatch.setattr(rerank_cli, "MAX_NEW_TOKENS", {"sums": 6, "gsm8k": 8})
    monkeypatch.setattr(rerank_cli, "load_task", lambda name, count, tasks_dir=None: get_task(
        "gsm8k", split="train", path=fixture) if name == "gsm8k" else load(name, count, tasks_dir))
    results = evaluate_run(runs / "fwd", "rerank", max_per_task=2, reranker=str(runs / "bwd"), best_of=3,
                           progress=False)
    part = results["suites"]["rerank"]["ways"]["forward"]
    sums = part["tasks"]["sums"]
    assert sums["questions"] == 2 and sums["best_of"] == [1, 3]
    assert set(sums["results"]["3"]) == set(RULES)
    assert part["tasks"]["GSM8K"]["questions"] == 2 and part["unavailable"] == {}  # the fixture holds 2
    assert "### best-of-3 reranked by" in format_markdown(results)


def test_serve_with_a_reranker(runs, tmp_path, capsys):
    from fastapi.testclient import TestClient

    model = load_model(runs / "fwd")
    reranker = chat_server.load_reranker(model, str(runs / "bwd"), 3, 0.0)
    app = chat_server.create_app(model, Limits(max_tokens=8), reranker=reranker, best_of=3)
    with TestClient(app, base_url="http://localhost") as client:
        body = {"messages": [{"role": "user", "content": QUESTION}], "temperature": 1.0, "max_tokens": 6, "seed": 2}
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        data = reply.json()
        info = data["revjax"]
        assert info["best_of"] == 3 and len(info["candidates"]) == 3
        reverse = [c["reverse"] for c in info["candidates"]]
        assert info["chosen"] == int(np.argmax(reverse))  # weight 0: the reverse reward alone
        forward = [c["forward"] for c in info["candidates"]]
        assert info["chosen_by"]["forward"] == int(np.argmax(forward)) != info["chosen"]  # seed 2: the rules differ
        assert data["choices"][0]["message"]["content"] == info["candidates"][info["chosen"]]["text"]
        assert [c["combined"] for c in info["candidates"]] == reverse
        streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
        assert streamed.status_code == 400 and "cannot stream" in streamed.json()["error"]["message"]
    code = chat_server.main([str(runs / "fwd"), "--port", "0", "--reranker", str(runs / "turn")])
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot score a question given its answer" in err and err.count("\n") == 1


def test_word_unit_reranker_reads_reversed_texts(models):
    """A word-unit backward reranker (BackChat) scores B ae R(a) as ue R(q) us, R = the text's words reversed and
    tokenized, over ue … us — by hand against a direct forward pass."""
    from dataclasses import replace

    from revjax.direction import Unit

    g, tok = models["fwd"], models["fwd"].tokenizer
    s, r = g.specials, replace(models["bwd"], unit=Unit.WORD)
    q, answers = tok.encode(QUESTION), [tok.encode(a) for a in ANSWERS]
    rq = tok.encode("5? plus 3 is What")
    hand = []
    for text, a in zip(["8 #### 8. = 5 + 3", "8", "all at idea no"], answers):
        ids = [s.bos, s.assistant_end, *tok.encode(text), s.assistant_start, s.user_end, *rq, s.user_start]
        request = reverse_request([q], a, r)
        assert list(request.ids) == ids and request.first == len(ids) - len(rq) - 2
        hand.append(hand_logprob(r, ids, request.first))
    ranking = Reranker(g, r, weight=0.0).rank([[q]], [answers])[0]
    np.testing.assert_allclose([c.reverse for c in ranking.candidates], hand, atol=1e-4)
    assert ranking.chosen["reverse"] == int(np.argmax(hand))


def study_module():
    import importlib.util

    from tests.conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("reverse_reward_study",
                                                  REPO_ROOT / "scripts" / "reverse_reward_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reverse_reward_sweep_is_the_default_chain_without_rl(tmp_path):
    from revjax.config_args import find_config
    from revjax.experiments.spec import load_sweep
    from revjax.phases import PHASES
    from revjax.train.chain import phase_config

    sweep = load_sweep("reverse_reward", tmp_path / "exp")
    assert [r.folder.split("-")[0] for r in sweep.runs] == [
        f"direction={d},phase={p}" for d in ("forward", "backward") for p in ("base", "mid", "sft")]
    for chain in sweep.chains:
        base, mid, sft = chain
        assert base.parent is None and mid.parent is base and sft.parent is mid
        assert mid.config.training.init_from == str(base.dir) and sft.config.training.init_from == str(mid.dir)
        assert [r.config.training.phase for r in chain] == ["base", "mid", "sft"]
        assert [r.config.training.num_iterations for r in chain] == [120, 40, 60]
        assert [r.config.schedule.init_lr_frac for r in chain] == [1.0, 1.0, 0.02]
        assert {r.config.direction.conversation for r in chain} == {"sequence"}
    assert PHASES["rl"].refuses("backward", "sequence")  # why the chain stops at SFT
    for run in sweep.runs:  # each phase trains what `revjax chain` trains in that direction and phase
        chained = phase_config([find_config("default")], [f"direction.direction={run.config.direction.direction}"],
                               run.phase, run.parent.dir if run.parent else None)
        ours, theirs = run.config.to_dict(), chained.to_dict()
        for data in (ours, theirs):
            data.pop("run_name"), data.pop("base_dir"), data["checkpoint"].pop("dir")
            for section, key in (("tokenizer", "dir"), ("data", "dir"), ("tasks", "cache_dir")):
                data[section].pop(key)
        assert ours == theirs, run.folder


def hand_detail(rows):
    """Questions from (forward scores, reverse scores, right) rows of candidates."""
    return [{"candidates": [{"forward": f, "reverse": r, "correct": c} for f, r, c in zip(*row)]} for row in rows]


def test_study_oracle_weights_and_mcnemar_by_hand():
    study = study_module()
    # five questions where the reverse pick is right and the first sample wrong, one where only the first is right
    rows = [([0.0, -1.0], [-5.0, 0.0], [False, True])] * 5 + [([0.0, -1.0], [-5.0, 0.0], [True, False])]
    rows += [([-1.0, 0.0], [0.0, -1.0], [False, False])] * 2
    detail = hand_detail(rows)
    assert study.oracle(detail, (1, 2)) == {"1": 1 / 8, "2": 6 / 8}
    got = study.paired(detail, 2, 1.0, (("reverse", "pass@1"), ("forward", "pass@1")))
    # reverse vs pass@1: 5 vs 1, McNemar p = 2 × (1 + 6) / 2^6; forward picks sample 0 on all rows: same as pass@1
    assert got["reverse vs pass@1"] == {"only_first": 5, "only_second": 1, "p": pytest.approx(14 / 64)}
    assert got["forward vs pass@1"] == {"only_first": 0, "only_second": 0, "p": 1.0}
    weights = study.weight_sweep(detail, (0.0, 10.0), 2)
    # weight 0: the reverse pick (5 right); weight 10: the forward pick, sample 0 of rows 1-6, sample 1 of rows 7-8
    assert weights["0.0"]["correct"] == 5 and weights["10.0"]["correct"] == 1


def write_experiment(folder, runs, states):
    """An experiment folder whose plan has one chain per (name, direction) of ``runs``: an earlier phase that was
    never written, then the run folder ``name`` (with its config and status)."""
    import yaml

    from revjax.config import load_config
    from revjax.experiments.lineage import write_status

    folder.mkdir(parents=True, exist_ok=True)
    plan = {"name": "reverse_reward", "chains": [[f"{n}-base", n] for n, _ in runs]}
    (folder / "runs.json").write_text(json.dumps(plan))
    for (name, direction), state in zip(runs, states):
        make_run(folder / name, direction, "sequence")
        config = load_config(overrides=[f"direction.direction={direction}"]).to_dict()
        (folder / name / "config.yaml").write_text(yaml.safe_dump(config))
        write_status(folder / name, {"state": state, "attempts": 1, "started": "2026-01-01T10:00:00+00:00",
                                     "ended": "2026-01-01T10:01:30+00:00" if state == "finished" else None})


def test_study_scores_the_sweep_folder(tmp_path, capsys):
    study = study_module()
    exp = tmp_path / "exp"
    write_experiment(exp, [("f-sft", "forward"), ("b-sft", "backward")], ["finished", "finished"])
    out_json, png = tmp_path / "r.json", tmp_path / "r.png"
    assert study.main(["score", str(exp), "--questions", "3", "--gsm8k", "0", "--json", str(out_json),
                       "--plot", str(png)]) == 0
    data = json.loads(out_json.read_text())
    assert data["runs"] == {"generator": str(exp / "f-sft"), "reranker": str(exp / "b-sft")}
    assert data["training_s"] == {"f-sft": 90.0, "b-sft": 90.0}
    sums = data["sums"]
    assert sums["questions"] == 3 and list(sums["results"]) == ["1", "4", "16"] and "gsm8k" not in data
    right = np.array([[c["correct"] for c in q["candidates"]] for q in sums["questions_detail"]])
    assert right.shape == (3, 16)
    assert sums["oracle"] == {str(n): pytest.approx(right[:, :n].any(axis=1).mean()) for n in (1, 4, 16)}
    assert list(sums["weights"]) == ["0.0", "0.25", "0.5", "1.0", "2.0", "4.0"]
    assert sums["weights"]["1.0"] == sums["results"]["16"]["combined"]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "sums (3 questions, weight 1):" in text and "training: f-sft 90 s, b-sft 90 s" in text
    assert study.main(["plot", str(out_json), "--plot", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").read_bytes()[:4] == b"\x89PNG"


def test_study_refuses_unfinished_or_ambiguous_folders(tmp_path, capsys):
    study = study_module()
    write_experiment(tmp_path / "a", [("f", "forward"), ("b", "backward")], ["finished", "running"])
    out = ["--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]  # where a wrong acceptance writes
    assert study.main(["score", str(tmp_path / "a"), "--questions", "1", *out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is running, not finished" in err and str(tmp_path / "a" / "b") in err
    write_experiment(tmp_path / "c", [("f", "forward"), ("g", "forward")], ["finished", "finished"])
    assert study.main(["score", str(tmp_path / "c"), *out]) == 2
    assert "holds 2 forward chains, not one" in capsys.readouterr().err
    assert study.main(["score", str(tmp_path / "a"), "--generator", str(tmp_path / "a" / "f"), *out]) == 2
    assert "not both" in capsys.readouterr().err
    assert study.main(["score", "--generator", str(tmp_path / "a" / "f"), *out]) == 2
    assert not (tmp_path / "r.json").exists()
    assert "both --generator RUN and --reranker RUN" in capsys.readouterr().err
