"""Tests for revjax.data.conversations: mid/SFT layouts per direction and mode, masks, order, resume, process split."""

import json

import numpy as np
import pytest

from revjax.config import Config
from revjax.data.conversations import ConversationBatches, ConversationDataError
from revjax.direction import Specials, choose_direction, restore_conversation

# The golden tokenizer's ids (tests/golden/tokenizer/special_ids.json).
B, US, UE, AS, AE, F, K = 2037, 2038, 2039, 2040, 2041, 2046, 2047
Q1, A1, Q2, A2 = [1677], [99, 100], [120], [121, 122]  # "ab", "cd", "x", "yz"
CONV = {"messages": [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "cd"},
                     {"role": "user", "content": "x"}, {"role": "assistant", "content": "yz"}]}
READING = [B, US, *Q1, UE, AS, *A1, AE, US, *Q2, UE, AS, *A2, AE]  # 15 tokens
WORDS = "the of and to in that it was his with for as he on be at by had not but from they which you were".split()


def _source(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    convs = []
    for i in range(n):
        turns = []
        for t in range(2 * int(rng.integers(1, 3))):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 6))))
            turns.append({"role": "user" if t % 2 == 0 else "assistant", "content": f"{i} {text}"})
        convs.append({"messages": turns})
    return convs


SOURCE = _source(7)


def _config(direction="forward", layout="document", conversation="sequence", seed=0) -> Config:
    return Config.from_dict({"direction": {"direction": direction, "layout": layout, "conversation": conversation,
                                           "seed": seed}, "training": {"seed": 3}})


def _batches(tok, source, kind, *, rows=1, seq_len=20, n=1, prefetch=0, **kwargs):
    options = {k: kwargs.pop(k) for k in ("direction", "layout", "conversation", "seed") if k in kwargs}
    it = ConversationBatches(_config(**options), tok, source, kind=kind, rows=rows, seq_len=seq_len,
                             prefetch=prefetch, **kwargs)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def _expected_row(ids, mask, seq_len):
    """Hand layout → the SFT row: inputs padded with AE, targets −1 where not a target or padding."""
    ids, mask = ids[: seq_len + 1], mask[: seq_len + 1]
    inputs = (ids[:-1] + [AE] * seq_len)[:seq_len]
    targets = ([t if m else -1 for t, m in zip(ids[1:], mask[1:])] + [-1] * seq_len)[:seq_len]
    return inputs, targets


def _seed_for(direction: str) -> int:
    return next(s for s in range(100) if choose_direction(s, 0).value == direction)


def test_reading_order_render_is_what_the_hand_layouts_assume(tok):
    ids, mask = tok.render_conversation(CONV)
    assert ids == READING
    assert mask == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]


# Model-order layouts of CONV written out by hand: (ids, is_target).
BACKWARD_SEQ = [B, AE, *A2[::-1], AS, UE, *Q2, US, AE, *A1[::-1], AS, UE, *Q1, US]
SFT_CASES = {
    "forward": (dict(direction="forward"), READING, [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]),
    "backward-sequence-generated": (dict(direction="backward"), BACKWARD_SEQ,
                                    [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]),
    "backward-sequence-assistant": (dict(direction="backward", loss_mask="assistant"), BACKWARD_SEQ,
                                    [0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]),
    "backward-turn": (dict(direction="backward", conversation="turn"),
                      [B, US, *Q1, UE, AS, *A1[::-1], AE, US, *Q2, UE, AS, *A2[::-1], AE],
                      [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]),
    "bidirectional-backward": (dict(direction="bidirectional", seed=_seed_for("backward")), [B, K, *BACKWARD_SEQ[1:]],
                               [0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]),
    "bidirectional-forward-turn": (dict(direction="bidirectional", conversation="turn", seed=_seed_for("forward")),
                                   [B, F, *READING[1:]], [0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]),
    "compat-backward": (dict(direction="backward", layout="compat", conversation="turn"), BACKWARD_SEQ,
                        [0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]),
}


@pytest.mark.parametrize("case", list(SFT_CASES))
def test_sft_rows_match_hand_layouts(tok, case):
    options, ids, mask = SFT_CASES[case]
    [(inputs, targets)] = _batches(tok, [CONV], "sft", seq_len=20, **options)
    assert inputs.dtype == targets.dtype == np.int32 and inputs.shape == targets.shape == (1, 20)
    want_inputs, want_targets = _expected_row(ids, mask, 20)
    assert inputs[0].tolist() == want_inputs
    assert targets[0].tolist() == want_targets
    # the loss counts exactly the hand-marked targets (BOS is never one in SFT)
    assert int((targets != -1).sum()) == sum(mask[1:]) == 6


