"""revjax runs in lm-evaluation-harness: ``RevjaxLM`` through lm_eval's own Python API and command line, on local
tasks (task YAMLs over JSONL files written here; no hub), against ``revjax eval``'s scoring, ``--model hf`` on the
transformers export, and log-probabilities computed directly from the model."""

import functools
import json
import math
import os

# lm-eval reads datasets through the datasets library: local files only, and no hub at all
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from revjax import cli  # noqa: E402
from revjax.direction import Specials  # noqa: E402
from revjax.eval.bpb import evaluate_bpb  # noqa: E402
from revjax.eval.choice import score_tasks  # noqa: E402
from revjax.eval.icl import TaskSpec, build_examples, select_items  # noqa: E402
from revjax.eval.run import LoadedRun  # noqa: E402
from revjax.interop.hf import export_hf  # noqa: E402
from revjax.interop.lm_eval import LMEvalError, RevjaxLM, rolling_windows, split_pair  # noqa: E402
from tests.helpers import MC_ITEMS as CORE_MC_ITEMS, make_run  # noqa: E402

# choices start with different words, so nanochat's scored span (after the choices' common token prefix) is the
# continuation lm-eval scores
MC_ITEMS = CORE_MC_ITEMS + [
    {"query": "Question: what do bees make?\nAnswer:", "choices": ["honey", "milk", "steel beams"], "gold": 0},
    {"query": "In winter the lake", "choices": ["freezes over", "boils", "sings"], "gold": 0},
    {"query": "A triangle has", "choices": ["three sides", "four corners", "no edges at all"], "gold": 0},
]
DOCS = ["In the beginning God created the heaven and the earth.",
        "To be, or not to be, that is the question.",
        "The quick brown fox jumps over the lazy dog, twice."]
