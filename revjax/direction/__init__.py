"""Direction semantics: every forward / backward / bidirectional token layout in revjax.

The rest of revjax never reverses a token list itself; it asks this package, whose modules follow the sections
below (``core``, ``units``, ``documents``, ``conversations``, ``chat``, ``render``, ``compat``; every name is importable from
``revjax.direction``). Everything here is pure Python/numpy on token ids: no model, no device, no file, no
tokenizer import. Special token ids come in through :class:`Specials`.

Directions
    ``forward`` reads text left to right, ``backward`` right to left, and ``bidirectional`` trains
    one model on both, with a direction token (``<|forward|>`` F or ``<|backward|>`` K) right after
    BOS telling it which way the sequence runs. In model order BOS always comes first.

Reversal units (``units``)
    What a backward reading reverses: token ids (``token``, onanchat's and the default), or the text's words
    (``word``, BackGPT) or words with whole entities (``entity``) before tokenization; every layout below takes a
    ``unit`` and, for the text units, reverses segments around text already reversed (:mod:`revjax.direction.units`).

Documents (default, corrected mode)
    Each document is oriented on its own: forward ``[BOS, t1 … tn]``, backward ``[BOS, tn … t1]``,
    bidirectional ``[BOS, marker, …]`` on every document, its direction chosen by
    :func:`choose_direction` from ``(seed, document index)`` only, so it does not depend on
    batching, packing, worker or process layout.

    Mask convention (``is_target``, aligned with the ids): ``is_target[i]`` says whether ``ids[i]``
    is scored when the model predicts it from ``ids[:i]``. BOS is a target (the previous document
    ends by predicting it: forward models learn "the text ends here", backward models "the text
    starts here"); the direction token is never a target, since nothing before it determines it.
    A packed row of ``T+1`` ids becomes ``inputs = row[:-1]`` and ``targets = row[1:]`` with −1
    where ``is_target[1:]`` is false (:func:`inputs_and_targets`). Forward, backward and
    bidirectional therefore score the same multiset of tokens per document: BOS plus its text.
    Where rows start is the pipeline's packing choice (:mod:`revjax.data.packing`): a row that
    continues a document may repeat its head (:func:`document_head_length` tokens) as context only
    (:func:`continued_row`), so the scored tokens stay the same.

Conversations (ids + mask from ``render_conversation``: ``B us q ue as a ae …``)
    The mask uses the same convention: ``mask[i] == 1`` means ``ids[i]`` is a target. Two modes:

    * ``sequence`` (what onanchat trains): everything after BOS is reversed, special tokens
      included, so backward is ``B ae rev(a) as ue rev(q) us``; turn order is reversed and each
      turn's end marker comes first.
    * ``turn`` (what the onanchat design describes): the content between each ``us … ue`` and
      ``as … ae`` pair is reversed in place; turn order and markers stay, so backward is
      ``B us rev(q) ue as rev(a) ae``. Tool-call and tool-output tokens inside an assistant turn
      are reversed with its content, so tool use cannot run backward.

    Bidirectional adds the marker right after BOS (mask 0), direction per conversation from
    :func:`choose_direction`. Two loss masks (:class:`LossMask`):

    * ``generated`` (default) supervises exactly what the chat front end asks the model to
      generate in that mode. Forward and turn mode: the assistant content and its ``ae`` (the
      forward mask carried along with its tokens). Sequence-backward: the backward chat prompt is
      ``B ae rev(r) as`` and the model must produce the preceding user turn ``ue rev(q) us``, so
      every user turn (both markers and content) is supervised and the assistant turns are not.
    * ``assistant`` carries the rendered mask along with its tokens, whatever the mode; in
      sequence-backward this is onanchat's SFT mask ``[mask[0]] + reversed(mask[1:])``.

Inference
    A prompt in reading order (with BOS) is oriented like a document; a generation in model order
    is restored by reversing token ids, never strings. For backward generation the continuation
    comes before the prompt text in reading order. Chat prompts (:func:`chat_prompt`) are always
    rebuilt from the reading-order messages, so in backward chat an earlier turn is appended to
    the end of the model-order sequence, and a bidirectional marker sits right after BOS, as in
    training.

Text for people (``render``)
    Every front end shows generated ids through :func:`render` / :class:`Rendering` (a chat turn
    through :func:`render_reply`): reading order, a chat turn cut at its end token, a calculator
    call shown as ``[calculator: EXPR = RESULT]``, never a raw special token; streamed piece by
    piece, backward pieces going before the text so far.

onanchat compatibility (explicit, opt-in; functions named ``compat_*``)
    Reproduces onanchat's layouts bug for bug, for comparing with published checkpoints: the base
    loader reverses whole micro-batch chunks of ``B·T+1`` tokens with ``chunk[0]`` pinned, and its
    bidirectional mode alternates direction per loader yield with one marker per chunk and the
    chunk's last token dropped; mid, SFT and RL reverse whole conversations with the parity of a
    batch or example index choosing the direction. The compat base and mid layouts score every
    token; compat SFT carries the rendered mask along with its tokens (``[mask[0]] +
    reversed(mask[1:])``, marker 0).

Documents and compat chunks are numpy ``int32`` arrays (masks ``bool``); conversations, prompts
and chat layouts are Python lists of ints, like ``render_conversation``.
"""

from revjax.direction.chat import (chat_prompt, chat_reply, chat_stop_token, join_generation, orient_prompt,
                                   restore_generation, restore_prompt)
from revjax.direction.compat import (compat_batches, compat_chunk_to_batch, compat_chunks, compat_orient_chunk,
                                     compat_orient_conversation, compat_orient_sft_example)
from revjax.direction.conversations import orient_conversation, restore_conversation
from revjax.direction.core import ConversationMode, Direction, LossMask, Specials, Tokens, choose_direction
from revjax.direction.documents import (continued_row, document_direction, document_head_length, inputs_and_targets,
                                        known_directions, orient_document, orient_documents, restore_document)
from revjax.direction.render import Rendering, chat_turn, chat_turn_ends, render, render_reply
from revjax.direction.units import (MEASURE_UNITS, Unit, UnitStream, flip, is_entity_word, orient_text,
                                    reverse_units, reverses_text, segment_permutation, text_pieces)

__all__ = [
    "MEASURE_UNITS", "ConversationMode", "Direction", "LossMask", "Rendering", "Specials", "Tokens", "Unit",
    "UnitStream", "flip", "is_entity_word", "orient_text", "reverse_units", "reverses_text", "segment_permutation", "text_pieces",
    "chat_prompt", "chat_reply", "chat_stop_token", "chat_turn", "chat_turn_ends", "choose_direction",
    "compat_batches", "compat_chunk_to_batch", "compat_chunks", "compat_orient_chunk", "compat_orient_conversation",
    "compat_orient_sft_example",
    "continued_row", "document_direction", "document_head_length", "inputs_and_targets", "join_generation",
    "known_directions", "orient_conversation", "orient_document", "orient_documents", "orient_prompt",
    "render", "render_reply", "restore_conversation", "restore_document", "restore_generation", "restore_prompt",
]
