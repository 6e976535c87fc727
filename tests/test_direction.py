"""Tests for revjax.direction: golden onanchat layouts, corrected layouts, and round-trip properties."""

import json
import pickle
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revjax.direction import (
    ConversationMode,
    Direction,
    LossMask,
    Specials,
    chat_prompt,
    chat_reply,
    chat_stop_token,
    choose_direction,
    compat_batches,
    compat_chunk_to_batch,
    compat_chunks,
    compat_orient_chunk,
    compat_orient_conversation,
    compat_orient_sft_example,
    continued_row,
    document_direction,
    document_head_length,
    inputs_and_targets,
    join_generation,
    orient_conversation,
    orient_document,
    orient_documents,
    orient_prompt,
    restore_conversation,
    restore_document,
    restore_generation,
    restore_prompt,
)

VOCAB = 100
S = Specials(*range(VOCAB - 11, VOCAB))
B, US, UE, AS, AE = S.bos, S.user_start, S.user_end, S.assistant_start, S.assistant_end
PS, PE, OS, OE = S.python_start, S.python_end, S.output_start, S.output_end
F, K = S.forward, S.backward

SEED = 1
# With SEED, item 0 runs forward and item 1 backward (checked in test_choose_direction_fixture_and_pinned_values).
FWD_INDEX, BWD_INDEX = 0, 1

text = st.lists(st.integers(0, VOCAB - 12), max_size=12)
directions = st.sampled_from(list(Direction))
modes = st.sampled_from(list(ConversationMode))
PROPERTY = settings(max_examples=60, deadline=None)


def render(messages):
    """Render plain-text messages (user first) like nanochat's render_conversation: (ids, mask)."""
    ids, mask = [B], [0]
    for i, content in enumerate(messages):
        if i % 2 == 0:
            ids += [US, *content, UE]
            mask += [0] * (len(content) + 2)
        else:
            ids += [AS, *content, AE]
            mask += [0] + [1] * (len(content) + 1)
    return ids, mask


conversations = st.lists(text, min_size=1, max_size=5).map(render)


def rev(xs):
    return list(reversed(xs))


# ---------------------------------------------------------------------------------------------
# Direction, Specials, seeded choice


def test_direction_parse():
    assert Direction.parse("forward") is Direction.FORWARD
    assert Direction.parse("backward") is Direction.BACKWARD
    assert Direction.parse(Direction.BIDIRECTIONAL) is Direction.BIDIRECTIONAL
    assert Direction.FORWARD == "forward"
    for bad in ("Forward", "reverse", "", None, 1):
        with pytest.raises(ValueError, match="unknown direction .*expected one of forward, backward, bidirectional"):
            Direction.parse(bad)


def test_mode_and_loss_parse():
    assert ConversationMode.parse("turn") is ConversationMode.TURN
    assert ConversationMode.parse("sequence") is ConversationMode.SEQUENCE
    assert LossMask.parse("assistant") is LossMask.ASSISTANT
    with pytest.raises(ValueError, match="unknown conversation mode 'document'"):
        ConversationMode.parse("document")
    with pytest.raises(ValueError, match="unknown loss mask 'all'"):
        LossMask.parse("all")


def test_specials_from_golden_mapping(golden_dir):
    ids = json.loads((golden_dir / "tokenizer" / "special_ids.json").read_text())
    specials = Specials.from_mapping(ids)
    assert specials.bos == 2037 and specials.forward == 2046 and specials.backward == 2047
    assert specials.assistant_end == 2041


def test_specials_from_tokenizer():
    class FakeTokenizer:
        def encode_special(self, name):
            return {"<|bos|>": 89, "<|user_start|>": 90, "<|user_end|>": 91, "<|assistant_start|>": 92,
                    "<|assistant_end|>": 93, "<|python_start|>": 94, "<|python_end|>": 95,
                    "<|output_start|>": 96, "<|output_end|>": 97, "<|forward|>": 98, "<|backward|>": 99}[name]

    assert Specials.from_tokenizer(FakeTokenizer()) == S


def test_specials_errors():
    with pytest.raises(ValueError, match="missing for <\\|forward\\|>, <\\|backward\\|>"):
        Specials.from_mapping({"<|bos|>": 0, "<|user_start|>": 1, "<|user_end|>": 2, "<|assistant_start|>": 3,
                               "<|assistant_end|>": 4, "<|python_start|>": 5, "<|python_end|>": 6,
                               "<|output_start|>": 7, "<|output_end|>": 8})
    with pytest.raises(ValueError, match="must be distinct"):
        Specials(*range(10), 0)


