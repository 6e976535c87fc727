"""``revjax compare``: bits per byte and per-position loss on the same documents against a direct computation, the
derived gap / balance / native-vs-cross numbers, reuse of ``revjax eval`` results, and the plots."""

import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from revjax.checkpoint import Checkpointer
from revjax.runs import build_metadata
from revjax.config import ModelConfig, load_config
from revjax.data.shards import write_shards
from revjax.direction import Specials
from revjax.eval.compare import compare_runs, main, pieces, validation_documents
from revjax.eval.run import evaluate_run
from revjax.interop.state_dict import load_params, model_params
from revjax.model import GPT
from tests.helpers import write_bundle

CONFIG = ModelConfig(sequence_len=64, vocab_size=2048, n_layer=2, n_head=2, n_kv_head=2, n_embd=64,
                     compute_dtype="float32")
PAD = 128
DOCS = [f"document {i} says hello to the world and counts {i}, {i + 1}, {i + 2}." * (1 + 3 * (i % 3))
        for i in range(30)]


def make_run(base, golden_dir, tok, direction: str, seed: int):
    """A run folder ``base/checkpoints/<direction>`` holding step 2 of a tiny GPT with random non-zero weights."""
    config = load_config(overrides=[
        f"base_dir={base}", f"run_name={direction}", f"tokenizer.dir={golden_dir / 'tokenizer'}",
        "tokenizer.vocab_size=2048", "model.depth=null", "model.n_layer=2", "model.n_embd=64", "model.n_head=2",
        "model.n_kv_head=2", "model.sequence_len=64", "model.compute_dtype=float32",
        f"direction.direction={direction}"])
    gpt = GPT(CONFIG, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.08, p.shape).astype(np.float32),
                          model_params(gpt))
    load_params(gpt, params)
    metadata = build_metadata(step=2, direction=direction, phase="base", model_config=config.model.gpt_config(),
                              config=config.to_dict(), tokenizer_identity=tok.identity(),
                              tokenizer_path=str(golden_dir / "tokenizer"), val_bpb=None)
    with Checkpointer(config.checkpoint_path(), async_save=False) as checkpointer:
        checkpointer.save(2, {"params": params}, data_state=None, metadata=metadata)
    return config.checkpoint_path(), gpt


@pytest.fixture(scope="module")
def runs(tmp_path_factory, golden_dir, tok):
    base = tmp_path_factory.mktemp("compare")
    write_shards(DOCS, base / "data" / "default", docs_per_shard=10)  # the last shard (10 docs) is val
    return base, {d: make_run(base, golden_dir, tok, d, seed) for seed, d in
                  enumerate(("forward", "backward", "bidirectional"))}


def direct_curve(gpt, tok, chunks, prefix, reverse):
    """Per context position: the list of losses of the tokens read after that many others, by a full forward of
    ``[BOS, *prefix, *piece (reversed when reading backward)]`` padded to PAD."""
    graphdef, state = nnx.split(gpt)
    forward = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids))
    losses: dict[int, list[float]] = {}
    nats = nbytes = 0.0
    table = tok.token_bytes()
    for chunk in chunks:
        body = chunk[::-1] if reverse else chunk
        ids = [tok.bos_id, *prefix, *body]
        padded = np.zeros((1, PAD), np.int32)
        padded[0, :len(ids)] = ids
        logits = np.asarray(forward(state, padded), np.float64)[0]
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        for k, token in enumerate(body):
            nll = -logp[len(prefix) + k, token]
            losses.setdefault(k, []).append(nll)
            nats, nbytes = nats + nll, nbytes + table[token]
    return losses, nats / (math.log(2) * nbytes), nbytes


def test_same_documents_and_pieces(runs, tok):
    base, _ = runs
    texts = validation_documents(base / "data" / "default", max_chars=10 ** 6)
    assert texts == DOCS[20:]
    assert validation_documents(base / "data" / "default", max_chars=100) == [DOCS[20][:100]]
    chunks = pieces(texts, tok, 63)
    assert [t for c in chunks for t in c] == [t for text in texts for t in tok.encode(text)]
    assert max(map(len, chunks)) == 63 and any(len(c) < 63 for c in chunks)


