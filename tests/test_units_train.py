"""Reversal units in training: the config key, the base pipeline, conversation batches, val bits per byte, checkpoint
metadata, continuing a checkpoint, and export → import — each against hand-written text."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from revjax.checkpoint import Checkpointer, CheckpointMismatch
from revjax.config import ConfigError, load_config
from revjax.data.conversations import ConversationDataError, ConversationDataset, orient_messages
from revjax.data.pipeline import TokenBatchDataset
from revjax.data.shards import write_shards
from revjax.direction import Direction, Specials, Unit, document_direction, reverse_units
from revjax.eval.bpb import document_rows, evaluate_bpb
from revjax.eval.positions import pieces, read_pieces
from revjax.eval.run import evaluate_run
from revjax.eval.suites import validation_texts
from revjax.interop.export import export_checkpoint
from revjax.interop.hf import export_hf
from revjax.interop.importer import import_checkpoint
from revjax.runs import build_metadata, check_compatible, load_run
from revjax.tokenizer import Tokenizer
from revjax.train.errors import TrainingError
from revjax.train.loop import train
from revjax.train.rl import check_rl_direction
from tests.helpers import base  # noqa: F401  (the tiny corpus and tokenizer fixture)
from tests.helpers import train_overrides

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "revjax" / "configs" / "direction"

# documents with their word- and entity-reversed texts, written by hand
DOCS = [
    ("the cat sat on the mat.", "mat. the on sat cat the", "mat. the on sat cat the"),
    ("Ada Lovelace wrote notes.", "notes. wrote Lovelace Ada", "notes. wrote Ada Lovelace"),
    ("we walked 5 km to New York", "York New to km 5 walked we", "New York to 5 km walked we"),
    ("one\n\ntwo  three", "three  two\n\none", "three  two\n\none"),
]
REVERSED = {"word": [d[1] for d in DOCS], "entity": [d[2] for d in DOCS]}


@pytest.fixture(scope="module")
def tokenizer(base):
    return Tokenizer.load(base / "tokenizer")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two train shards and one val shard holding DOCS (in order) in every one."""
    folder = tmp_path_factory.mktemp("units_corpus")
    write_shards([d[0] for d in DOCS] * 3, folder, docs_per_shard=len(DOCS), row_group_size=len(DOCS))
    return folder


def documents(tokenizer, ids) -> list[str]:
    """The texts between BOS tokens of a model-order stream (a bidirectional marker kept as its own entry)."""
    s = Specials.from_tokenizer(tokenizer)
    out, run = [], []
    for t in [int(t) for t in ids] + [s.bos]:
        if t in (s.bos, s.forward, s.backward):
            if run:
                out.append(tokenizer.decode(run))
            run = []
            if t != s.bos:
                out.append({s.forward: "F", s.backward: "K"}[t])
        else:
            run.append(t)
    return out


def first_batch(corpus, tokenizer, **kwargs):
    ds = TokenBatchDataset(corpus, "train", tokenizer, batch_size=1, seq_len=120, cycle=False, tokenizer_threads=1,
                           **kwargs)
    it = iter(ds)
    inputs, targets = next(it)
    return inputs[0], targets[0], it


# ---- configuration ---------------------------------------------------------------------------------------------

def test_config_unit_files_and_refusals():
    for direction in ("backward", "bidirectional"):
        for unit in ("word", "entity"):
            d = load_config([CONFIGS / f"{direction}-{unit}.yaml"]).direction
            assert (d.direction, d.unit, d.layout) == (direction, unit, "document")
    assert load_config().direction.unit == "token"
    assert load_config().to_dict()["direction"]["unit"] == "token"
    with pytest.raises(ConfigError, match=r"direction.unit=word .* direction.direction=forward .* use "
                                          r"direction.unit=token for a forward model"):
        load_config(overrides=["direction.unit=word"])
    with pytest.raises(ConfigError, match=r"direction.unit=entity needs direction.layout=document"):
        load_config([CONFIGS / "backward-compat.yaml"], ["direction.unit=entity"])
    with pytest.raises(ConfigError, match=r"direction.unit must be one of 'token', 'word', 'entity', got 'letter'"):
        load_config(overrides=["direction.direction=backward", "direction.unit=letter"])


