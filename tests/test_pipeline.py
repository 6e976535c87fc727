"""Tests for revjax.data.pipeline: golden compat batches, document layouts, exact resumption, multi-process slices."""

import itertools
import json
import random

import grain
import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from revjax.config import Config, ConfigError
from revjax.data.packing import best_fit_rows
from revjax.data.batches import build_pipeline, global_batch
from revjax.data.pipeline import TokenBatchDataset
from revjax.data.shards import ShardError, write_shards
from revjax.direction import inputs_and_targets, orient_document, orient_documents, restore_document

DIRECTIONS = ["forward", "backward", "bidirectional"]
WORDS = "the of and to in that it was his with for as he on be at by had not but from they which you were".split()
DOCS_PER_SHARD, ROW_GROUP, SHARDS = 12, 3, 3
B, T, SEED = 2, 16, 7


def _make_docs() -> list[str]:
    rng = random.Random(0)
    docs = [
        f"Document {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(3, 30))) for i in range(DOCS_PER_SHARD * SHARDS)
    ]
    docs[1] = ""
    return docs


DOCS = _make_docs()
TRAIN_DOCS = DOCS[: DOCS_PER_SHARD * (SHARDS - 1)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    write_shards(DOCS, out, docs_per_shard=DOCS_PER_SHARD, row_group_size=ROW_GROUP)
    return out


def _dataset(data_dir, tok, split="train", **kwargs) -> TokenBatchDataset:
    options = dict(batch_size=B, seq_len=T, seed=SEED, tokenizer_batch_size=5)
    options.update(kwargs)
    return TokenBatchDataset(data_dir, split, tok, **options)


def _expected_stream(tok, specials, direction, epochs):
    """The model-order (ids, is_target) stream of the train split, oriented directly with the direction module."""
    encoded = tok.encode(TRAIN_DOCS)
    parts = [
        orient_documents(encoded, direction, specials, seed=SEED, first_index=epoch * len(TRAIN_DOCS))
        for epoch in range(epochs)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _stream_docs(it, tok, specials, direction):
    """Run a B=1, T=1 finite iterator to its end and return {text: direction token or None} of its documents."""
    inputs, targets = zip(*it)
    stream = np.concatenate([np.concatenate(inputs).ravel(), targets[-1].ravel()])
    starts = np.flatnonzero(stream == specials.bos).tolist() + [len(stream)]
    docs = {}
    for a, b in zip(starts[:-1], starts[1:]):
        doc = stream[a:b]
        marker = int(doc[1]) if direction == "bidirectional" else None
        text = tok.decode(restore_document(doc, direction, specials))
        assert text not in docs
        docs[text] = marker
    return docs


# ---------------------------------------------------------------------------------------------
# Layouts


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_compat_layout_matches_onanchat_golden(golden_dir, tok, direction):
    golden = np.load(golden_dir / f"batches_{direction}.npz")
    n, b, t = golden["inputs"].shape
    ds = TokenBatchDataset(
        golden_dir / "base_data", "train", tok, batch_size=b, seq_len=t, direction=direction, layout="compat"
    )
    it = iter(ds)
    got = [next(it) for _ in range(n)]
    for (inputs, targets), gold_inputs, gold_targets in zip(got, golden["inputs"], golden["targets"]):
        assert inputs.dtype == targets.dtype == np.int32
        np.testing.assert_array_equal(inputs, gold_inputs)
        np.testing.assert_array_equal(targets, gold_targets)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_document_layout_packs_the_oriented_stream(data_dir, tok, specials, direction):
    ids, is_target = _expected_stream(tok, specials, direction, epochs=2)
    it = iter(_dataset(data_dir, tok, direction=direction))
    n = (len(ids) - 1) // (B * T)
    for k in range(n):
        rows = np.lib.stride_tricks.sliding_window_view(ids[k * B * T : k * B * T + B * T + 1], T + 1)[::T]
        masks = np.lib.stride_tricks.sliding_window_view(is_target[k * B * T : k * B * T + B * T + 1], T + 1)[::T]
        want_inputs, want_targets = inputs_and_targets(rows, masks)
        inputs, targets = next(it)
        assert inputs.shape == targets.shape == (B, T) and inputs.dtype == targets.dtype == np.int32
        np.testing.assert_array_equal(inputs, want_inputs)
        np.testing.assert_array_equal(targets, want_targets)
        if k + 1 < n:
            np.testing.assert_array_equal(inputs[1:, 0], ids[k * B * T + T : (k + 1) * B * T : T])


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_masked_targets_are_exactly_the_direction_tokens(data_dir, tok, specials, direction):
    ids, _ = _expected_stream(tok, specials, direction, epochs=2)
    it = iter(_dataset(data_dir, tok, direction=direction))
    n = (len(ids) - 1) // (B * T)
    batches = [next(it) for _ in range(n)]
    inputs = np.stack([x for x, _ in batches]).reshape(-1, T)
    targets = np.stack([y for _, y in batches]).reshape(-1, T)
    true_next = ids[1 : n * B * T + 1].reshape(-1, T)
    is_marker = np.isin(true_next, [specials.forward, specials.backward])
    np.testing.assert_array_equal(targets == -1, is_marker)
    np.testing.assert_array_equal(targets[~is_marker], true_next[~is_marker])
    assert is_marker.any() == (direction == "bidirectional")
    markers = np.isin(inputs, [specials.forward, specials.backward])
    previous = np.concatenate([[0], inputs.ravel()[:-1]]).reshape(inputs.shape)
    assert np.all(previous[markers][1:] == specials.bos)


def test_val_is_finite_unless_cycled(data_dir, tok, specials):
    val = list(_dataset(data_dir, tok, "val"))
    tokens = sum(len(ids) + 1 for ids in tok.encode(DOCS[-DOCS_PER_SHARD:]))
    assert len(val) == (tokens - 1) // (B * T)
    it = iter(_dataset(data_dir, tok, "val", cycle=True))
    assert len([next(it) for _ in range(3 * len(val))]) == 3 * len(val)


# ---------------------------------------------------------------------------------------------
# Packing: marked and bos_aligned rows


def _doc(specials, body, direction, index):
    return orient_document(np.array(body, dtype=np.int32), direction, specials, seed=SEED, index=index)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_best_fit_rows_by_hand(specials, direction):
    """Rows of 6 from a buffer of 3: the largest document that fits, else the shortest cropped (rest dropped)."""
    bodies = [[4], [1, 2, 3], [5, 6, 7, 8, 9, 10], [11]]
    docs = [_doc(specials, b, direction, i) for i, b in enumerate(bodies)]
    heads = [list(ids[: len(ids) - len(b)]) for (ids, _), b in zip(docs, bodies)]
    text = [list(ids[len(h):]) for (ids, _), h in zip(docs, heads)]
    if direction == "bidirectional":  # lengths 3, 5, 8, 3: d1 (5), then nothing fits 1: d0 cropped to its BOS
        want = [heads[1] + text[1] + [specials.bos], heads[3] + text[3] + heads[2][:2] + text[2][:1]]
    else:  # lengths 2, 4, 7, 2: d1 (the largest), then d0 (first of d0, d3); then d3, and d2 cropped to 4
        want = [heads[1] + text[1] + heads[0] + text[0], heads[3] + text[3] + heads[2] + text[2][:3]]
    if direction == "backward":
        assert text[1] == [3, 2, 1] and text[2] == [10, 9, 8, 7, 6, 5]
    got = list(best_fit_rows(docs, 6, 3))
    assert [list(ids) for ids, _ in got] == want
    for ids, is_target in got:
        np.testing.assert_array_equal(is_target, ~np.isin(ids, [specials.forward, specials.backward]))
        assert ids[0] == specials.bos
        assert (ids[1] in (specials.forward, specials.backward)) == (direction == "bidirectional")


def test_best_fit_rows_stop_when_a_row_cannot_be_filled(specials):
    docs = [_doc(specials, [1, 2], "forward", i) for i in range(3)]  # 9 tokens: one row of 6, 3 left over
    assert [list(ids) for ids, _ in best_fit_rows(docs, 6, 2)] == [[specials.bos, 1, 2, specials.bos, 1, 2]]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_marked_rows_repeat_the_document_head_and_score_every_token_once(data_dir, tok, specials, direction):
    ids, is_target = _expected_stream(tok, specials, direction, epochs=1)
    it = iter(_dataset(data_dir, tok, direction=direction, packing="marked", cycle=False))
    inputs, targets = (np.concatenate(x) for x in zip(*it))
    h = 2 if direction == "bidirectional" else 1
    # each row starts with BOS, then the direction token when bidirectional: a document's or a repeated head
    assert np.all(inputs[:, 0] == specials.bos)
    assert np.all(np.isin(inputs[:, 1], [specials.forward, specials.backward]) == (direction == "bidirectional"))
    # the scored tokens are the stream's targets, in order, each once (the last partial batch is dropped)
    scored, want = targets[targets >= 0], ids[1:][is_target[1:]]
    assert len(want) - 2 * B * T < len(scored) <= len(want)
    np.testing.assert_array_equal(scored, want[: len(scored)])
    # a continued row is the head, then (context only) the token the previous row scored last, then new tokens
    continued = [r for r in range(1, len(inputs)) if targets[r, h - 1] == -1]
    assert len(continued) > len(inputs) // 2
    for r in continued:
        assert inputs[r, h] == ids[1:][is_target[1:]][np.count_nonzero(targets[:r] >= 0) - 1]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_bos_aligned_rows_are_best_fit_packed_documents(data_dir, tok, specials, direction):
    docs = [_doc(specials, body, direction, i) for i, body in enumerate(tok.encode(TRAIN_DOCS))]
    want = list(best_fit_rows(docs, T + 1, 4))
    it = iter(_dataset(data_dir, tok, direction=direction, packing="bos_aligned", packing_buffer=4, cycle=False,
                       tokenizer_batch_size=1))
    got = [(x, y) for batch in it for x, y in zip(*batch)]
    assert len(got) == len(want) // B * B > 4
    for (inputs, targets), row in zip(got, want):
        want_inputs, want_targets = inputs_and_targets(*row)
        np.testing.assert_array_equal(inputs, want_inputs)
        np.testing.assert_array_equal(targets, want_targets)
        assert inputs[0] == specials.bos
        assert (inputs[1] in (specials.forward, specials.backward)) == (direction == "bidirectional")
        assert not np.isin(targets, [specials.forward, specials.backward]).any()


def test_packing_is_deterministic_and_refused_with_compat(data_dir, tok):
    for packing in ("marked", "bos_aligned"):
        a, b = (iter(_dataset(data_dir, tok, direction="bidirectional", packing=packing)) for _ in range(2))
        for _ in range(10):
            np.testing.assert_equal(next(a), next(b))
    with pytest.raises(ValueError, match="needs layout=document"):
        _dataset(data_dir, tok, layout="compat", packing="marked")
    with pytest.raises(ValueError, match="unknown packing"):
        _dataset(data_dir, tok, packing="tight")
    with pytest.raises(ConfigError, match=r"data.packing=bos_aligned needs direction.layout=document"):
        Config.from_dict({"data": {"packing": "bos_aligned"}, "direction": {"layout": "compat"}})
    with pytest.raises(ConfigError, match=r"data.packing_buffer=0 must be a positive number"):
        Config.from_dict({"data": {"packing_buffer": 0}})
    with pytest.raises(ValueError, match="above the 2-token document head"):
        _dataset(data_dir, tok, packing="marked", direction="bidirectional", seq_len=2)


# ---------------------------------------------------------------------------------------------
# Checkpointing


@pytest.mark.parametrize(
    ("layout", "direction", "packing"),
    [("document", "bidirectional", "stream"), ("compat", "bidirectional", "stream"),
     ("document", "backward", "stream"), ("document", "bidirectional", "marked"),
     ("document", "bidirectional", "bos_aligned")],
)
def test_grain_checkpoint_checker(data_dir, tok, layout, direction, packing):
    ds = _dataset(data_dir, tok, layout=layout, direction=direction, packing=packing, packing_buffer=3)
    limited = grain.experimental.LimitIterDataset(ds, count=24)
    grain.experimental.assert_equal_output_after_checkpoint(limited)
    prefetched = grain.experimental.ThreadPrefetchIterDataset(limited, prefetch_buffer_size=3)
    grain.experimental.assert_equal_output_after_checkpoint(prefetched)


@pytest.mark.parametrize(("layout", "packing"), [("document", "stream"), ("compat", "stream"),
                                                  ("document", "marked"), ("document", "bos_aligned")])
def test_state_round_trip_mid_shard_across_shards_and_epochs(data_dir, tok, layout, packing):
    config = Config.from_dict(
        {
            "data": {"corpus": "parquet", "dir": str(data_dir), "tokenizer_batch_size": 4, "packing": packing,
                     "packing_buffer": 3},
            "direction": {"direction": "bidirectional", "layout": layout, "seed": SEED},
        }
    )
    reference = build_pipeline(config, tok, "train", batch_size=B, seq_len=T, prefetch=0)
    states, batches = [], []
    for _ in range(60):
        states.append(json.loads(json.dumps(reference.get_state())))
        batches.append(next(reference))
    assert {s["epoch"] for s in states} >= {0, 1, 2}
    crossings = [i for i in range(1, 60) if states[i]["shard"] != states[i - 1]["shard"]]
    wraps = [i for i in range(1, 60) if states[i]["epoch"] != states[i - 1]["epoch"]]
    mid = [i for i in range(60) if states[i]["offset"] > 0 or states[i].get("buffer", "").count("+") > 1][:2]
    assert crossings and wraps and mid
    for i in sorted({1, *mid, *crossings[:3], *wraps[:2]}):
        resumed = build_pipeline(config, tok, "train", batch_size=B, seq_len=T, prefetch=2)
        resumed.set_state(states[i])
        assert resumed.get_state() == states[i]
        for k in range(i, min(i + 6, 59)):
            np.testing.assert_equal(next(resumed), batches[k])
            assert resumed.get_state() == states[k + 1]
        resumed.close()


def test_prefetching_state_reflects_yielded_batches(data_dir, tok):
    sync = iter(_dataset(data_dir, tok, direction="bidirectional"))
    ds = _dataset(data_dir, tok, direction="bidirectional")
    prefetched = iter(grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=4))
    for _ in range(7):
        np.testing.assert_equal(next(prefetched), next(sync))
        assert prefetched.get_state() == sync.get_state()
    prefetched.close()


# ---------------------------------------------------------------------------------------------
# Multi-process


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_process_slices_are_disjoint_and_cover_the_split(data_dir, tok, specials, direction):
    def docs(p, count):
        ds = _dataset(data_dir, tok, direction=direction, batch_size=1, seq_len=1, cycle=False,
                      process_index=p, process_count=count)
        return _stream_docs(iter(ds), tok, specials, direction)

    single = docs(0, 1)
    assert sorted(single) == sorted(TRAIN_DOCS)
    for count in (2, 3):
        slices = [docs(p, count) for p in range(count)]
        assert sum(len(s) for s in slices) == len(single)
        merged = {text: marker for s in slices for text, marker in s.items()}
        assert merged == single
        assert all(len(s) > 0 for s in slices)


def test_global_batch_on_eight_devices(data_dir, tok):
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    local = next(iter(_dataset(data_dir, tok, batch_size=8, direction="bidirectional")))
    inputs, targets = global_batch(local, sharding)
    for array, want in zip((inputs, targets), local):
        assert array.shape == (8, T) and array.dtype == np.int32 and array.sharding == sharding
        np.testing.assert_array_equal(np.asarray(array), want)
        for shard in array.addressable_shards:
            assert shard.data.shape == (1, T)
            np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])