def test_markers():
    assert S.marker("forward") == F and S.marker(Direction.BACKWARD) == K
    assert S.marker_direction(F) is Direction.FORWARD and S.marker_direction(K) is Direction.BACKWARD
    with pytest.raises(ValueError, match="not bidirectional"):
        S.marker("bidirectional")
    with pytest.raises(ValueError, match="expected a direction token"):
        S.marker_direction(B)


def test_choose_direction_fixture_and_pinned_values():
    assert choose_direction(SEED, FWD_INDEX) is Direction.FORWARD
    assert choose_direction(SEED, BWD_INDEX) is Direction.BACKWARD
    # Pinned so that a change of the hash (which would change every bidirectional data stream) is noticed.
    assert "".join(choose_direction(0, i).value[0] for i in range(16)) == "bfbbffffbbbfbfbb"


def test_choose_direction_is_reproducible_balanced_and_seeded():
    picks = [choose_direction(7, i) for i in range(2000)]
    assert picks == [choose_direction(7, i) for i in range(2000)]
    assert 900 < picks.count(Direction.BACKWARD) < 1100
    assert picks != [choose_direction(8, i) for i in range(2000)]
    assert all(document_direction("bidirectional", 7, i) is p for i, p in enumerate(picks[:50]))
    assert document_direction("backward", 7, 3) is Direction.BACKWARD
    assert document_direction("forward", 7, 3) is Direction.FORWARD


# ---------------------------------------------------------------------------------------------
# Documents (corrected mode)


def test_orient_document_forward_backward():
    ids, tgt = orient_document([1, 2, 3], "forward", S)
    assert ids.tolist() == [B, 1, 2, 3] and tgt.tolist() == [True] * 4 and ids.dtype == np.int32
    ids, tgt = orient_document(np.array([1, 2, 3], dtype=np.int64), "backward", S)
    assert ids.tolist() == [B, 3, 2, 1] and tgt.tolist() == [True] * 4 and ids.dtype == np.int32
    ids, tgt = orient_document([], "backward", S)
    assert ids.tolist() == [B] and tgt.tolist() == [True]


def test_orient_document_bidirectional_marks_every_document_and_masks_marker():
    ids, tgt = orient_document([1, 2, 3], "bidirectional", S, seed=SEED, index=FWD_INDEX)
    assert ids.tolist() == [B, F, 1, 2, 3] and tgt.tolist() == [True, False, True, True, True]
    ids, tgt = orient_document([1, 2, 3], "bidirectional", S, seed=SEED, index=BWD_INDEX)
    assert ids.tolist() == [B, K, 3, 2, 1] and tgt.tolist() == [True, False, True, True, True]


def test_orient_documents_stream_and_targets():
    ids, tgt = orient_documents([[1, 2], [3, 4, 5]], "bidirectional", S, seed=SEED)
    assert ids.tolist() == [B, F, 1, 2, B, K, 5, 4, 3]
    assert tgt.tolist() == [True, False, True, True, True, False, True, True, True]
    inputs, targets = inputs_and_targets(ids, tgt)
    assert inputs.tolist() == [B, F, 1, 2, B, K, 5, 4]
    assert targets.tolist() == [-1, 1, 2, B, -1, 5, 4, 3]
    assert inputs.dtype == np.int32 and targets.dtype == np.int64
    empty_ids, empty_tgt = orient_documents([], "forward", S)
    assert empty_ids.size == 0 and empty_tgt.dtype == bool


def test_orient_documents_does_not_depend_on_batching():
    docs = [[i, i + 1] for i in range(40)]
    whole = orient_documents(docs, "bidirectional", S, seed=3)
    parts = [orient_documents(docs[a:b], "bidirectional", S, seed=3, first_index=a) for a, b in
             [(0, 7), (7, 8), (8, 31), (31, 40)]]
    assert np.array_equal(whole[0], np.concatenate([p[0] for p in parts]))
    assert np.array_equal(whole[1], np.concatenate([p[1] for p in parts]))
    assert not np.array_equal(whole[0], orient_documents(docs, "bidirectional", S, seed=4)[0])


def test_inputs_and_targets_on_rows():
    ids = np.array([[B, 1, 2], [K, 3, 4]])
    tgt = np.array([[1, 1, 0], [0, 1, 1]])
    inputs, targets = inputs_and_targets(ids, tgt)
    assert inputs.tolist() == [[B, 1], [K, 3]] and targets.tolist() == [[1, -1], [3, 4]]
    with pytest.raises(ValueError, match="same shape"):
        inputs_and_targets([1, 2, 3], [True, True])