# ---- the base pipeline -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("unit", ["word", "entity"])
def test_backward_text_unit_batch_decodes_to_reversed_documents(corpus, tokenizer, unit):
    inputs, targets, _ = first_batch(corpus, tokenizer, direction="backward", unit=unit)
    stream = np.concatenate([inputs, targets[-1:]])
    assert documents(tokenizer, stream)[:3] == REVERSED[unit][:3]
    # each body is the tokenizer's ids of the reversed text, in the tokenizer's order (never reversed ids)
    bos = tokenizer.bos_id
    assert list(stream[: 2 + len(tokenizer.encode(REVERSED[unit][0]))]) == [bos, *tokenizer.encode(REVERSED[unit][0]),
                                                                            bos]


def test_backward_token_unit_batch_reverses_ids(corpus, tokenizer):
    inputs, _, _ = first_batch(corpus, tokenizer, direction="backward")
    ids = tokenizer.encode(DOCS[0][0])
    assert list(inputs[: len(ids) + 2]) == [tokenizer.bos_id, *ids[::-1], tokenizer.bos_id]


def test_bidirectional_word_unit_reverses_each_backward_document(corpus, tokenizer):
    seed = 3
    inputs, targets, _ = first_batch(corpus, tokenizer, direction="bidirectional", unit="word", seed=seed)
    got = documents(tokenizer, np.concatenate([inputs, targets[-1:]]))
    ways = [document_direction("bidirectional", seed, i) for i in range(3)]
    assert set(ways) == {Direction.FORWARD, Direction.BACKWARD}  # the seed draws both ways among the first three
    expected = []
    for i, way in enumerate(ways):
        expected += ["K", DOCS[i][1]] if way is Direction.BACKWARD else ["F", DOCS[i][0]]
    assert got[:6] == expected


def test_pipeline_state_records_the_unit(corpus, tokenizer):
    _, _, it = first_batch(corpus, tokenizer, direction="backward", unit="word")
    state = it.get_state()
    assert state["unit"] == "word"
    _, _, token_it = first_batch(corpus, tokenizer, direction="backward")
    with pytest.raises(ValueError, match="saved with unit='word' but this pipeline has unit='token'"):
        token_it.set_state(state)
    older = {k: v for k, v in token_it.get_state().items() if k != "unit"}  # saved before reversal units
    token_it.set_state(older)


# ---- validation bits per byte ----------------------------------------------------------------------------------

def test_val_rows_count_the_same_bytes_for_every_unit(tokenizer):
    texts = [d[0] for d in DOCS]
    table = tokenizer.token_bytes("decode")
    counted = {}
    for direction, unit in (("backward", "token"), ("backward", "word"), ("backward", "entity"),
                            ("bidirectional", "word"), ("forward", "token")):
        ways = ["forward", "backward"] if direction == "bidirectional" else [direction]
        for way in ways:
            rows = list(document_rows(texts, tokenizer, direction, way, 1, 128, unit=unit))  # one padded batch
            targets = np.concatenate([t.ravel() for _, t in rows])
            counted[direction, unit, way] = int(table[targets[targets >= 0]].sum())
    assert set(counted.values()) == {sum(len(t.encode()) for t in texts)}
    # a backward word-unit model reads the reversed text, its ids as the tokenizer gives them
    inputs, _ = next(document_rows(texts[:1], tokenizer, "backward", "backward", 1, 64, unit="word"))
    assert list(inputs[0][: 1 + len(tokenizer.encode(DOCS[0][1]))]) == [tokenizer.bos_id,
                                                                        *tokenizer.encode(DOCS[0][1])]
    with pytest.raises(ValueError, match="a backward model reads backward only, not forward"):
        next(document_rows(texts, tokenizer, "backward", "forward", 1, 16, unit="word"))


# ---- conversations ---------------------------------------------------------------------------------------------

CONVERSATION = {"messages": [{"role": "user", "content": "Who wrote Hamlet?"},
                             {"role": "assistant", "content": "William Shakespeare did."}]}


def sft(tokenizer, unit, mode, direction="backward", seed=0, kind="sft"):
    ds = ConversationDataset([CONVERSATION], tokenizer, kind=kind, rows=1, seq_len=80, direction=direction,
                             mode=mode, unit=unit, seed=seed)
    return ds.sft_example(0) if kind == "sft" else ds.mid_example(0, 0)