def test_compat_sft_bidirectional_alternates_by_example_position(tok):
    [(inputs, targets)] = _batches(tok, [CONV], "sft", rows=2, seq_len=16, direction="bidirectional",
                                   layout="compat", conversation="turn")
    assigned = [0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    for row, (ids, mask) in enumerate([([B, F, *READING[1:]], [0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]),
                                       ([B, K, *BACKWARD_SEQ[1:]], [0, 0, *assigned[1:]])]):
        assert (inputs[row].tolist(), targets[row].tolist()) == _expected_row(ids, mask, 16)


def test_sft_truncates_to_the_model_order_prefix_and_pads(tok):
    [(inputs, targets)] = _batches(tok, [CONV], "sft", seq_len=6)
    assert inputs[0].tolist() == [B, US, *Q1, UE, AS, A1[0]]
    assert targets[0].tolist() == [-1, -1, -1, -1, A1[0], A1[1]]
    [(inputs, targets)] = _batches(tok, [CONV], "sft", seq_len=6, direction="backward")
    assert inputs[0].tolist() == [B, AE, A2[1], A2[0], AS, UE]
    assert targets[0].tolist() == [-1, -1, -1, -1, UE, Q2[0]]
    [(inputs, targets)] = _batches(tok, [CONV], "sft", seq_len=17)
    assert inputs[0, 14:].tolist() == [AE] * 3 and targets[0, 14:].tolist() == [-1] * 3


def test_sft_val_stream_ends_with_a_padded_batch(tok):
    it = ConversationBatches(_config(), tok, SOURCE, kind="sft", rows=3, seq_len=12, cycle=False, prefetch=0)
    batches = list(it)
    assert len(batches) == 3  # 7 examples: 3 + 3 + 1, the last two rows score nothing
    assert (batches[-1][1][1:] == -1).all() and (batches[-1][1][0] != -1).any()
    assert it.epochs() == pytest.approx(9 / 7)


@pytest.mark.parametrize("options, row", [
    (dict(direction="forward"), READING),
    (dict(direction="backward"), BACKWARD_SEQ),
    (dict(direction="backward", conversation="turn"),
     [B, US, *Q1, UE, AS, *A1[::-1], AE, US, *Q2, UE, AS, *A2[::-1], AE]),
])
def test_mid_scores_every_token(tok, options, row):
    """One conversation is one row of T+1 = 15 tokens; the next batch starts T tokens later (rows overlap by one)."""
    batches = _batches(tok, [CONV], "mid", seq_len=14, n=2, **options)
    (inputs, targets), (inputs2, targets2) = batches
    assert inputs[0].tolist() == row[:-1] and targets[0].tolist() == row[1:]
    assert inputs2[0].tolist() == [row[-1], *row[:-2]] and targets2[0].tolist() == row[:-1]


def test_mid_bidirectional_marker_is_never_a_target(tok):
    [(inputs, targets)] = _batches(tok, [CONV], "mid", seq_len=15, direction="bidirectional",
                                   seed=_seed_for("backward"))
    assert inputs[0].tolist() == [B, K, *BACKWARD_SEQ[1:-1]]
    assert targets[0].tolist() == [-1, *BACKWARD_SEQ[1:]]
    assert int((targets != -1).sum()) == 14


def test_compat_mid_parity_per_batch_and_marker_scored(tok):
    """onanchat: conversations fetched while filling batch k take parity k; chunks of T+1 do not overlap."""
    (i0, t0), (i1, t1) = _batches(tok, [CONV], "mid", seq_len=15, n=2, direction="bidirectional", layout="compat")
    assert i0[0].tolist() == [B, F, *READING[1:-1]] and t0[0].tolist() == [F, *READING[1:]]
    assert i1[0].tolist() == [B, K, *BACKWARD_SEQ[1:-1]] and t1[0].tolist() == [K, *BACKWARD_SEQ[1:]]


def _mid_stream(batches):
    """The model-order stream of a finite mid run: inputs tile it; the last scored target is its final token."""
    inputs = np.concatenate([b[0].ravel() for b in batches])
    targets = np.concatenate([b[1].ravel() for b in batches])
    last = int(np.flatnonzero(targets != -1)[-1])
    return np.concatenate([inputs[: last + 1], targets[last : last + 1]])


@pytest.mark.parametrize("direction, conversation", [("forward", "sequence"), ("backward", "sequence"),
                                                     ("backward", "turn"), ("bidirectional", "turn")])
def test_mid_epoch_restores_to_every_source_conversation_once(tok, direction, conversation):
    specials = Specials.from_tokenizer(tok)
    it = ConversationBatches(_config(direction, conversation=conversation), tok, SOURCE, kind="mid", rows=2,
                             seq_len=8, cycle=False, prefetch=0)
    stream = _mid_stream(list(it)).tolist()
    starts = [i for i, t in enumerate(stream) if t == B] + [len(stream)]
    pieces = [stream[a:b] for a, b in zip(starts[:-1], starts[1:])]
    restored = [restore_conversation(p, [0] * len(p), direction, specials, mode=conversation)[0] for p in pieces]
    rendered = [tok.render_conversation(c)[0] for c in SOURCE]
    assert sorted(restored) == sorted(rendered)
    assert restored != rendered  # visited in a shuffled order
    if direction == "bidirectional":
        assert {p[1] for p in pieces} == {F, K}


def test_shuffled_order_is_seeded_and_changes_per_epoch(tok):
    def order(seed, epochs):
        config = Config.from_dict({"training": {"seed": seed}})
        it = ConversationBatches(config, tok, SOURCE, kind="sft", rows=7, seq_len=40, prefetch=0)
        rows = [next(it)[0] for _ in range(epochs)]
        return [[tok.decode(r[r != AE][2:]).split()[0] for r in batch] for batch in rows]

    first = order(3, 2)
    assert first == order(3, 2)
    assert sorted(first[0]) == sorted(first[1]) == sorted(str(i) for i in range(7))
    assert first[0] != first[1] and first[0] != order(4, 1)[0]


RESUME_CASES = [("mid", "bidirectional", "document"), ("mid", "bidirectional", "compat"),
                ("mid", "backward", "document"), ("sft", "bidirectional", "document"), ("sft", "bidirectional", "compat")]


@pytest.mark.parametrize("kind, direction, layout", RESUME_CASES)
def test_resume_is_bitwise(tok, kind, direction, layout):
    config = _config(direction, layout)
    build = lambda prefetch=0: ConversationBatches(config, tok, SOURCE, kind=kind, rows=2, seq_len=9,
                                                   prefetch=prefetch)
    reference = build()
    want = [next(reference) for _ in range(7)]
    for k in (1, 2, 4):
        first = build(prefetch=2)
        for _ in range(k):
            next(first)
        state = json.loads(json.dumps(first.get_state()))
        first.close()
        resumed = build(prefetch=2)
        resumed.set_state(state)
        for got, expected in zip([next(resumed) for _ in range(7 - k)], want[k:]):
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])
        resumed.close()


