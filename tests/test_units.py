"""Reversal units (revjax.direction.units): text pieces, word and entity reversal, and the token layouts they
change — each against hand-written expectations."""

import numpy as np
import pytest

from revjax.direction import (Rendering, Specials, Unit, UnitStream, chat_prompt, chat_reply, flip, is_entity_word,
                              orient_conversation, orient_document, orient_prompt, orient_text, render,
                              restore_conversation, restore_document, reverse_units, segment_permutation,
                              text_pieces)

S = Specials(bos=100, user_start=101, user_end=102, assistant_start=103, assistant_end=104, python_start=105,
             python_end=106, output_start=107, output_end=108, forward=109, backward=110)

WORD = [
    ("Identify the odd one out.", "out. one odd the Identify"),  # BackGPT's example, punctuation attached
    ("Ada Lovelace met Charles Babbage.", "Babbage. Charles met Lovelace Ada"),
    ("  two  spaces\tand a tab\n", "\ntab a and\tspaces  two  "),  # whitespace runs kept, reversed with the words
    ("first line\n\nsecond line", "line second\n\nline first"),
    ("Élodie a couru 5 km à Zürich.", "Zürich. à km 5 couru a Élodie"),  # non-ASCII words are words
    ("", ""),
    ("one", "one"),
]
ENTITY = [
    ("Ada Lovelace met Charles Babbage.", "Charles Babbage. met Ada Lovelace"),
    ("Élodie a couru 5 km à Zürich.", "Zürich. à 5 km couru a Élodie"),  # a number with its unit stays whole
    ("It costs $20 today", "today $20 costs It"),  # "$20 today": today is not an entity word
    ("“Hello,” said Dr. Who.", "Dr. Who. said “Hello,”"),  # quotes open, the title joins its name
    ("met New York\nYankees fans", "fans Yankees\nNew York met"),  # only a single space joins an entity
    ("in Paris. Then we", "we Paris. Then in"),  # a documented limit: a run goes over a sentence end
]


@pytest.mark.parametrize("text,expected", WORD)
def test_word_reversal_by_hand(text, expected):
    assert reverse_units(text, "word") == expected
    assert reverse_units(expected, "word") == text  # its own inverse: the round trip is exact
    assert "".join(text_pieces(text, "word")) == text


@pytest.mark.parametrize("text,expected", ENTITY)
def test_entity_reversal_by_hand(text, expected):
    assert reverse_units(text, Unit.ENTITY) == expected
    assert reverse_units(expected, Unit.ENTITY) == text


def test_backgpt_rule_agrees_on_single_spaced_text():
    text = "Write a short poem about the sea."
    assert reverse_units(text, "word") == " ".join(text.split()[::-1])


def test_round_trip_on_random_text():
    rng = np.random.default_rng(0)
    alphabet = list("aZé5 .,\n\t“”$%kmAB")
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 40))))
        for unit in ("word", "entity"):
            assert reverse_units(reverse_units(text, unit), unit) == text, (text, unit)


def test_entity_words():
    assert [is_entity_word(w) for w in ["Paris", "(Paris),", "5", "3.5", "$20", "km", "kg.", "paris", "in", "a"]] \
        == [True, True, True, True, True, True, True, False, False, False]


def test_token_units_refuse_text():
    with pytest.raises(ValueError, match="token units reverse token ids"):
        text_pieces("a b", "token")
    with pytest.raises(ValueError, match="unknown reversal unit 'words'"):
        Unit.parse("words")
    assert orient_text("a b", "forward", "word") == "a b" and orient_text("a b", "backward", "token") == "a b"
    assert orient_text("a b", "backward", "word") == "b a"


def test_segment_permutation_and_flip():
    # segments [5] [S] [6 7] [S] [8] reversed, each run kept in order
    assert segment_permutation([5, 1, 6, 7, 2, 8], {1, 2}) == [5, 4, 2, 3, 1, 0]
    assert flip([5, 101, 6, 7, 102, 8], "word", S) == [8, 102, 6, 7, 101, 5]
    assert flip([5, 101, 6, 7, 102, 8], "token", S) == [8, 102, 7, 6, 101, 5]