def test_document_errors():
    with pytest.raises(ValueError, match="contain BOS"):
        orient_document([B, 1, 2], "forward", S)
    with pytest.raises(ValueError, match="one-dimensional"):
        orient_document([[1, 2]], "forward", S)
    with pytest.raises(ValueError, match="integer token ids"):
        orient_document([1.5], "forward", S)
    with pytest.raises(ValueError, match="start with BOS"):
        restore_document([1, 2], "forward", S)
    with pytest.raises(ValueError, match="expected a direction token"):
        restore_document([B, 1, 2], "bidirectional", S)
    with pytest.raises(ValueError, match="unknown direction"):
        orient_document([1], "sideways", S)


def test_restore_document():
    assert restore_document([B, 3, 2, 1], "backward", S).tolist() == [1, 2, 3]
    assert restore_document([B, K, 3, 2, 1], "bidirectional", S).tolist() == [1, 2, 3]
    assert restore_document([B, F, 1, 2, 3], "bidirectional", S).tolist() == [1, 2, 3]
    assert restore_document([B, 1, 2], "forward", S).tolist() == [1, 2]


# ---------------------------------------------------------------------------------------------
# onanchat compat: base loader (§3.2, Appendix A)


def test_compat_chunk_worked_example():
    a1, a2, a3, b1, b2, b3, b4 = 11, 12, 13, 21, 22, 23, 24
    chunk = [B, a1, a2, a3, B, b1, b2, b3, b4]
    assert compat_orient_chunk(chunk, "forward", S, 0).tolist() == chunk
    backward = compat_orient_chunk(chunk, "backward", S, 0)
    assert backward.tolist() == [B, b4, b3, b2, b1, B, a3, a2, a1]
    inputs, targets = compat_chunk_to_batch(backward, 2, 4)
    assert inputs.tolist() == [[B, b4, b3, b2], [b1, B, a3, a2]]
    assert targets.tolist() == [[b4, b3, b2, b1], [B, a3, a2, a1]]
    assert inputs.dtype == np.int32 and targets.dtype == np.int64
    assert compat_orient_chunk(chunk, "bidirectional", S, 1).tolist() == [B, K, b3, b2, b1, B, a3, a2, a1]
    assert compat_orient_chunk(chunk, "bidirectional", S, 0).tolist() == [B, F, a1, a2, a3, B, b1, b2, b3]


def test_compat_chunk_appendix_a_pins_first_token():
    t = list(range(10))  # t0 … tN with a non-BOS t0
    assert compat_orient_chunk(t, "backward", S, 5).tolist() == [0, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    assert compat_orient_chunk(t, "bidirectional", S, 3).tolist() == [0, K, 8, 7, 6, 5, 4, 3, 2, 1]
    assert compat_orient_chunk(t, "bidirectional", S, 4).tolist() == [0, F, 1, 2, 3, 4, 5, 6, 7, 8]


def test_compat_chunk_errors():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        compat_orient_chunk([B], "backward", S, 0)
    with pytest.raises(ValueError, match="non-negative"):
        compat_orient_chunk([B, 1, 2], "bidirectional", S, -1)
    with pytest.raises(ValueError, match="must hold 9 tokens"):
        compat_chunk_to_batch(list(range(8)), 2, 4)
    with pytest.raises(ValueError, match="must be positive"):
        next(compat_chunks([[1, 2, 3]], 0, 4))


def test_compat_chunks_pop_without_overlap():
    pieces = [list(range(0, 4)), list(range(4, 6)), list(range(6, 17)), list(range(17, 20))]
    chunks = [c.tolist() for c in compat_chunks(pieces, 2, 2)]
    assert chunks == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]
    assert [c.tolist() for c in compat_chunks([list(range(7))], 1, 2)] == [[0, 1, 2], [3, 4, 5]]


def _golden_documents(golden_dir, bos):
    """Yield the train split's documents, BOS prepended, encoded in sub-batches as onanchat's loader does."""
    shards = sorted((golden_dir / "base_data").glob("shard_*.parquet"))[:-1]
    with open(golden_dir / "tokenizer" / "tokenizer.pkl", "rb") as f:
        encoding = pickle.load(f)
    for shard in shards:
        texts = pq.read_table(shard, columns=["text"]).column("text").to_pylist()
        for start in range(0, len(texts), 128):
            for ids in encoding.encode_ordinary_batch(texts[start : start + 128]):
                yield [bos, *ids]


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_compat_batches_match_onanchat_golden(golden_dir, direction):
    specials = Specials.from_mapping(json.loads((golden_dir / "tokenizer" / "special_ids.json").read_text()))
    golden = np.load(golden_dir / f"batches_{direction}.npz")
    n, b, t = golden["inputs"].shape
    batches = compat_batches(_golden_documents(golden_dir, specials.bos), direction, specials, b, t)
    got = [next(batches) for _ in range(n)]
    inputs = np.stack([x for x, _ in got])
    targets = np.stack([y for _, y in got])
    assert inputs[0, 0, 0] == specials.bos
    assert inputs.dtype == golden["inputs"].dtype == np.int32
    assert targets.dtype == golden["targets"].dtype == np.int64
    np.testing.assert_array_equal(inputs, golden["inputs"])
    np.testing.assert_array_equal(targets, golden["targets"])


