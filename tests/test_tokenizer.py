"""Tests for revjax.tokenizer: golden parity with onanchat, training, persistence, chat rendering."""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from revjax.tokenizer import files as tokmod
from revjax.tokenizer import (
    SPECIAL_TOKENS,
    SPLIT_PATTERN,
    TOKEN_BYTES_FILE,
    TOKENIZER_FILE,
    Tokenizer,
    TokenizerError,
    train_tokenizer,
)

VOCAB = 512

_WORDS = (
    "the of and to in that is was he for it with as his on be at by had not are but from or have an they which "
    "one you were her all she there would their we him been has when who will more no if out so said what up its "
    "about into than them can only other new some could time these two may then do first any my now such like "
    "naïve café résumé façade Ελληνικά γλώσσα日本語 中文 "
    "русский язык עברית 🙂 🚀 👍🏽"
).split()


def _corpus(num_docs: int = 600, seed: int = 0) -> list[str]:
    """A deterministic ~200 KB mix of words, numbers, punctuation, unicode and whitespace."""
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        lines = []
        for _ in range(rng.randint(2, 6)):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 20))]
            if rng.random() < 0.5:
                words.insert(rng.randrange(len(words)), str(rng.randint(0, 10**6)))
            lines.append(" ".join(words) + rng.choice([".", ",", "!", "?", ":", " —", "..."]))
        docs.append(rng.choice(["\n", "\n\n", "\t", "  "]).join(lines))
    return docs


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _corpus()


@pytest.fixture(scope="module")
def tok(corpus: list[str]) -> Tokenizer:
    return Tokenizer.train(corpus, VOCAB, progress=False)


@pytest.fixture(scope="module")
def golden_tok(golden_dir: Path) -> Tokenizer:
    return Tokenizer.load(golden_dir / "tokenizer")


# ---------------------------------------------------------------- constants


def test_split_pattern_and_specials_are_onanchats() -> None:
    assert SPLIT_PATTERN == (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
        r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
    )
    assert SPECIAL_TOKENS == (
        "<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
        "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>", "<|forward|>", "<|backward|>",
    )


# ---------------------------------------------------------------- golden parity


def test_golden_loads_with_expected_special_ids(golden_tok: Tokenizer, golden_dir: Path) -> None:
    expected = json.loads((golden_dir / "tokenizer" / "special_ids.json").read_text())
    assert golden_tok.special_ids == expected
    assert list(golden_tok.special_ids) == list(SPECIAL_TOKENS)
    assert golden_tok.vocab_size == 2048
    assert golden_tok.encoding._pat_str == SPLIT_PATTERN
    assert (golden_tok.bos_id, golden_tok.forward_id, golden_tok.backward_id) == (2037, 2046, 2047)
    assert [
        golden_tok.user_start_id, golden_tok.user_end_id, golden_tok.assistant_start_id, golden_tok.assistant_end_id,
        golden_tok.python_start_id, golden_tok.python_end_id, golden_tok.output_start_id, golden_tok.output_end_id,
    ] == list(range(2038, 2046))
    for name, token_id in expected.items():
        assert golden_tok.encode_special(name) == token_id


def test_golden_encode_cases(golden_tok: Tokenizer, golden_dir: Path) -> None:
    cases = json.loads((golden_dir / "tokenizer" / "encode_cases.json").read_text())
    assert cases
    for case in cases:
        assert golden_tok.encode(case["text"], prepend="<|bos|>") == case["ids"], case["text"]
        assert golden_tok(case["text"], prepend=golden_tok.bos_id) == case["ids"]
        assert golden_tok.decode(case["ids"][1:]) == case["text"]
    texts = [case["text"] for case in cases]
    assert golden_tok.encode(texts, prepend="<|bos|>", num_threads=2) == [case["ids"] for case in cases]