# ---------------------------------------------------------------------------------------------
# Errors


def test_clear_errors(data_dir, tok, tmp_path):
    with pytest.raises(ShardError, match="no parquet shards"):
        TokenBatchDataset(tmp_path, "train", tok, batch_size=B, seq_len=T)
    with pytest.raises(ValueError, match="no documents for process 4 of 5"):
        _dataset(data_dir, tok, "val", process_index=4, process_count=5)
    with pytest.raises(ValueError, match="process_index must be in"):
        _dataset(data_dir, tok, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="unknown layout"):
        _dataset(data_dir, tok, layout="rows")
    with pytest.raises(ValueError, match="unknown direction"):
        _dataset(data_dir, tok, direction="sideways")
    with pytest.raises(ValueError, match="fewer than the 4097 tokens"):
        next(iter(_dataset(data_dir, tok, "val", batch_size=64, seq_len=64)))


def test_damaged_shards_are_named(tok, tmp_path):
    write_shards(["a b c", "d e f", "g h i"], tmp_path, docs_per_shard=1)
    pq.write_table(pa.table({"text": ["x y z", None]}), tmp_path / "shard_00001.parquet", row_group_size=1)
    dataset = _dataset(tmp_path, tok, batch_size=1, seq_len=4, tokenizer_batch_size=1)
    with pytest.raises(ShardError, match=r"row 0 of row group 1 in .*shard_00001.parquet holds a null text, but "
                                         r"every row's 'text' must be a string"):
        list(itertools.islice(iter(dataset), 10))
    (tmp_path / "shard_00000.parquet").write_text("not parquet")
    with pytest.raises(ShardError, match=r"shard_00000.parquet is not a parquet file .*delete or replace it"):
        _dataset(tmp_path, tok)


def test_state_errors(data_dir, tok):
    it = iter(_dataset(data_dir, tok, process_index=0, process_count=2))
    next(it)
    state = it.get_state()
    with pytest.raises(ValueError, match="saved with process_count=2"):
        iter(_dataset(data_dir, tok)).set_state(state)
    fresh = iter(_dataset(data_dir, tok, process_index=0, process_count=2))
    with pytest.raises(ValueError, match="does not hold"):
        fresh.set_state({**state, "row_group": 1})
    fresh.set_state({**state, "offset": 10_000})
    with pytest.raises(ValueError, match="past the end of its document"):
        next(fresh)