# ---------------------------------------------------------------------------------------------
# onanchat compat: conversations (§3.3–3.5, Appendix A)

Q, A = [1, 2, 3], [4, 5]
CONV, CONV_MASK = render([Q, A])  # B us q ue as a ae


def test_render_helper_matches_appendix_a_forward_sft():
    assert CONV == [B, US, 1, 2, 3, UE, AS, 4, 5, AE]
    assert CONV_MASK == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]


def test_compat_mid_layouts():
    assert compat_orient_conversation(CONV, "forward", S, 1) == CONV
    assert compat_orient_conversation(CONV, "backward", S, 0) == [B, AE, 5, 4, AS, UE, 3, 2, 1, US]
    assert compat_orient_conversation(CONV, "bidirectional", S, 2) == [B, F, US, 1, 2, 3, UE, AS, 4, 5, AE]
    assert compat_orient_conversation(CONV, "bidirectional", S, 3) == [B, K, AE, 5, 4, AS, UE, 3, 2, 1, US]


def test_compat_sft_layouts_appendix_a():
    assert compat_orient_sft_example(CONV, CONV_MASK, "forward", S, 0) == (CONV, CONV_MASK)
    assert compat_orient_sft_example(CONV, CONV_MASK, "backward", S, 0) == (
        [B, AE, 5, 4, AS, UE, 3, 2, 1, US],
        [0, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    )
    assert compat_orient_sft_example(CONV, CONV_MASK, "bidirectional", S, 0) == (
        [B, F, US, 1, 2, 3, UE, AS, 4, 5, AE],
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
    )
    assert compat_orient_sft_example(CONV, CONV_MASK, "bidirectional", S, 1) == (
        [B, K, AE, 5, 4, AS, UE, 3, 2, 1, US],
        [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    )


def test_compat_rl_prompts_appendix_a():
    prompt = [B, US, 1, 2, 3, UE, AS]  # render_for_completion
    assert compat_orient_conversation(prompt, "forward", S, 0) == [B, US, 1, 2, 3, UE, AS]
    assert compat_orient_conversation(prompt, "backward", S, 0) == [B, AS, UE, 3, 2, 1, US]
    assert compat_orient_conversation(prompt, "bidirectional", S, 1) == [B, K, AS, UE, 3, 2, 1, US]
    assert compat_orient_conversation(prompt, "bidirectional", S, 0) == [B, F, US, 1, 2, 3, UE, AS]


def test_conversation_errors():
    with pytest.raises(ValueError, match="must start with BOS"):
        compat_orient_conversation([US, 1, UE], "backward", S, 0)
    with pytest.raises(ValueError, match="2 entries for 3 ids"):
        orient_conversation([B, US, UE], [0, 0], "backward", S, mode="turn")
    with pytest.raises(ValueError, match="unknown conversation mode"):
        orient_conversation(CONV, CONV_MASK, "backward", S, mode="chunk")


# ---------------------------------------------------------------------------------------------
# Corrected conversations


def test_sequence_backward_generated_mask_supervises_user_turns():
    ids, mask = orient_conversation(CONV, CONV_MASK, "backward", S, mode="sequence")
    assert ids == [B, AE, 5, 4, AS, UE, 3, 2, 1, US]
    assert mask == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]


def test_sequence_backward_assistant_mask_is_onanchat_compat():
    got = orient_conversation(CONV, CONV_MASK, "backward", S, mode="sequence", loss="assistant")
    assert got == compat_orient_sft_example(CONV, CONV_MASK, "backward", S, 0)


def test_sequence_bidirectional():
    ids, mask = orient_conversation(CONV, CONV_MASK, "bidirectional", S, mode="sequence", seed=SEED, index=BWD_INDEX)
    assert ids == [B, K, AE, 5, 4, AS, UE, 3, 2, 1, US]
    assert mask == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    ids, mask = orient_conversation(CONV, CONV_MASK, "bidirectional", S, mode="sequence", seed=SEED, index=FWD_INDEX)
    assert ids == [B, F] + CONV[1:] and mask == [0, 0] + CONV_MASK[1:]


def test_turn_backward_keeps_structure():
    for loss in LossMask:
        ids, mask = orient_conversation(CONV, CONV_MASK, "backward", S, mode="turn", loss=loss)
        assert ids == [B, US, 3, 2, 1, UE, AS, 5, 4, AE]
        assert mask == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    ids, mask = orient_conversation(CONV, CONV_MASK, "bidirectional", S, mode="turn", seed=SEED, index=BWD_INDEX)
    assert ids == [B, K, US, 3, 2, 1, UE, AS, 5, 4, AE]
    assert mask == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]


