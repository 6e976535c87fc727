"""BPE tokenizer compatible with onanchat: rustbpe training, tiktoken encoding, chat rendering.

The on-disk format is onanchat's: ``tokenizer.pkl`` is a pickled ``tiktoken.Encoding`` and
``token_bytes.npy`` holds the per-token UTF-8 byte counts used for bits-per-byte evaluation.

Encoding: :mod:`revjax.tokenizer.vocab` (the split pattern, the specials, the file names),
:mod:`revjax.tokenizer.files` (checked loading, saving that never replaces a tokenizer) and
:mod:`revjax.tokenizer.encoding` (:class:`Tokenizer`). Training: :mod:`revjax.tokenizer.bpe` (rustbpe) and
:mod:`revjax.tokenizer.training` (:func:`train_tokenizer`: train, save, report compression).
"""

from revjax.tokenizer.encoding import Tokenizer
from revjax.tokenizer.training import train_tokenizer
from revjax.tokenizer.vocab import (
    SPECIAL_TOKENS,
    SPLIT_PATTERN,
    TOKEN_BYTES_FILE,
    TOKENIZER_FILE,
    Conversation,
    TokenBytesMethod,
    TokenizerError,
)

__all__ = [
    "SPECIAL_TOKENS",
    "SPLIT_PATTERN",
    "TOKEN_BYTES_FILE",
    "TOKENIZER_FILE",
    "Conversation",
    "TokenBytesMethod",
    "Tokenizer",
    "TokenizerError",
    "train_tokenizer",
]
