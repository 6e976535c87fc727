"""The tokenizer's fixed facts: onanchat's split pattern, its 11 special tokens and the two file names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from revjax.errors import RevjaxError

SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
    "<|forward|>",
    "<|backward|>",
)

TOKENIZER_FILE = "tokenizer.pkl"
TOKEN_BYTES_FILE = "token_bytes.npy"

_NUM_BYTE_TOKENS = 256
_MIN_VOCAB_SIZE = _NUM_BYTE_TOKENS + len(SPECIAL_TOKENS)

TokenBytesMethod = Literal["decode", "raw"]
Conversation = Mapping[str, Any]


class TokenizerError(RevjaxError, ValueError):
    """A tokenizer file or encoding is missing, corrupt, or incompatible with revjax."""