def test_forward_is_unchanged_in_both_modes():
    for mode in ConversationMode:
        assert orient_conversation(CONV, CONV_MASK, "forward", S, mode=mode) == (CONV, CONV_MASK)


def test_multi_turn_with_tool_call():
    ids = [B, US, 1, UE, AS, 2, PS, 3, PE, OS, 4, OE, AE, US, 6, 7, UE, AS, 8, AE]
    mask = [0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1]
    t_ids, t_mask = orient_conversation(ids, mask, "backward", S, mode="turn")
    assert t_ids == [B, US, 1, UE, AS, OE, 4, OS, PE, 3, PS, 2, AE, US, 7, 6, UE, AS, 8, AE]
    assert t_mask == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    s_ids, s_mask = orient_conversation(ids, mask, "backward", S, mode="sequence")
    assert s_ids == [B, AE, 8, AS, UE, 7, 6, US, AE, OE, 4, OS, PE, 3, PS, 2, AS, UE, 1, US]
    assert s_mask == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]


def test_truncated_conversation_turn_mode():
    ids, mask = [B, US, 1, UE, AS, 2, 3, 4], [0, 0, 0, 0, 0, 1, 1, 1]
    assert orient_conversation(ids, mask, "backward", S, mode="turn") == (
        [B, US, 1, UE, AS, 4, 3, 2],
        [0, 0, 0, 0, 0, 1, 1, 1],
    )
    ids, mask = [B, US, 1, 2], [0, 0, 0, 0]
    assert orient_conversation(ids, mask, "backward", S, mode="sequence") == ([B, 2, 1, US], [0, 1, 1, 1])


def test_restore_conversation():
    ids, mask = orient_conversation(CONV, CONV_MASK, "bidirectional", S, mode="turn", seed=SEED, index=BWD_INDEX)
    assert restore_conversation(ids, mask, "bidirectional", S, mode="turn") == (CONV, CONV_MASK)
    ids, mask = orient_conversation(CONV, CONV_MASK, "backward", S, mode="sequence")
    assert restore_conversation(ids, mask, "backward", S, mode="sequence") == (CONV, [0, 1, 1, 1, 1, 1, 0, 0, 0, 0])


# ---------------------------------------------------------------------------------------------
# Inference: prompts and generations


def test_orient_prompt_each_direction():
    prompt = [B, 1, 2, 3]
    assert orient_prompt(prompt, "forward", S) == [B, 1, 2, 3]
    assert orient_prompt(prompt, "backward", S) == [B, 3, 2, 1]
    assert orient_prompt(prompt, "bidirectional", S, generate="forward") == [B, F, 1, 2, 3]
    assert orient_prompt(prompt, "bidirectional", S, generate="backward") == [B, K, 3, 2, 1]
    assert orient_prompt(prompt, "forward", S, generate="backward") == [B, 3, 2, 1]
    with pytest.raises(ValueError, match="bidirectional model needs generate"):
        orient_prompt(prompt, "bidirectional", S)
    with pytest.raises(ValueError, match="not bidirectional"):
        orient_prompt(prompt, "bidirectional", S, generate="bidirectional")
    with pytest.raises(ValueError, match="must start with BOS"):
        orient_prompt([1, 2], "forward", S)


def test_restore_and_join_generation():
    prompt = [B, 1, 2, 3]
    model_order = orient_prompt(prompt, "backward", S)  # [B, 3, 2, 1]
    generated = [30, 20]  # the model continues backward: ... 20 30 come before 1 2 3 in reading order
    assert restore_generation(generated, "backward") == [20, 30]
    assert restore_generation(generated, "forward") == [30, 20]
    assert join_generation(prompt, generated, "backward") == [B, 20, 30, 1, 2, 3]
    assert join_generation(prompt, generated, "forward") == [B, 1, 2, 3, 30, 20]
    assert restore_prompt(model_order + generated, "backward", S) == [B, 20, 30, 1, 2, 3]
    assert restore_prompt([B, K, 3, 2, 1, 30, 20], "bidirectional", S) == [B, 20, 30, 1, 2, 3]
    assert restore_prompt([B, F, 1, 2], "bidirectional", S, generate="forward") == [B, 1, 2]
    with pytest.raises(ValueError, match="direction token says backward, not forward"):
        restore_prompt([B, K, 3, 2, 1], "bidirectional", S, generate="forward")
    with pytest.raises(ValueError, match="not bidirectional"):
        restore_generation(generated, "bidirectional")