def test_compare_numbers_against_direct_computation(runs, tok, tmp_path, capsys):
    base, made = runs
    specials = Specials.from_tokenizer(tok)
    dirs = [str(made[d][0]) for d in ("forward", "backward", "bidirectional")]
    # a saved `revjax eval` CORE result is reused when step and per-task cap match
    bundle = write_bundle(tmp_path / "src").parent / "eval_bundle"
    saved = evaluate_run(dirs[0], "core", max_per_task=3, bundle=str(bundle), progress=False,
                         tokens_per_call=1024)
    path = made["forward"][0] / "eval" / "core-step2.json"
    marked = json.loads(path.read_text())
    marked["suites"]["core"]["ways"]["forward"]["score"] = 0.125  # a value only the saved file holds
    path.write_text(json.dumps(marked))
    assert main([*dirs, "--out", str(tmp_path / "out"), "--suite", "core", "--max-per-task", "3", "--bundle",
                 str(bundle), "--batch-tokens", "1024", "--max-chars", "3000"]) == 0
    assert "Gap (backward model − forward model)" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "compare.json").read_text())
    models = {m["direction"]: m for m in result["models"]}
    assert result["metrics"] == ["bpb", "CORE"]
    assert models["forward"]["suites"]["core"]["reused"] and not models["backward"]["suites"]["core"]["reused"]
    assert models["forward"]["ways"]["forward"]["metrics"]["CORE"] == 0.125
    assert saved["suites"]["core"]["ways"]["forward"]["score"] != 0.125
    assert (made["backward"][0] / "eval" / "core-step2.json").is_file()  # computed and saved as revjax eval does

    texts = validation_documents(base / "data" / "default", max_chars=3000)
    chunks = pieces(texts, tok, 63)
    total_bytes = sum(len(t.encode()) for t in texts)
    for direction, way, prefix in (("forward", "forward", []), ("backward", "backward", []),
                                   ("bidirectional", "forward", [specials.forward]),
                                   ("bidirectional", "backward", [specials.backward])):
        got = models[direction]["ways"][way]
        losses, bpb, nbytes = direct_curve(made[direction][1], tok, chunks, prefix, way == "backward")
        assert nbytes == got["bytes"] == total_bytes  # every model counts the same bytes
        assert got["bpb"] == pytest.approx(bpb, rel=1e-5)
        assert len(got["per_position"]) == 63
        for k in range(63):
            assert got["per_position"][k] == pytest.approx(np.mean(losses[k]), rel=1e-5)
            assert got["per_position_count"][k] == len(losses[k])

    def metric(direction, way, name):
        return models[direction]["ways"][way]["metrics"][name]

    gaps = {row["metric"]: row["gap"] for row in result["gap"]}
    assert gaps["bpb"] == pytest.approx(metric("backward", "backward", "bpb") - metric("forward", "forward", "bpb"))
    assert gaps["CORE"] == pytest.approx(metric("backward", "backward", "CORE") - 0.125)
    balance = {row["metric"]: row["balance"] for row in result["balance"]}
    assert balance["bpb"] == pytest.approx(metric("bidirectional", "backward", "bpb")
                                           - metric("bidirectional", "forward", "bpb"))
    cross = {(row["metric"], row["way"]): row for row in result["native_vs_cross"]}
    assert cross[("bpb", "forward")]["dedicated_model"] == "forward"
    assert cross[("bpb", "backward")]["difference"] == pytest.approx(
        metric("bidirectional", "backward", "bpb") - metric("backward", "backward", "bpb"))
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert f"| bpb | forward | backward | {metric('forward', 'forward', 'bpb'):.4f}" in markdown
    for png in ("position_loss.png", "scores.png"):
        data = (tmp_path / "out" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_compare_reads_saved_chatcore_and_refuses_bad_input(runs, tmp_path, capsys):
    base, made = runs
    for direction, value in (("forward", 0.25), ("backward", 0.5)):
        run_dir = made[direction][0]
        chat = {"suite": "ChatCORE", "max_per_task": 4, "ways": {direction: {
            "answer": {"tasks": {}, "score": value}, "joint": {"tasks": {}, "score": value / 2}}}}
        (run_dir / "eval" ).mkdir(exist_ok=True)
        (run_dir / "eval" / "chat-step2.json").write_text(json.dumps(
            {"run_dir": str(run_dir), "step": 2, "suites": {"chat": chat}}))
    result = compare_runs([made["forward"][0], made["backward"][0]], tmp_path / "chat", suite="chat",
                          max_per_task=4, max_chars=500, tokens_per_call=1024, progress=False)
    gaps = {row["metric"]: row["gap"] for row in result["gap"]}
    assert gaps["ChatCORE"] == pytest.approx(0.25) and gaps["ChatCORE-joint"] == pytest.approx(0.125)
    assert result["balance"] == [] and result["native_vs_cross"] == []
    assert main([str(made["forward"][0]), str(tmp_path / "nowhere")]) != 0
    assert "nowhere" in capsys.readouterr().err