TASK_YAML = """task: revjax_{name}
dataset_path: json
dataset_kwargs:
  cache_dir: {folder}/datasets-cache
  data_files:
    test: {folder}/{name}.jsonl
test_split: test
"""
MC_YAML = TASK_YAML + """output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
"""
DOCS_YAML = TASK_YAML + """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs (random weights, golden tokenizer) reading forward, backward and both ways."""
    root = tmp_path_factory.mktemp("lm-eval-runs")
    for direction in ("forward", "backward", "bidirectional"):
        make_run(root / direction, direction, "sequence")
    return root


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    items = [{"id": i, **item} for i, item in enumerate(MC_ITEMS)]
    (folder / "mc.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    (folder / "mc.yaml").write_text(MC_YAML.format(folder=folder, name="mc"))
    (folder / "docs.yaml").write_text(DOCS_YAML.format(folder=folder, name="docs"))
    return folder


@pytest.fixture(scope="module")
def harness(runs, task_dir):
    """lm_eval.simple_evaluate on the local tasks with a RevjaxLM, once per direction: ``(model, results)``."""
    done = {}

    def evaluate(direction):
        if direction not in done:
            lm = RevjaxLM(run=str(runs / direction))
            results = lm_eval.simple_evaluate(model=lm, tasks=["revjax_mc", "revjax_docs"], log_samples=True,
                                              task_manager=TaskManager(include_path=str(task_dir),
                                                                       include_defaults=False))
            done[direction] = lm, results
        return done[direction]

    return evaluate


def lm_eval_choices(results, task="revjax_mc"):
    """Per item id: (the per-choice log-likelihoods lm-eval got, its per-sample accuracy)."""
    return {s["doc"]["id"]: (np.array([float(r[0]) for r in s["filtered_resps"]]), s["acc"])
            for s in results["samples"][task]}


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_choices_equal_revjax_eval(direction, runs, harness):
    """lm-eval's per-choice scores and choices are revjax eval's, item by item, in either direction."""
    lm, results = harness(direction)
    theirs = lm_eval_choices(results)
    run = LoadedRun(runs / direction)
    spec = TaskSpec("revjax_mc", "multiple_choice", 0, " ", 0.0, [{"id": i, **it} for i, it in enumerate(MC_ITEMS)])
    (ours,) = score_tasks([(build_examples(spec, run.tokenizer), "multiple_choice")], run.scorer, direction,
                          direction, Specials.from_tokenizer(run.tokenizer))
    assert len(ours) == len(theirs) == len(MC_ITEMS)
    picks = []
    for item, result in zip(select_items(spec.items, None), ours):  # build_examples shuffles as nanochat does
        lls, acc = theirs[item["id"]]
        np.testing.assert_allclose(lls, result.scores, atol=2e-4)
        assert int(np.argmax(lls)) == int(np.argmax(result.scores))  # lm-eval's choice (acc: the highest sum)
        assert acc == float(int(np.argmax(lls)) == item["gold"])
        assert int(np.argmax(lls / np.array(result.tokens))) == result.pred  # revjax eval's (highest mean)
        picks.append(result.pred)
    assert len(set(picks)) > 1  # the model does not always pick the same option
    assert results["results"]["revjax_mc"]["acc,none"] == pytest.approx(
        np.mean([theirs[i][1] for i in theirs]))


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_long_contexts_are_cropped_as_revjax_eval_crops(direction, runs):
    """A text longer than the window loses the start of its context, by as many tokens for every option as the
    longest option must (revjax eval's max_len), so the options keep one context."""
    lm = RevjaxLM(run=str(runs / direction), max_length=24)
    items = [{"id": i, **it, "query": f"{DOCS[i % 3]} {DOCS[(i + 1) % 3]} {it['query']}"}
             for i, it in enumerate(MC_ITEMS)]
    requests = [Instance("loglikelihood", {}, (it["query"], " " + c), 0) for it in items for c in it["choices"]]
    scores = iter(score for score, _ in lm.loglikelihood(requests))
    spec = TaskSpec("long", "multiple_choice", 0, " ", 0.0, items)
    (ours,) = score_tasks([(build_examples(spec, lm.tokenizer), "multiple_choice")], lm.scorer, direction,
                          direction, lm.specials, max_len=24)
    by_id = {it["id"]: result for it, result in zip(select_items(items, None), ours)}
    for it in items:
        assert len(lm.tokenizer.encode(it["query"])) > 24
        np.testing.assert_allclose([next(scores) for _ in it["choices"]], by_id[it["id"]].scores, atol=2e-4)


def test_directions_score_differently(harness):
    forward = lm_eval_choices(harness("forward")[1])
    backward = lm_eval_choices(harness("backward")[1])
    assert all(not np.allclose(forward[i][0], backward[i][0], atol=1e-2) for i in forward)


def test_forward_choices_equal_hf_on_the_export(runs, task_dir, harness, tmp_path):
    """--model hf (add_bos_token=True) on the transformers export scores the items as RevjaxLM does."""
    out = export_hf(runs / "forward", tmp_path / "hf")
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(out), "add_bos_token": True, "dtype": "float32"},
        tasks=["revjax_mc"], log_samples=True, batch_size=8, device="cpu",
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
    hf = lm_eval_choices(results)
    ours = lm_eval_choices(harness("forward")[1])
    worst = 0.0
    for i, (lls, acc) in ours.items():
        worst = max(worst, float(np.abs(hf[i][0] - lls).max()))
        assert int(np.argmax(hf[i][0])) == int(np.argmax(lls)) and hf[i][1] == acc
    # revjax rounds its RoPE tables to bf16 (as onanchat does), transformers keeps them in fp32
    assert worst < 5e-2, worst


@functools.partial(jax.jit, static_argnums=0)
def plain_logits(graphdef, params, ids):
    return nnx.merge(graphdef, params)(ids)