# ---------------------------------------------------------------------------------------------
# Chat prompts (Appendix A, corrected multi-turn)

R, R1, Q1, Q2 = [7, 8], [5], [1, 2], [3, 4]


def test_rl_and_chat_prompts_forward():
    assert chat_prompt([Q], "forward", S, mode="sequence") == [B, US, 1, 2, 3, UE, AS]
    assert chat_prompt([Q], "forward", S, mode="turn") == [B, US, 1, 2, 3, UE, AS]
    assert chat_stop_token("forward", S, mode="sequence") == AE
    assert chat_reply([4, 5, AE], "forward", S, mode="sequence") == [4, 5]


def test_turn_backward_chat_prompt():
    assert chat_prompt([Q], "backward", S, mode="turn") == [B, US, 3, 2, 1, UE, AS]
    assert chat_prompt([Q], "bidirectional", S, mode="turn", generate="backward") == [B, K, US, 3, 2, 1, UE, AS]
    assert chat_stop_token("backward", S, mode="turn") == AE
    assert chat_reply([5, 4, AE], "backward", S, mode="turn") == [4, 5]


def test_backward_chat_first_turn_appendix_a():
    assert chat_prompt([R], "backward", S, mode="sequence") == [B, AE, 8, 7, AS]
    assert chat_stop_token("backward", S, mode="sequence") == US
    expected_generation = [UE, 3, 2, 1, US]
    assert chat_reply(expected_generation, "backward", S, mode="sequence") == Q
    assert chat_prompt([R], "bidirectional", S, mode="sequence", generate="backward") == [B, K, AE, 8, 7, AS]


def test_backward_multi_turn_appends_earlier_turns():
    # Reading order: us q1 ue as r1 ae us q2 ue as r ae. The human typed r, the model answered q2,
    # then the human typed r1; the model must now produce q1.
    first = chat_prompt([R], "backward", S, mode="sequence")
    second = chat_prompt([R1, Q2, R], "backward", S, mode="sequence")
    assert second == [B, AE, 8, 7, AS, UE, 4, 3, US, AE, 5, AS]
    assert second[: len(first)] == first
    bidir = chat_prompt([R1, Q2, R], "bidirectional", S, mode="sequence", generate="backward")
    assert bidir == [B, K, AE, 8, 7, AS, UE, 4, 3, US, AE, 5, AS]


def test_bidirectional_forward_marker_goes_after_bos():
    # onanchat puts F right before <as> (B us q ue F as); the corrected layout keeps it after BOS.
    assert chat_prompt([Q], "bidirectional", S, mode="sequence", generate="forward") == [B, F, US, 1, 2, 3, UE, AS]
    multi = chat_prompt([Q1, A, Q2], "bidirectional", S, mode="sequence", generate="forward")
    assert multi == [B, F, US, 1, 2, UE, AS, 4, 5, AE, US, 3, 4, UE, AS]


def test_chat_prompt_errors():
    with pytest.raises(ValueError, match="odd number of messages, got 2"):
        chat_prompt([Q, A], "forward", S, mode="turn")
    with pytest.raises(ValueError, match="bidirectional model needs generate"):
        chat_prompt([Q], "bidirectional", S, mode="turn")


# ---------------------------------------------------------------------------------------------
# Properties


@PROPERTY
@given(doc=text, direction=directions, seed=st.integers(0, 2**32), index=st.integers(0, 10**6))
def test_property_document_round_trip(doc, direction, seed, index):
    ids, _ = orient_document(doc, direction, S, seed=seed, index=index)
    assert restore_document(ids, direction, S).tolist() == doc


@PROPERTY
@given(doc=text, seed=st.integers(0, 2**32), index=st.integers(0, 10**6))
def test_property_same_scored_multiset_in_every_direction(doc, seed, index):
    scored = []
    for direction in Direction:
        ids, tgt = orient_document(doc, direction, S, seed=seed, index=index)
        scored.append(Counter(ids[tgt].tolist()))
        assert F not in scored[-1] and K not in scored[-1]
    assert scored[0] == scored[1] == scored[2] == Counter([B, *doc])


