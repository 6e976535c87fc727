"""The tokenizer itself: onanchat's BPE over ``tiktoken`` with its 11 specials, encoding, decoding, chat rendering."""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Iterable
from typing import overload

import numpy as np
import tiktoken

from revjax.tokenizer.bpe import train_encoding
from revjax.tokenizer.files import free_folder, load_encoding, write_files
from revjax.tokenizer.vocab import SPECIAL_TOKENS, Conversation, TokenBytesMethod, TokenizerError


class Tokenizer:
    """A byte-level BPE tokenizer with onanchat's 11 special tokens, backed by ``tiktoken``."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        """Wrap ``encoding`` after checking it carries the 11 specials at ids vocab−11 … vocab−1."""
        if not isinstance(encoding, tiktoken.Encoding):
            raise TokenizerError(
                f"expected a tiktoken.Encoding but got {type(encoding).__name__}; "
                "load an onanchat/revjax tokenizer.pkl or build the encoding with tiktoken."
            )
        specials = dict(encoding._special_tokens)
        missing = [name for name in SPECIAL_TOKENS if name not in specials]
        if missing:
            raise TokenizerError(
                f"tokenizer lacks the special tokens {', '.join(missing)} (an upstream nanochat tokenizer has only 9); "
                "retrain it with revjax or onanchat so it has all 11."
            )
        extra = sorted(set(specials) - set(SPECIAL_TOKENS))
        if extra:
            raise TokenizerError(
                f"tokenizer has unexpected special tokens {', '.join(extra)}; "
                f"only the 11 onanchat specials {', '.join(SPECIAL_TOKENS)} are supported."
            )
        num_ranks = len(encoding._mergeable_ranks)
        expected = {name: num_ranks + i for i, name in enumerate(SPECIAL_TOKENS)}
        if specials != expected or encoding.n_vocab != num_ranks + len(SPECIAL_TOKENS):
            raise TokenizerError(
                f"special token ids {specials} are not the consecutive ids {expected} that follow the "
                f"{num_ranks} mergeable tokens; rebuild the encoding with specials at len(mergeable_ranks) + index."
            )
        self._enc = encoding
        self._special_ids = expected

    @classmethod
    def from_encoding(cls, encoding: tiktoken.Encoding) -> Tokenizer:
        """Wrap an existing ``tiktoken.Encoding`` (validated like :meth:`load`)."""
        return cls(encoding)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        doc_cap: int = 10_000,
        max_chars: int | None = None,
        progress: bool = True,
    ) -> Tokenizer:
        """Train a BPE tokenizer with rustbpe on ``texts`` so that its vocabulary has ``vocab_size`` ids.

        Each document is cropped to ``doc_cap`` characters and reading stops once ``max_chars`` characters
        have been consumed. If the corpus runs out of pairs to merge, the vocabulary comes out smaller
        (with a warning) and the special ids shift down accordingly.
        """
        return cls(train_encoding(texts, vocab_size, doc_cap=doc_cap, max_chars=max_chars, progress=progress))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        """Load ``tokenizer.pkl`` (a pickled ``tiktoken.Encoding``) from ``directory``."""
        return cls(load_encoding(directory))

    def save(self, directory: str | os.PathLike[str], *, token_bytes_method: TokenBytesMethod = "decode") -> None:
        """Write ``tokenizer.pkl`` and ``token_bytes.npy`` (int32) into ``directory`` as one unit, never replacing a
        tokenizer (checkpoints may use it: :class:`TokenizerError`).

        Both files go into a temporary folder beside ``directory``, which is renamed into place; where ``directory``
        already holds other files, they are hard-linked in instead (each link fails rather than replace a file),
        ``token_bytes.npy`` first, so a reader that finds ``tokenizer.pkl`` finds both. Callers that check for an
        existing tokenizer before training one hold its lock (``RunLock(directory, "tokenizer", beside=True)``).
        """
        out = free_folder(directory)
        write_files(out, self._enc, self.token_bytes(token_bytes_method))

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The underlying ``tiktoken.Encoding``."""
        return self._enc

    @property
    def vocab_size(self) -> int:
        """Number of token ids, specials included."""
        return self._enc.n_vocab

    @property
    def special_ids(self) -> dict[str, int]:
        """Special-token name → id, in :data:`SPECIAL_TOKENS` order."""
        return dict(self._special_ids)

    def encode_special(self, name: str) -> int:
        """Id of the special token ``name`` (e.g. ``"<|bos|>"``)."""
        try:
            return self._special_ids[name]
        except KeyError:
            raise ValueError(f"unknown special token {name!r}; expected one of {', '.join(SPECIAL_TOKENS)}.") from None

    @property
    def bos_id(self) -> int:
        return self._special_ids["<|bos|>"]

    @property
    def user_start_id(self) -> int:
        return self._special_ids["<|user_start|>"]

    @property
    def user_end_id(self) -> int:
        return self._special_ids["<|user_end|>"]

    @property
    def assistant_start_id(self) -> int:
        return self._special_ids["<|assistant_start|>"]

    @property
    def assistant_end_id(self) -> int:
        return self._special_ids["<|assistant_end|>"]

    @property
    def python_start_id(self) -> int:
        return self._special_ids["<|python_start|>"]

    @property
    def python_end_id(self) -> int:
        return self._special_ids["<|python_end|>"]

    @property
    def output_start_id(self) -> int:
        return self._special_ids["<|output_start|>"]

    @property
    def output_end_id(self) -> int:
        return self._special_ids["<|output_end|>"]

    @property
    def forward_id(self) -> int:
        return self._special_ids["<|forward|>"]

    @property
    def backward_id(self) -> int:
        return self._special_ids["<|backward|>"]

    def _resolve_id(self, token: int | str) -> int:
        if isinstance(token, str):
            return self.encode_special(token)
        if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
            if not 0 <= token < self.vocab_size:
                raise ValueError(f"token id {token} is outside the vocabulary [0, {self.vocab_size}).")
            return int(token)
        raise TypeError(f"prepend/append must be a token id or a special-token name, got {type(token).__name__}.")

    @overload
    def encode(
        self, text: str, prepend: int | str | None = None, append: int | str | None = None, num_threads: int = 8
    ) -> list[int]: ...

    @overload
    def encode(
        self, text: list[str], prepend: int | str | None = None, append: int | str | None = None, num_threads: int = 8
    ) -> list[list[int]]: ...

    def encode(
        self,
        text: str | list[str],
        prepend: int | str | None = None,
        append: int | str | None = None,
        num_threads: int = 8,
    ) -> list[int] | list[list[int]]:
        """Encode a string (or a list of strings, in parallel); special-token text is encoded as plain text.

        ``prepend``/``append`` add one token (an id or a special-token name) to each encoded sequence.
        """
        prepend_id = None if prepend is None else self._resolve_id(prepend)
        append_id = None if append is None else self._resolve_id(append)
        if isinstance(text, str):
            rows = [self._enc.encode_ordinary(text)]
        elif isinstance(text, list):
            rows = self._enc.encode_ordinary_batch(text, num_threads=num_threads)
        else:
            raise TypeError(f"encode expects a str or a list of str, got {type(text).__name__}.")
        for row in rows:
            if prepend_id is not None:
                row.insert(0, prepend_id)
            if append_id is not None:
                row.append(append_id)
        return rows[0] if isinstance(text, str) else rows

    __call__ = encode

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; specials appear as their names and invalid UTF-8 as U+FFFD."""
        return self._enc.decode([int(i) for i in ids])

    def render_conversation(
        self, conversation: Conversation, max_tokens: int = 2048
    ) -> tuple[list[int], list[int]]:
        """Tokenize a chat as nanochat does, returning ``(ids, mask)`` where mask 1 marks supervised tokens.

        Layout: ``<|bos|>`` then alternating user turns ``<|user_start|> text <|user_end|>`` (mask 0) and
        assistant turns ``<|assistant_start|>`` (mask 0), content (mask 1), ``<|assistant_end|>`` (mask 1).
        A leading system message is prepended to the first user message. Both lists are cut to ``max_tokens``.
        """
        messages = list(conversation["messages"])
        if messages and messages[0]["role"] == "system":
            if len(messages) < 2 or messages[1]["role"] != "user":
                raise ValueError("a system message must be followed by a user message; put a user turn after it.")
            merged = copy.deepcopy(messages[1])
            merged["content"] = messages[0]["content"] + "\n\n" + messages[1]["content"]
            messages = [merged, *messages[2:]]
        if not messages:
            raise ValueError("conversation has no messages; add at least one user message.")

        ids: list[int] = []
        mask: list[int] = []

        def add(tokens: int | list[int], supervised: int) -> None:
            tokens = [tokens] if isinstance(tokens, int) else tokens
            ids.extend(tokens)
            mask.extend([supervised] * len(tokens))

        add(self.bos_id, 0)
        for i, message in enumerate(messages):
            role, content = message["role"], message["content"]
            expected = "user" if i % 2 == 0 else "assistant"
            if role != expected:
                raise ValueError(
                    f"message {i} is from {role!r} but should be from {expected!r}; "
                    "messages must alternate user/assistant, starting with user."
                )
            if role == "user":
                if not isinstance(content, str):
                    raise ValueError(f"user message {i} must have string content, got {type(content).__name__}.")
                add(self.user_start_id, 0)
                add(self.encode(content), 0)
                add(self.user_end_id, 0)
                continue
            add(self.assistant_start_id, 0)
            if isinstance(content, str):
                add(self.encode(content), 1)
            elif isinstance(content, list):
                for part in content:
                    kind, part_ids = part["type"], self.encode(part["text"])
                    if kind == "text":
                        add(part_ids, 1)
                    elif kind == "python":
                        add(self.python_start_id, 1)
                        add(part_ids, 1)
                        add(self.python_end_id, 1)
                    elif kind == "python_output":
                        add(self.output_start_id, 0)
                        add(part_ids, 0)
                        add(self.output_end_id, 0)
                    else:
                        raise ValueError(
                            f"unknown assistant content part type {kind!r}; use 'text', 'python' or 'python_output'."
                        )
            else:
                raise ValueError(
                    f"assistant message {i} content must be a string or a list of parts, got {type(content).__name__}."
                )
            add(self.assistant_end_id, 1)
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation: Conversation, max_tokens: int = 2048) -> list[int]:
        """Prompt ids for sampling the final assistant reply: drop that reply, render, add ``<|assistant_start|>``."""
        messages = list(conversation["messages"])
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(
                "render_for_completion needs a conversation whose last message is from the assistant "
                "(it is dropped and regenerated); append an assistant message, e.g. with empty content."
            )
        ids, _ = self.render_conversation({**conversation, "messages": messages[:-1]}, max_tokens=max_tokens)
        return [*ids, self.assistant_start_id]

    def token_bytes(self, method: TokenBytesMethod = "decode") -> np.ndarray:
        """Per-id byte counts (int32, shape ``(vocab_size,)``), 0 for special tokens.

        ``"decode"`` is onanchat's rule: UTF-8 length of ``decode([id])``, so a token that is not valid
        UTF-8 on its own counts 3 bytes per U+FFFD. ``"raw"`` is the token's true byte length.
        """
        if method not in ("decode", "raw"):
            raise ValueError(f"token_bytes method must be 'decode' or 'raw', got {method!r}.")
        specials = set(SPECIAL_TOKENS)
        special_ids = set(self._special_ids.values())
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for token_id in range(self.vocab_size):
            if token_id in special_ids:
                continue
            raw = self._enc.decode_single_token_bytes(token_id)
            if method == "raw":
                out[token_id] = len(raw)
            else:
                text = raw.decode("utf-8", errors="replace")
                out[token_id] = 0 if text in specials else len(text.encode("utf-8"))
        return out

    def identity(self) -> str:
        """Short stable hash (16 hex digits of sha256) of the split pattern, mergeable ranks and specials."""
        h = hashlib.sha256()
        h.update(self._enc._pat_str.encode("utf-8") + b"\0")
        for token, rank in sorted(self._enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
            h.update(rank.to_bytes(4, "little") + len(token).to_bytes(4, "little") + token)
        for name, token_id in self._special_ids.items():
            h.update(token_id.to_bytes(4, "little") + name.encode("utf-8") + b"\0")
        return h.hexdigest()[:16]

    def compression_stats(self, texts: Iterable[str]) -> dict[str, float]:
        """Bytes, characters and tokens over ``texts`` with bytes/token and chars/token ratios."""
        docs = list(texts)
        n_bytes = sum(len(doc.encode("utf-8", errors="replace")) for doc in docs)
        n_chars = sum(len(doc) for doc in docs)
        n_tokens = sum(len(row) for row in self._enc.encode_ordinary_batch(docs))
        return {
            "bytes": n_bytes,
            "chars": n_chars,
            "tokens": n_tokens,
            "bytes_per_token": n_bytes / n_tokens if n_tokens else 0.0,
            "chars_per_token": n_chars / n_tokens if n_tokens else 0.0,
        }

    def __repr__(self) -> str:
        return f"Tokenizer(name={self._enc.name!r}, vocab_size={self.vocab_size}, identity={self.identity()!r})"