@pytest.mark.parametrize("kind, layout", [("mid", "document"), ("mid", "compat"), ("sft", "document")])
def test_two_processes_concatenate_to_the_one_process_batch(tok, kind, layout):
    config = _config("bidirectional", layout)
    one = ConversationBatches(config, tok, SOURCE, kind=kind, rows=4, seq_len=7, prefetch=0)
    two = [ConversationBatches(config, tok, SOURCE, kind=kind, rows=2, seq_len=7, process_index=p, process_count=2,
                               prefetch=0) for p in range(2)]
    for step in range(4):
        whole = next(one)
        parts = [next(it) for it in two]
        np.testing.assert_array_equal(whole[0], np.concatenate([p[0] for p in parts]))
        np.testing.assert_array_equal(whole[1], np.concatenate([p[1] for p in parts]))
    # the state is global: a one-process state continues on two processes
    state = one.get_state()
    after = next(one)
    moved = ConversationBatches(config, tok, SOURCE, kind=kind, rows=2, seq_len=7, process_index=1, process_count=2,
                                prefetch=0)
    moved.set_state(state)
    np.testing.assert_array_equal(next(moved)[1], after[1][2:])


def test_state_from_other_settings_is_refused(tok):
    it = ConversationBatches(_config(), tok, SOURCE, kind="mid", rows=2, seq_len=8, prefetch=0)
    next(it)
    state = it.get_state()
    other = ConversationBatches(_config(), tok, SOURCE, kind="mid", rows=2, seq_len=9, prefetch=0)
    with pytest.raises(ConversationDataError, match="seq_len=8"):
        other.set_state(state)
    with pytest.raises(ConversationDataError, match="empty"):
        ConversationBatches(_config(), tok, [], kind="sft", rows=1, seq_len=8)