def direct_logprobs(lm, ids):
    """Per position, log p(next id) over the vocabulary (float64), from the model's plain forward pass (no cache,
    no packing) over ``ids`` padded to 64 tokens (causal: the padding changes nothing before it)."""
    padded = np.zeros((1, 64), np.int32)
    padded[0, : len(ids)] = ids
    logits = np.asarray(plain_logits(lm.graphdef, lm.params, padded)[0, : len(ids)], np.float64)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def direct_logprob(lm, ids, first, last):
    """sum of log p(ids[i] | ids[:i]) over [first, last)."""
    logp = direct_logprobs(lm, ids)
    return float(sum(logp[i - 1, ids[i]] for i in range(first, last)))


def model_order_ids(lm, text, way):
    tok = lm.tokenizer
    body = tok.encode(text)
    head = [tok.bos_id] + ([tok.forward_id if way == "forward" else tok.backward_id] if lm.head == 2 else [])
    return head + (body[::-1] if way == "backward" else body)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_rolling_and_bits_per_byte(direction, harness):
    """Each document's log-likelihood is one forward pass's, and lm-eval's bits per byte is revjax eval's."""
    lm, results = harness(direction)
    doc_lls = [lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (d,), 0)])[0] for d in DOCS]
    for doc, ll in zip(DOCS, doc_lls):
        ids = model_order_ids(lm, doc, direction)
        assert ll == pytest.approx(direct_logprob(lm, ids, 1, len(ids)), abs=2e-4)
    nbytes = [len(d.encode()) for d in DOCS]
    expected = -sum(doc_lls) / (math.log(2) * sum(nbytes))
    assert results["results"]["revjax_docs"]["bits_per_byte,none"] == pytest.approx(expected, rel=1e-6)
    # revjax eval's bits per byte, each document alone in its row
    per_doc = [evaluate_bpb(lm.graphdef, lm.params, lm.tokenizer, direction, [d], ways=[direction], seq_len=64,
                            rows=1)[direction]["bpb"] for d in DOCS]
    revjax_bpb = sum(b * n for b, n in zip(per_doc, nbytes)) / sum(nbytes)
    assert revjax_bpb == pytest.approx(expected, rel=1e-4)


def test_rolling_windows_by_hand():
    # 40 tokens, 15 per window: the first window from BOS on; then one token of context; the last, all it holds
    assert rolling_windows(40, 15) == [(0, 0, 15), (14, 15, 29), (25, 29, 40)]
    assert rolling_windows(15, 15) == [(0, 0, 15)]
    assert rolling_windows(0, 15) == []


@pytest.mark.parametrize("direction,way", [("forward", "forward"), ("bidirectional", "backward")])
def test_rolling_windows_score_long_documents(direction, way, runs):
    lm = RevjaxLM(run=str(runs / direction), direction=way, max_length=16 + (direction == "bidirectional"))
    text = " ".join(DOCS)
    ids = model_order_ids(lm, text, way)
    head, body = ids[: lm.head], ids[lm.head:]
    assert len(body) > 30
    expected = 0.0
    for lo, first, end in rolling_windows(len(body), 15):
        window = head + body[lo:end]
        expected += direct_logprob(lm, window, lm.head + first - lo, len(window))
    (ll,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert ll == pytest.approx(expected, abs=5e-4)


def test_loglikelihood_is_one_batched_pass(runs):
    """Every request of a call goes through the scorer together (a few packed rows), and a backward model's score
    is log P(context ⊕ continuation) − log P(context) in its own order."""
    lm = RevjaxLM(run=str(runs / "backward"))
    pairs = [(item["query"], " " + choice) for item in MC_ITEMS for choice in item["choices"]]
    with pytest.warns(UserWarning, match="is_greedy is False"):
        got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    assert lm.scorer.calls <= 2 and len(pairs) == 22
    assert not any(greedy for _, greedy in got)
    for (context, continuation), (score, _) in list(zip(pairs, got))[:4]:
        ctx, cont = split_pair(lm.tokenizer, context, continuation)
        whole = model_order_ids(lm, lm.tokenizer.decode(ctx + cont), "backward")
        alone = model_order_ids(lm, context, "backward")
        expected = direct_logprob(lm, whole, 1, len(whole)) - direct_logprob(lm, alone, 1, len(alone))
        assert score == pytest.approx(expected, abs=2e-4)


def greedy_ids(lm, prompt, steps):
    """Greedy continuation of a model-order prompt, one plain forward pass per token."""
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(np.argmax(direct_logprobs(lm, ids)[-1])))
    return ids[len(prompt):]