@PROPERTY
@given(conv=conversations, direction=directions, mode=modes, seed=st.integers(0, 99), index=st.integers(0, 99))
def test_property_conversation_round_trip(conv, direction, mode, seed, index):
    ids, mask = conv
    out = orient_conversation(ids, mask, direction, S, mode=mode, loss="assistant", seed=seed, index=index)
    assert restore_conversation(*out, direction, S, mode=mode) == (ids, mask)
    gen_ids, _ = orient_conversation(ids, mask, direction, S, mode=mode, seed=seed, index=index)
    assert gen_ids == out[0]


@PROPERTY
@given(ids=st.lists(st.integers(0, VOCAB - 1), max_size=16), mode=modes)
def test_property_conversation_round_trip_on_arbitrary_tokens(ids, mode):
    ids = [B, *ids]
    mask = list(range(len(ids)))
    out = orient_conversation(ids, mask, "backward", S, mode=mode, loss="assistant")
    assert restore_conversation(*out, "backward", S, mode=mode) == (ids, mask)


@PROPERTY
@given(conv=conversations, mode=modes)
def test_property_generated_mask_covers_the_generated_turns(conv, mode):
    ids, mask = conv
    oriented = orient_conversation(ids, mask, "backward", S, mode=mode)
    _, restored = restore_conversation(*oriented, "backward", S, mode=mode)
    if mode is ConversationMode.TURN:
        assert restored == mask
    else:
        user = [0] * len(ids)
        for i, t in enumerate(ids):
            if t == US:
                j = ids.index(UE, i)
                user[i : j + 1] = [1] * (j + 1 - i)
        assert restored == user


@PROPERTY
@given(prompt=text, generated=text, direction=directions, generate=st.sampled_from(["forward", "backward"]))
def test_property_prompt_round_trip_and_join(prompt, generated, direction, generate):
    prompt = [B, *prompt]
    model = orient_prompt(prompt, direction, S, generate=generate)
    assert restore_prompt(model, direction, S, generate=generate) == prompt
    assert restore_prompt(model + generated, direction, S, generate=generate) == join_generation(
        prompt, generated, generate
    )


@PROPERTY
@given(messages=st.lists(text, min_size=0, max_size=2).map(lambda ms: ms * 2), reply=text, last=text,
       direction=st.sampled_from(["forward", "backward", "bidirectional"]), mode=modes,
       generate=st.sampled_from(["forward", "backward"]))
def test_property_chat_prompt_is_a_training_prefix(messages, reply, last, direction, mode, generate):
    """A chat prompt plus the expected generation prefixes the training layout, and the generation is supervised."""
    if direction != "bidirectional":
        generate = direction
    user_generated = generate == "backward" and mode is ConversationMode.SEQUENCE
    history = [last, *messages]  # odd count
    if user_generated:
        conversation = [reply, *history]  # the generated user turn comes first in reading order
    else:
        conversation = [*history, reply]
    ids, mask = render(conversation)
    marker = {"forward": F, "backward": K}[generate]
    index = next(i for i in range(100) if choose_direction(0, i).value == generate)
    train_ids, train_mask = orient_conversation(ids, mask, direction, S, mode=mode, index=index)
    prompt = chat_prompt(conversation[1:] if user_generated else conversation[:-1], direction, S, mode=mode,
                         generate=generate if direction == "bidirectional" else None)
    stop = chat_stop_token(direction, S, mode=mode, generate=generate if direction == "bidirectional" else None)
    if user_generated:
        generation = [UE, *reversed(reply), US]
    else:
        generation = [*(reversed(reply) if generate == "backward" else reply), AE]
    assert generation[-1] == stop
    assert train_ids[: len(prompt) + len(generation)] == prompt + generation
    assert all(train_mask[len(prompt) : len(prompt) + len(generation)])
    assert (marker in prompt) == (direction == "bidirectional")
    assert chat_reply(generation, direction, S, mode=mode,
                      generate=generate if direction == "bidirectional" else None) == reply


@PROPERTY
@given(chunk=st.lists(st.integers(0, VOCAB - 1), min_size=2, max_size=40), index=st.integers(0, 9))
def test_property_compat_backward_is_an_involution(chunk, index):
    once = compat_orient_chunk(chunk, "backward", S, index)
    assert len(once) == len(chunk) and once[0] == chunk[0]
    assert compat_orient_chunk(once, "backward", S, index).tolist() == chunk
    bidir = compat_orient_chunk(chunk, "bidirectional", S, index)
    assert len(bidir) == len(chunk) and bidir[1] == (F if index % 2 == 0 else K)


# ---------------------------------------------------------------------------------------------
# Rows that continue a document (marked packing)