def test_golden_token_bytes(golden_tok: Tokenizer, golden_dir: Path) -> None:
    expected = np.load(golden_dir / "tokenizer" / "token_bytes.npy")
    got = golden_tok.token_bytes()
    assert got.dtype == np.int32 and got.shape == (2048,)
    np.testing.assert_array_equal(got, expected)
    raw = golden_tok.token_bytes(method="raw")
    assert raw.dtype == np.int32
    assert raw[0x80] == 1 and got[0x80] == 3  # lone continuation byte decodes to U+FFFD
    assert raw[ord("a")] == got[ord("a")] == 1
    assert (raw[-11:] == 0).all() and (got[-11:] == 0).all()
    for token_id in (300, 1000, 2000):
        assert raw[token_id] == len(golden_tok.encoding.decode_single_token_bytes(token_id))
    with pytest.raises(ValueError, match="'decode' or 'raw'"):
        golden_tok.token_bytes(method="utf16")  # type: ignore[arg-type]


def test_golden_identity_is_stable(golden_tok: Tokenizer, golden_dir: Path) -> None:
    assert golden_tok.identity() == "5e3f4eb73f8b8d52"
    assert Tokenizer.load(golden_dir / "tokenizer").identity() == golden_tok.identity()


# ---------------------------------------------------------------- training


def test_trained_vocab_and_special_layout(tok: Tokenizer) -> None:
    assert tok.vocab_size == VOCAB
    assert tok.encoding.name == "rustbpe"
    assert tok.special_ids == {name: VOCAB - 11 + i for i, name in enumerate(SPECIAL_TOKENS)}
    assert tok.bos_id == VOCAB - 11 and tok.forward_id == VOCAB - 2 and tok.backward_id == VOCAB - 1
    assert len(tok.encoding._mergeable_ranks) == VOCAB - 11
    assert tok.encoding.decode_single_token_bytes(0x41) == b"A"


def test_trained_tokenizer_compresses(tok: Tokenizer, corpus: list[str]) -> None:
    text = corpus[0]
    assert len(tok.encode(text)) < len(text.encode("utf-8")) / 2
    stats = tok.compression_stats(corpus[:50])
    assert stats["bytes"] == sum(len(d.encode("utf-8")) for d in corpus[:50])
    assert stats["chars"] == sum(len(d) for d in corpus[:50])
    assert stats["tokens"] == sum(len(tok.encode(d)) for d in corpus[:50])
    assert stats["bytes_per_token"] == pytest.approx(stats["bytes"] / stats["tokens"])
    assert stats["chars_per_token"] == pytest.approx(stats["chars"] / stats["tokens"])
    assert stats["bytes_per_token"] > 2.0