@pytest.mark.parametrize("direction,way", [("forward", "forward"), ("backward", "backward"),
                                           ("bidirectional", "backward")])
def test_generate_until_stops_in_reading_order(direction, way, runs):
    lm = RevjaxLM(run=str(runs / direction), direction=way)
    backward = way == "backward"
    context = "The sky is blue and the sea"
    prompt = model_order_ids(lm, context, way)
    generated = greedy_ids(lm, prompt, 12)
    assert lm.tokenizer.bos_id not in generated
    text = lm.tokenizer.decode(generated[::-1] if backward else generated)  # reading order
    stop = lm.tokenizer.decode([generated[4]])  # the fifth token written
    assert stop.strip()
    if backward:  # written right to left: the text between the first stop written and the context
        expected = text[text.rfind(stop) + len(stop):]
    else:
        expected = text[: text.find(stop)]
    requests = [Instance("generate_until", {}, (context, {"until": [], "max_gen_toks": 12}), 0),
                Instance("generate_until", {}, (context, {"until": ["\x00never", stop], "max_gen_toks": 12}), 1),
                Instance("generate_until", {}, (context, {"until": stop, "max_gen_toks": 3}), 2)]
    if backward:
        with pytest.warns(UserWarning, match="sequence mode.*answering is not its task"):
            got = lm.generate_until(requests)
    else:
        got = lm.generate_until(requests)
    assert got[0] == text
    assert got[1] == expected and len(expected) < len(text)
    assert got[2] == lm.tokenizer.decode(generated[:3][::-1] if backward else generated[:3])


def test_bad_options_are_one_sentence(runs):
    with pytest.raises(LMEvalError, match="this forward model reads forward, not 'backward'"):
        RevjaxLM(run=str(runs / "forward"), direction="backward")
    with pytest.raises(LMEvalError, match="has no option pretrained"):
        RevjaxLM(run=str(runs / "forward"), pretrained="gpt2")
    with pytest.raises(LMEvalError, match="max_length=999 is outside"):
        RevjaxLM(run=str(runs / "forward"), max_length=999)
    with pytest.raises(LMEvalError, match="batch_size=many is neither"):
        RevjaxLM(run=str(runs / "forward"), batch_size="many")


def test_command_line_runs_lm_eval(runs, task_dir, harness, tmp_path, capsys, monkeypatch):
    """``revjax lm-eval --model revjax …`` is lm-eval's own command line with the revjax model known."""
    # lm-eval's command line indexes its 14,000 built-in tasks first (about 13 s); these tasks are local only
    monkeypatch.setattr("lm_eval.tasks.TaskManager", functools.partial(TaskManager, include_defaults=False))
    args = ["lm-eval", "--model", "revjax", "--model_args", f"run={runs / 'backward'},direction=backward",
            "--tasks", "revjax_mc", "--include_path", str(task_dir), "--output_path", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 0
    written = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    _, results = harness("backward")
    assert written["results"]["revjax_mc"]["acc,none"] == results["results"]["revjax_mc"]["acc,none"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["lm-eval", "--model", "revjax", "--model_args", f"run={tmp_path / 'nothing'}", "--tasks",
                  "revjax_mc", "--include_path", str(task_dir)])
    assert exit_info.value.code == 1
    assert "revjax lm-eval: error:" in capsys.readouterr().err