def test_document_keeps_reversed_text_ids_in_order():
    ids, mask = orient_document([7, 8, 9], "backward", S, unit="word")
    assert ids.tolist() == [100, 7, 8, 9] and mask.tolist() == [True] * 4
    assert orient_document([7, 8, 9], "backward", S)[0].tolist() == [100, 9, 8, 7]
    assert restore_document(ids, "backward", S, unit="word").tolist() == [7, 8, 9]
    ids, mask = orient_document([7, 8], "bidirectional", S, unit="entity", seed=0, index=1)
    assert ids[1] in (S.forward, S.backward) and ids[2:].tolist() == [7, 8] and not mask[1]


def test_conversation_sequence_mode_reverses_turns_around_contents():
    # reading order B us q1 q2 ue as a1 a2 ae, contents already the reversed texts' ids
    ids = [100, 101, 1, 2, 102, 103, 3, 4, 104]
    mask = [0, 0, 0, 0, 0, 0, 1, 1, 1]
    got, got_mask = orient_conversation(ids, mask, "backward", S, mode="sequence", unit="word")
    assert got == [100, 104, 3, 4, 103, 102, 1, 2, 101]
    assert got_mask == [0, 0, 0, 0, 0, 1, 1, 1, 1]  # the generated (user) turn is supervised
    assert restore_conversation(got, got_mask, "backward", S, mode="sequence", unit="word")[0] == ids
    got, _ = orient_conversation(ids, mask, "backward", S, mode="turn", unit="word")
    assert got == ids  # turn mode: contents are already reversed, markers stay


def test_prompts_and_chat():
    assert orient_prompt([100, 5, 6], "backward", S, unit="word") == [100, 5, 6]
    assert orient_prompt([100, 5, 6], "bidirectional", S, generate="backward", unit="word") == [100, 110, 5, 6]
    # BackChat: response (reversed text ids 3 4) → the instruction before it
    assert chat_prompt([[3, 4]], "backward", S, mode="sequence", unit="word") == [100, 104, 3, 4, 103]
    assert chat_prompt([[1, 2], [3, 4], [5]], "backward", S, mode="turn", unit="word") == \
        [100, 101, 1, 2, 102, 103, 3, 4, 104, 101, 5, 102, 103]
    assert chat_reply([102, 7, 8, 101], "backward", S, mode="sequence", unit="word") == [7, 8]


def _bytes_of(table):
    return lambda t: table[t].encode()


def test_rendering_restores_reading_order_for_text_units():
    table = {1: "Charles", 2: " Babbage.", 3: " met", 4: " Ada", 5: " Love", 6: "lace"}
    ids = [1, 2, 3, 4, 5, 6]  # model order: "Charles Babbage. met Ada Lovelace"
    assert render(ids, _bytes_of(table), S, backward=True, unit="entity") == "Ada Lovelace met Charles Babbage."
    assert render(ids, _bytes_of(table), S, backward=True, unit="word") == "Lovelace Ada met Babbage. Charles"
    stream, text = Rendering(_bytes_of(table), S, backward=True, unit="entity"), ""
    for t in ids:
        text = stream.feed([t]) + text  # every piece goes before the text so far
    assert stream.finish() + text == "Ada Lovelace met Charles Babbage."


def test_unit_stream_pieces_add_up():
    stream, text = UnitStream("word"), ""
    for ch in "out. one odd the Identify":
        text = stream.feed(ch) + text
    assert stream.finish() + text == "Identify the odd one out."


def test_unit_stream_equals_reversal_for_any_chunking():
    rng = np.random.default_rng(1)
    alphabet = list("aZ5 .\nkm$")
    for _ in range(200):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 30))))
        for unit in ("word", "entity"):
            stream, out, i = UnitStream(unit), "", 0
            while i < len(text):
                step = int(rng.integers(1, 5))
                out = stream.feed(text[i:i + step]) + out
                i += step
            assert stream.finish() + out == reverse_units(text, unit), (text, unit)