ROUND_TRIP_TEXTS = [
    "",
    "Hello, world!",
    "naïve café — Ελληνικά, 日本語, emoji 🙂👍🏽🚀 and a ZWJ family 👨‍👩‍👧",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n\n  indented\n",
    "numbers 1234567890 3.14159 -42 1e-9",
    "unseen script: ქართული ᎠᏂᏴᏫᏯ ‮bidi‬",
    "\x00\x01 control chars \x7f",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(0 <= i < VOCAB - 11 for i in ids)
    assert tok.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_round_trip_property(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_special_token_text_is_plain(tok: Tokenizer) -> None:
    for name in SPECIAL_TOKENS:
        text = f"say {name} now"
        ids = tok.encode(text)
        assert tok.special_ids[name] not in ids
        assert all(i < VOCAB - 11 for i in ids)
        assert tok.decode(ids) == text
    batch = tok.encode(["<|bos|>", "<|backward|> x"])
    assert all(i < VOCAB - 11 for row in batch for i in row)


def test_encode_prepend_append_and_batch(tok: Tokenizer) -> None:
    texts = ["first doc", "second 🙂", ""]
    single = [tok.encode(t) for t in texts]
    assert tok.encode(texts) == single
    assert tok.encode(texts, prepend="<|bos|>", append="<|assistant_end|>", num_threads=2) == [
        [tok.bos_id, *ids, tok.assistant_end_id] for ids in single
    ]
    assert tok.encode("hi", prepend=tok.forward_id, append=np.int64(3)) == [tok.forward_id, *tok.encode("hi"), 3]
    assert tok("hi", prepend="<|backward|>") == [tok.backward_id, *tok.encode("hi")]
    assert tok.decode([tok.bos_id, *tok.encode("x")]) == "<|bos|>x"
    with pytest.raises(ValueError, match="unknown special token"):
        tok.encode("hi", prepend="<|nope|>")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.encode("hi", append=VOCAB)
    with pytest.raises(TypeError, match="str or a list"):
        tok.encode(("a", "b"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="token id or a special-token name"):
        tok.encode("a", prepend=1.5)  # type: ignore[arg-type]


def test_too_small_vocab_raises() -> None:
    with pytest.raises(ValueError, match="at least 267"):
        Tokenizer.train(["some text"], 266, progress=False)


def test_minimum_vocab_has_only_bytes() -> None:
    tok = Tokenizer.train(["abc abc abc"], 267, progress=False)
    assert tok.vocab_size == 267 and tok.bos_id == 256 and tok.backward_id == 266
    assert tok.encode("abc") == [97, 98, 99]


def test_doc_cap_crops_documents() -> None:
    doc = "ab" * 1000
    with pytest.warns(UserWarning, match="only supported 258"):
        capped = Tokenizer.train([doc], 300, doc_cap=4, progress=False)
    ranks = capped.encoding._mergeable_ranks
    assert len(ranks) == 258 and b"abab" in ranks
    uncapped = Tokenizer.train([doc], 267 + 3, progress=False)
    assert b"abababab" in uncapped.encoding._mergeable_ranks


def test_max_chars_stops_reading() -> None:
    pulled: list[int] = []

    def docs():
        for i in range(100):
            pulled.append(i)
            yield "x" * 100

    Tokenizer.train(docs(), 267, max_chars=250, progress=False)
    assert pulled == [0, 1, 2]


def test_progress_bar_counts_characters(capsys: pytest.CaptureFixture[str]) -> None:
    Tokenizer.train(["hello world"] * 10, 270, max_chars=1000, progress=True)
    err = capsys.readouterr().err
    assert "training tokenizer" in err and "char" in err and "110/1" in err


# ---------------------------------------------------------------- persistence


def test_save_load_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.identity() == tok.identity()
    assert loaded.special_ids == tok.special_ids
    for text in ROUND_TRIP_TEXTS:
        assert loaded.encode(text) == tok.encode(text)
    np.testing.assert_array_equal(np.load(tmp_path / "tok" / TOKEN_BYTES_FILE), tok.token_bytes())
    assert np.load(tmp_path / "tok" / TOKEN_BYTES_FILE).dtype == np.int32
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [TOKEN_BYTES_FILE, TOKENIZER_FILE]


def test_saved_files_are_readable_by_the_group(tok: Tokenizer, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        tok.save(tmp_path / "tok")
    finally:
        os.umask(old)
    for name in (TOKENIZER_FILE, TOKEN_BYTES_FILE):
        assert (tmp_path / "tok" / name).stat().st_mode & 0o777 == 0o644


def test_saved_pickle_needs_only_tiktoken(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    script = (
        "import pickle, sys, tiktoken\n"
        f"enc = pickle.load(open({str(tmp_path / TOKENIZER_FILE)!r}, 'rb'))\n"
        "assert type(enc) is tiktoken.Encoding and 'revjax' not in sys.modules\n"
        "print(enc.name, enc.n_vocab, enc.encode_single_token('<|backward|>'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["rustbpe", str(VOCAB), str(VOCAB - 1)]
    state = pickle.loads((tmp_path / TOKENIZER_FILE).read_bytes()).__getstate__()
    assert set(state) == {"name", "pat_str", "mergeable_ranks", "special_tokens"}


def test_save_raw_token_bytes(golden_tok: Tokenizer, tmp_path: Path) -> None:
    golden_tok.save(tmp_path, token_bytes_method="raw")
    np.testing.assert_array_equal(np.load(tmp_path / TOKEN_BYTES_FILE), golden_tok.token_bytes("raw"))


def test_save_is_all_or_nothing_and_never_replaces(tok: Tokenizer, golden_tok: Tokenizer, tmp_path: Path,
                                                  monkeypatch) -> None:
    def crash(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(tokmod.os, "fsync", crash)
        with pytest.raises(OSError, match="disk full"):
            tok.save(tmp_path / "tok")
    assert list(tmp_path.iterdir()) == []  # neither a half-written folder nor a temporary one is left
    golden_tok.save(tmp_path / "tok")
    before = {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir()}
    with pytest.raises(TokenizerError, match=r"already holds a tokenizer \(tokenizer.pkl\), which revjax never "
                                             r"replaces .* save the new one into another folder"):
        tok.save(tmp_path / "tok")
    assert {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]
    # a folder holding other files gets both files linked in (a lone token_bytes.npy also counts as a tokenizer)
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "notes.txt").write_text("mine")
    tok.save(tmp_path / "mixed")
    assert Tokenizer.load(tmp_path / "mixed").identity() == tok.identity()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed", "tok"]
    (tmp_path / "mixed" / TOKENIZER_FILE).unlink()
    with pytest.raises(TokenizerError, match=r"\(token_bytes.npy\)"):
        golden_tok.save(tmp_path / "mixed")


def test_identity_changes_with_content(tok: Tokenizer, golden_tok: Tokenizer) -> None:
    assert len(tok.identity()) == 16 and int(tok.identity(), 16) >= 0
    assert tok.identity() != golden_tok.identity()
    enc = tok.encoding
    ranks = dict(enc._mergeable_ranks)
    other_pattern = tiktoken.Encoding(
        "rustbpe", pat_str=r"\s+|\S+", mergeable_ranks=ranks, special_tokens=dict(enc._special_tokens)
    )
    assert Tokenizer.from_encoding(other_pattern).identity() != tok.identity()
    a, b = (token for token, rank in ranks.items() if rank in (300, 301))
    ranks[a], ranks[b] = ranks[b], ranks[a]
    swapped = tiktoken.Encoding(
        "rustbpe", pat_str=enc._pat_str, mergeable_ranks=ranks, special_tokens=dict(enc._special_tokens)
    )
    assert Tokenizer.from_encoding(swapped).identity() != tok.identity()
    renamed = tiktoken.Encoding(
        "other", pat_str=enc._pat_str, mergeable_ranks=dict(enc._mergeable_ranks),
        special_tokens=dict(enc._special_tokens),
    )
    assert Tokenizer.from_encoding(renamed).identity() == tok.identity()


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer found"):
        Tokenizer.load(tmp_path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (pickle.dumps({"name": "rustbpe"}), "pickled dict, not a tiktoken.Encoding"),
        (pickle.dumps(Path("x")), "only a pickled tiktoken.Encoding is accepted"),
        (b"\x80\x04garbage", "not a readable pickle"),
        (b"", "not a readable pickle"),
    ],
)
def test_load_rejects_non_encoding_pickles(tmp_path: Path, payload: bytes, message: str) -> None:
    (tmp_path / TOKENIZER_FILE).write_bytes(payload)
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.load(tmp_path)


def test_load_refuses_registry_encoding_pickle(tok: Tokenizer, tmp_path: Path, monkeypatch) -> None:
    # tiktoken pickles an encoding of its registry by name only; unpickling that would download the vocabulary.
    enc = tiktoken.Encoding("cl100k_base", pat_str=SPLIT_PATTERN, mergeable_ranks=dict(tok.encoding._mergeable_ranks),
                            special_tokens=dict(tok.encoding._special_tokens))
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "cl100k_base", enc)
    payload = pickle.dumps(enc)
    monkeypatch.undo()
    assert enc.__getstate__() != "cl100k_base" and b"mergeable_ranks" not in payload
    monkeypatch.setattr(tiktoken.registry, "get_encoding", lambda name: pytest.fail(f"fetched {name}"))
    (tmp_path / TOKENIZER_FILE).write_bytes(payload)
    with pytest.raises(TokenizerError, match=rf"{TOKENIZER_FILE}: the tokenizer pickle names tiktoken's registry "
                                             r"encoding 'cl100k_base', which tiktoken would fetch from the network"):
        Tokenizer.load(tmp_path)


def test_load_truncated_pickle(golden_dir: Path, tmp_path: Path) -> None:
    data = (golden_dir / "tokenizer" / TOKENIZER_FILE).read_bytes()
    (tmp_path / TOKENIZER_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(TokenizerError, match="not a readable pickle"):
        Tokenizer.load(tmp_path)


def _encoding_with(specials: dict[str, int], n_ranks: int = 256) -> tiktoken.Encoding:
    ranks = {bytes([i]): i for i in range(n_ranks)}
    return tiktoken.Encoding("rustbpe", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def test_upstream_nine_special_tokenizer_rejected(tmp_path: Path) -> None:
    enc = _encoding_with({name: 256 + i for i, name in enumerate(SPECIAL_TOKENS[:9])})
    (tmp_path / TOKENIZER_FILE).write_bytes(pickle.dumps(enc))
    with pytest.raises(TokenizerError, match=r"<\|forward\|>, <\|backward\|>.*upstream nanochat"):
        Tokenizer.load(tmp_path)


def test_misplaced_or_extra_specials_rejected() -> None:
    shuffled = {name: 256 + i for i, name in enumerate(reversed(SPECIAL_TOKENS))}
    with pytest.raises(TokenizerError, match="consecutive ids"):
        Tokenizer.from_encoding(_encoding_with(shuffled))
    gap = {name: 300 + i for i, name in enumerate(SPECIAL_TOKENS)}
    with pytest.raises(TokenizerError, match="consecutive ids"):
        Tokenizer.from_encoding(_encoding_with(gap))
    extra = {**{name: 256 + i for i, name in enumerate(SPECIAL_TOKENS)}, "<|endoftext|>": 267}
    with pytest.raises(TokenizerError, match="unexpected special tokens <\\|endoftext\\|>"):
        Tokenizer.from_encoding(_encoding_with(extra))
    with pytest.raises(TokenizerError, match="expected a tiktoken.Encoding"):
        Tokenizer.from_encoding({"name": "rustbpe"})  # type: ignore[arg-type]


def test_train_tokenizer_saves_and_reports(corpus: list[str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "tokenizer"
    tok = train_tokenizer(corpus[:100], out, 300, doc_cap=10_000, max_chars=None, progress=False)
    assert tok.vocab_size == 300
    assert Tokenizer.load(out).identity() == tok.identity()
    np.testing.assert_array_equal(np.load(out / TOKEN_BYTES_FILE), tok.token_bytes())
    printed = capsys.readouterr().out
    stats = tok.compression_stats(corpus[:100])
    assert "vocab_size=300" in printed and tok.identity() in printed
    assert f"{stats['tokens']:,} tokens" in printed and f"{stats['bytes_per_token']:.3f} bytes/token" in printed

    raw_dir = tmp_path / "raw"
    train_tokenizer(corpus[:100], raw_dir, 300, doc_cap=10_000, max_chars=None, token_bytes_method="raw",
                    eval_texts=["held out text"], progress=False)
    np.testing.assert_array_equal(np.load(raw_dir / TOKEN_BYTES_FILE), tok.token_bytes("raw"))
    assert "compression on eval texts" in capsys.readouterr().out


# ---------------------------------------------------------------- conversations


def test_render_user_assistant(tok: Tokenizer) -> None:
    q, a, q2, a2 = "What is 2+2?", "It is 4.", "And <|bos|> 3+3?", "6 🙂"
    conv = {"messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a},
        {"role": "user", "content": q2}, {"role": "assistant", "content": a2},
    ]}
    ids, mask = tok.render_conversation(conv)
    bos, us, ue, as_, ae = (tok.bos_id, tok.user_start_id, tok.user_end_id,
                            tok.assistant_start_id, tok.assistant_end_id)
    eq, ea, eq2, ea2 = (tok.encode(t) for t in (q, a, q2, a2))
    assert ids == [bos, us, *eq, ue, as_, *ea, ae, us, *eq2, ue, as_, *ea2, ae]
    assert mask == (
        [0, 0] + [0] * len(eq) + [0, 0] + [1] * len(ea) + [1]
        + [0] + [0] * len(eq2) + [0, 0] + [1] * len(ea2) + [1]
    )
    assert (bos, us, ue, as_, ae) == (VOCAB - 11, VOCAB - 10, VOCAB - 9, VOCAB - 8, VOCAB - 7)


def test_render_merges_system_message(tok: Tokenizer) -> None:
    conv = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]}
    original = json.dumps(conv)
    ids, mask = tok.render_conversation(conv)
    eq, ea = tok.encode("Be brief.\n\nHi"), tok.encode("Hello")
    assert ids == [tok.bos_id, tok.user_start_id, *eq, tok.user_end_id, tok.assistant_start_id, *ea,
                   tok.assistant_end_id]
    assert mask == [0, 0, *[0] * len(eq), 0, 0, *[1] * len(ea), 1]
    assert json.dumps(conv) == original


def test_render_tool_parts(tok: Tokenizer) -> None:
    parts = [
        {"type": "text", "text": "Let me compute."},
        {"type": "python", "text": "12*12"},
        {"type": "python_output", "text": "144"},
        {"type": "text", "text": "It is 144."},
    ]
    conv = {"messages": [{"role": "user", "content": "12 squared?"}, {"role": "assistant", "content": parts}]}
    ids, mask = tok.render_conversation(conv)
    eq, t1, py, out, t2 = (tok.encode(t) for t in ("12 squared?", "Let me compute.", "12*12", "144", "It is 144."))
    assert ids == [
        tok.bos_id, tok.user_start_id, *eq, tok.user_end_id, tok.assistant_start_id,
        *t1, tok.python_start_id, *py, tok.python_end_id, tok.output_start_id, *out, tok.output_end_id, *t2,
        tok.assistant_end_id,
    ]
    assert mask == [
        0, 0, *[0] * len(eq), 0, 0,
        *[1] * len(t1), 1, *[1] * len(py), 1, 0, *[0] * len(out), 0, *[1] * len(t2),
        1,
    ]


def test_render_truncates(tok: Tokenizer) -> None:
    conv = {"messages": [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok " * 50}]}
    full_ids, full_mask = tok.render_conversation(conv)
    assert len(full_ids) > 20
    ids, mask = tok.render_conversation(conv, max_tokens=20)
    assert ids == full_ids[:20] and mask == full_mask[:20]
    long_conv = {"messages": [{"role": "user", "content": "a b " * 2000}, {"role": "assistant", "content": "c"}]}
    ids, mask = tok.render_conversation(long_conv)
    assert len(ids) == len(mask) == 2048


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": "assistant", "content": "hi"}], "message 0 is from 'assistant' but should be from 'user'"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "should be from 'assistant'"),
        ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "followed by a user"),
        ([], "no messages"),
        ([{"role": "user", "content": ["x"]}], "string content"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}], "string or a list of parts"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "img", "text": ""}]}],
         "unknown assistant content part type 'img'"),
    ],
)
def test_render_rejects_bad_conversations(tok: Tokenizer, messages: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tok.render_conversation({"messages": messages})


def test_render_for_completion(tok: Tokenizer) -> None:
    conv = {"messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
    ]}
    prompt = tok.render_for_completion(conv)
    prefix, _ = tok.render_conversation({"messages": conv["messages"][:-1]})
    assert prompt == [*prefix, tok.assistant_start_id]
    assert prompt[-2:] == [tok.user_end_id, tok.assistant_start_id]
    assert len(conv["messages"]) == 5
    simple = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert tok.render_for_completion(simple) == [
        tok.bos_id, tok.user_start_id, *tok.encode("q"), tok.user_end_id, tok.assistant_start_id
    ]
    with pytest.raises(ValueError, match="last message is from the assistant"):
        tok.render_for_completion({"messages": [{"role": "user", "content": "q"}]})