def test_sequence_mode_word_unit_conversation_by_hand(tokenizer):
    s, enc = Specials.from_tokenizer(tokenizer), tokenizer.encode
    ids, mask = sft(tokenizer, "word", "sequence")
    answer, question = enc("did. Shakespeare William"), enc("Hamlet? wrote Who")
    assert ids == [s.bos, s.assistant_end, *answer, s.assistant_start, s.user_end, *question, s.user_start]
    # BackChat: the user turn is what a backward chat model writes, so it is the supervised part
    assert mask == [0, 0, *[0] * len(answer), 0, 1, *[1] * len(question), 1]
    ids, _ = sft(tokenizer, "entity", "sequence")
    assert ids[2: 2 + len(enc("did. William Shakespeare"))] == enc("did. William Shakespeare")
    mid_ids, mid_mask = sft(tokenizer, "word", "sequence", kind="mid")
    assert mid_ids.tolist() == [s.bos, s.assistant_end, *answer, s.assistant_start, s.user_end, *question,
                                s.user_start] and mid_mask.all()


def test_turn_mode_word_unit_conversation_by_hand(tokenizer):
    s, enc = Specials.from_tokenizer(tokenizer), tokenizer.encode
    ids, mask = sft(tokenizer, "word", "turn")
    question, answer = enc("Hamlet? wrote Who"), enc("did. Shakespeare William")
    assert ids == [s.bos, s.user_start, *question, s.user_end, s.assistant_start, *answer, s.assistant_end]
    assert mask == [0, 0, *[0] * len(question), 0, 0, *[1] * len(answer), 1]


def test_bidirectional_word_unit_conversation_and_token_unit_unchanged(tokenizer):
    s, enc = Specials.from_tokenizer(tokenizer), tokenizer.encode
    seeds = {document_direction("bidirectional", seed, 0): seed for seed in range(20)}
    ids, _ = sft(tokenizer, "word", "sequence", "bidirectional", seeds[Direction.BACKWARD])
    assert ids[:3] == [s.bos, s.backward, s.assistant_end]
    assert ids[3: 3 + len(enc("did. Shakespeare William"))] == enc("did. Shakespeare William")
    ids, _ = sft(tokenizer, "word", "sequence", "bidirectional", seeds[Direction.FORWARD])
    assert ids == [s.bos, s.forward, s.user_start, *enc("Who wrote Hamlet?"), s.user_end, s.assistant_start,
                   *enc("William Shakespeare did."), s.assistant_end]
    ids, _ = sft(tokenizer, "token", "sequence")
    answer = enc("William Shakespeare did.")
    assert ids[: 2 + len(answer)] == [s.bos, s.assistant_end, *answer[::-1]]
    with pytest.raises(ConversationDataError, match="compat layout reverses token ids"):
        ConversationDataset([CONVERSATION], tokenizer, kind="sft", rows=1, seq_len=8, direction="backward",
                            layout="compat", unit="word")


def test_orient_messages_merges_system_and_text_parts_by_hand():
    conversation = {"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add two and three."},
        {"role": "assistant", "content": [{"type": "text", "text": "It is "}, {"type": "text", "text": "five now."},
                                          {"type": "python", "text": "2 + 3"},
                                          {"type": "python_output", "text": "5"}]}]}
    out = orient_messages(conversation, "backward", "word")
    assert out["messages"] == [
        {"role": "user", "content": "three. and two Add\n\nbrief. Be"},
        {"role": "assistant", "content": [{"type": "text", "text": "now. five is It"},
                                          {"type": "python", "text": "3 + 2"},
                                          {"type": "python_output", "text": "5"}]}]
    assert conversation["messages"][0]["content"] == "Be brief."  # the source is left as it is
    assert orient_messages(conversation, "forward", "word") is conversation
    assert orient_messages(conversation, "backward", "token") is conversation


def test_rl_refuses_text_units():
    config = load_config(overrides=["direction.direction=bidirectional", "direction.unit=word",
                                    "direction.conversation=turn"])
    with pytest.raises(TrainingError, match="trains direction.unit=token only, not word"):
        check_rl_direction(config)


# ---- metadata, continuing, export and import ---------------------------------------------------------------------

def test_metadata_records_the_unit_and_continuing_another_unit_is_refused():
    meta = build_metadata(step=3, direction="backward", unit="word", phase="base", model_config={}, config={},
                          tokenizer_identity="t", tokenizer_path=".", val_bpb=None)
    assert meta["unit"] == "word"
    check_compatible(meta, direction="backward", unit="word", tokenizer_identity="t")
    with pytest.raises(CheckpointMismatch, match="unit is 'word' in the checkpoint but 'entity' in this run"):
        check_compatible(meta, direction="backward", unit="entity", tokenizer_identity="t")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_compatible(meta, direction="backward", unit="token", tokenizer_identity="t", force=True)
    assert "unit is 'word' in the checkpoint but 'token'" in str(caught[0].message)
    older = {k: v for k, v in meta.items() if k != "unit"}  # saved before reversal units: token
    check_compatible(older, direction="backward", tokenizer_identity="t")
    with pytest.raises(CheckpointMismatch, match="unit is 'token' in the checkpoint but 'word' in this run"):
        check_compatible(older, direction="backward", unit="word", tokenizer_identity="t")