def test_document_head_and_continued_rows_by_hand():
    assert [document_head_length(d) for d in ("forward", "backward", "bidirectional")] == [1, 1, 2]
    # backward document [B, 5, 4, 3, 2, 1] cut after 3: the next row repeats B, and 3 (already scored) is context
    ids, is_target = orient_document([1, 2, 3, 4, 5], "backward", S)
    row, mask = continued_row(ids[:1], ids[3:], is_target[3:])
    assert row.tolist() == [B, 3, 2, 1] and mask.tolist() == [False, False, True, True]
    inputs, targets = inputs_and_targets(row, mask)
    assert inputs.tolist() == [B, 3, 2] and targets.tolist() == [-1, 2, 1]
    # bidirectional, item 1 runs backward: [B, K, 3, 2, 1]; continuing at 2 repeats B and K, neither scored
    ids, is_target = orient_document([1, 2, 3], "bidirectional", S, seed=SEED, index=BWD_INDEX)
    row, mask = continued_row(ids[:2], ids[3:], is_target[3:])
    assert row.tolist() == [B, K, 2, 1] and inputs_and_targets(row, mask)[1].tolist() == [-1, -1, 1]
    with pytest.raises(ValueError, match="non-empty"):
        continued_row([B], [], [])


# ---- text for people: rendering generated ids ------------------------------------------------------------------

def _golden_tokenizer():
    from revjax.tokenizer import Tokenizer
    from tests.helpers import TOKENIZER_DIR

    return Tokenizer.load(TOKENIZER_DIR)


def _streamed(rendering, ids, step):
    """What a front end shows when ``ids`` (model order) arrive ``step`` at a time."""
    text = ""
    for i in range(0, len(ids), step):
        piece = rendering.feed(ids[i:i + step])
        text = piece + text if rendering.backward else text + piece
    tail = rendering.finish()
    return tail + text if rendering.backward else text + tail


def test_render_shows_tool_calls_ends_turns_and_keeps_literal_specials():
    from revjax.direction import Rendering, chat_turn, render, render_reply

    tok = _golden_tokenizer()
    s, tb, e = Specials.from_tokenizer(tok), tok.encoding.decode_single_token_bytes, tok.encode
    call = [s.python_start, *e("7+9-17"), s.python_end, s.output_start, *e("-1"), s.output_end]
    reading = [*e("So <|bos|> "), *call, *e(" é!")]  # the typed '<|bos|>' is plain text to the tokenizer
    want = "So <|bos|> [calculator: 7+9-17 = -1] é!"
    # forward: the reply ends at the turn's end; what the model wrote after it is not shown
    generated = [*reading, s.assistant_end, *e("junk")]
    assert render_reply(generated, "forward", s, tb, mode="sequence") == want
    # backward (turn mode): the call was written right to left, so its output comes first in reading order
    backward_reading = [*e("So <|bos|> "), s.output_start, *e("-1"), s.output_end, s.python_start, *e("7+9-17"),
                        s.python_end, *e(" é!")]
    assert render_reply([*backward_reading[::-1], s.assistant_end], "backward", s, tb, mode="turn") == want
    # the reverse task: a leading user_end is skipped; any other turn token written instead of the stop ends it
    reverse = [s.user_end, *e("Can you?")[::-1], s.assistant_start, s.user_end, *e("We are")[::-1]]
    assert render_reply(reverse, "backward", s, tb, mode="sequence") == "Can you?"
    assert chat_turn(reverse, "backward", s, mode="sequence") == e("Can you?")
    assert chat_turn(generated, "forward", s, mode="sequence") == reading
    # streamed one token (or three) at a time, the pieces add up to the same text in both directions
    for step in (1, 3):
        assert _streamed(Rendering(tb, s, backward=False, ends=[s.assistant_end]), generated, step) == want
        assert _streamed(Rendering(tb, s, backward=True), backward_reading[::-1], step) == want
    # a call held back until complete: nothing of it shows before its output has arrived
    stream = Rendering(tb, s, backward=False)
    assert stream.feed([s.python_start, *e("2*3"), s.python_end]) == ""
    assert stream.feed([s.output_start, *e("6"), s.output_end]) == "[calculator: 2*3 = 6]"
    # a call without a result, a stray output, and conversation tokens in a document sample
    assert render([s.python_start, *e("1/0"), s.python_end, *e(" ok")], tb, s) == "[calculator: 1/0] ok"
    assert render([s.output_start, *e("4"), s.output_end], tb, s) == "[calculator result: 4]"
    sample = [s.user_start, *e("Hi"), s.user_end, s.assistant_start, *e("Yo"), s.assistant_end, s.bos]
    assert render(sample, tb, s) == "User: Hi\nAssistant: Yo\n"
    assert all("<|" not in render(ids, tb, s) for ids in (call, sample, call[::-1]))