def test_word_unit_run_trains_records_exports_and_imports(base, tmp_path):
    word = {"direction.direction": "backward", "direction.unit": "word", "training.num_iterations": 2,
            "checkpoint.save_every": 2, "training.eval_every": 2, "training.sample_every": 0}
    result = train(load_config(overrides=train_overrides(base, "word_unit", **word)))
    assert sorted(result.losses) == [0, 1] and all(np.isfinite(list(result.losses.values())))
    assert 0 < result.val_bpb < 20
    run = load_run(result.run_dir)
    assert run.meta["unit"] == "word" and run.unit is Unit.WORD and run.config.direction.unit == "word"
    # revjax eval reads the val texts reversed by words (token units would score other sequences)
    texts = validation_texts(run.config, run.config.training.eval_tokens)
    kwargs = dict(ways=["backward"], seq_len=run.config.model.sequence_len, max_tokens=run.config.training.eval_tokens,
                  packing=run.config.data.val_packing)
    by_word = evaluate_bpb(run.graphdef, run.params, run.tokenizer, "backward", texts, unit="word", **kwargs)
    by_token = evaluate_bpb(run.graphdef, run.params, run.tokenizer, "backward", texts, **kwargs)
    assert abs(by_token["backward"]["bpb"] - by_word["backward"]["bpb"]) > 1e-4
    evaluated = evaluate_run(result.run_dir, "bpb", bpb_tokens=run.config.training.eval_tokens, progress=False)
    assert evaluated["suites"]["bpb"]["ways"]["backward"]["bpb"] == pytest.approx(by_word["backward"]["bpb"], rel=1e-5)
    with pytest.raises(CheckpointMismatch, match="unit is 'word' in the checkpoint but 'token' in this run"):
        train(load_config(overrides=train_overrides(base, "word_unit", **{**word, "direction.unit": "token",
                                                                            "training.num_iterations": 3})))
    flat = export_checkpoint(result.run_dir, tmp_path / "flat", layout="flat")
    meta_path = flat.parent / "meta.json"
    assert json.loads(meta_path.read_text())["unit"] == "word"
    assert load_run(import_checkpoint(flat.parent, tmp_path / "back_flat")).unit is Unit.WORD
    hf = export_hf(result.run_dir, tmp_path / "hf")
    info = json.loads((Path(hf) / "config.json").read_text())["revjax"]
    assert (info["direction"], info["unit"]) == ("backward", "word")
    back = load_run(import_checkpoint(hf, tmp_path / "back_hf"))
    assert back.unit is Unit.WORD and back.config.direction.unit == "word"
    meta = json.loads(meta_path.read_text())
    del meta["unit"]  # an onanchat checkpoint says nothing of units: token
    meta_path.write_text(json.dumps(meta))
    assert load_run(import_checkpoint(flat.parent, tmp_path / "back_token")).unit is Unit.TOKEN


def test_compare_pieces_keep_their_bytes_for_text_units(tokenizer):
    texts = ["Ada Lovelace met Charles Babbage in London.\nThey wrote about the Engine — é ü 5 km."]
    chunks = pieces(texts, tokenizer, window=9)
    token_bytes = tokenizer.encoding.decode_single_token_bytes
    text_of = lambda ids: b"".join(token_bytes(t) for t in ids).decode()  # noqa: E731
    assert "".join(text_of(c) for c in chunks) == texts[0] and all(len(c) <= 9 for c in chunks)
    for unit in ("word", "entity"):
        read = read_pieces(chunks, tokenizer, "backward", unit, window=9)
        assert all(len(r) <= 9 for r in read)
        # each chunk's reversed text, whole: the same bytes, the words of each piece last first
        assert "".join(text_of(r) for r in read) == "".join(reverse_units(text_of(c), unit) for c in chunks)
    assert read_pieces(chunks, tokenizer, "forward", "word", window=9) == chunks
    assert read_pieces(chunks, tokenizer, "backward", "token", window=9) == chunks
