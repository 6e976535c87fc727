"""Reversal units: what a backward reading reverses — tokens (onanchat), words (BackGPT) or words and entities.

``direction.unit`` says what a backward sequence is made of:

``token`` (default)
    the token ids are reversed (onanchat); every layout in :mod:`revjax.direction` works on ids.
``word``
    the text's **pieces** are reversed and the result is tokenized normally: a piece is a maximal run of
    non-whitespace characters (a *word*, its punctuation attached, as BackGPT does) or of whitespace (kept as it is).
    ``"Identify the odd one out.\\n"`` reads ``"\\nout. one odd the Identify"``; each word is still spelled left to
    right. BackGPT's rule ``" ".join(text.split()[::-1])`` is the same on single-spaced text without leading or
    trailing whitespace; where they differ, BackGPT turns every whitespace run (line breaks, double spaces, tabs)
    into one space and drops it at the ends, while revjax keeps each as its own piece, reversed with the words, so
    the reversal is its own inverse and text → reversed → text is exact. A prompt to continue backward should start
    with a word (``"mentor is Kleisu."``): its reversed text then ends with that word, and the model writes the space
    before the next one, as in training.
``entity``
    as ``word``, but a run of two or more *entity words* joined by single spaces is one piece, kept in reading order:
    ``"Ada Lovelace met Charles Babbage."`` reads ``"Charles Babbage. met Ada Lovelace"``. An entity word
    (:func:`is_entity_word`) starts, after opening quotes or brackets, with an upper-case letter or a digit, or is a
    unit of measure (:data:`MEASURE_UNITS`, lower-case, two letters or more), so ``"5 km"`` and ``"3.5 kg"``
    stay whole (a currency sign counts as an opening mark: ``"$20"`` is a number). Whether two neighbouring
    words join depends only on each word and the single space between them, so the reversed text splits into the
    same pieces and the reversal is its own inverse here too. Limits of this capitalisation rule (no dictionary, no
    model): a sentence's capitalised first word joins a name after it (``"Yesterday Alice"``), a run goes on over a
    sentence end (``"Paris. Then"``), lower-case name particles split a name (``"Ludwig van Beethoven"`` is three
    pieces), and scripts without case (Chinese, Japanese, Arabic …) have entities only where digits are.

Token layouts for the text units (see :mod:`revjax.direction`): the text of each stretch that a token-level layout
would reverse (a document's body, a prompt, one message's content) is reversed here *before* tokenization, and the
token layout then reverses the order of its **segments** — a segment is one special token or a maximal run of other
tokens — keeping each run's ids in order (:func:`segment_permutation`). A document body or a prompt is one run, so
its ids stay as the tokenizer gave them; a backward conversation in ``sequence`` mode reverses its turns and markers
around message contents that are already reversed. Model-order text comes back to reading order by decoding in
model order and reversing its pieces again (:func:`reverse_units`), never by reversing ids; :class:`UnitStream`
does it piece by piece for streamed output. Bits per byte count the same bytes, since a reversal keeps every
character.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from enum import Enum

from revjax.direction.core import Direction, Specials, _parse_enum

_PIECE = re.compile(r"\s+|\S+")
_OPENING = "\"'([{“‘«¿¡$€£¥#"
_CLOSING = "\"')]}”’».,;:!?"
# lower-case units of measure (capitalised ones are entity words anyway); no one-letter ones, which are words too
MEASURE_UNITS = frozenset("% ‰ °C °F mm cm km mi mg kg lb lbs oz ml gal ms min ns µs kHz kB mph km/h m/s".split())


class Unit(str, Enum):
    """What a backward reading reverses: ``token`` ids, ``word`` pieces, or words with whole ``entity`` pieces."""

    TOKEN = "token"
    WORD = "word"
    ENTITY = "entity"

    @classmethod
    def parse(cls, value: str | Unit) -> Unit:
        """Return the Unit named by ``value``, or raise a one-sentence ValueError."""
        return _parse_enum(cls, value, "reversal unit")


def is_entity_word(word: str) -> bool:
    """Whether ``word`` (no whitespace) may be part of an entity: capitalised or a number, or a unit of measure."""
    core = word.lstrip(_OPENING)
    if core[:1].isupper() or core[:1].isdigit():
        return True
    return core.rstrip(_CLOSING) in MEASURE_UNITS


def text_pieces(text: str, unit: Unit | str) -> list[str]:
    """The pieces of ``text`` that a ``word`` or ``entity`` reversal reorders (their concatenation is ``text``)."""
    unit = Unit.parse(unit)
    if unit is Unit.TOKEN:
        raise ValueError("token units reverse token ids, not text; use unit 'word' or 'entity' for text pieces")
    pieces = _PIECE.findall(text)
    if unit is Unit.WORD:
        return pieces
    out: list[str] = []
    i = 0
    while i < len(pieces):
        j = i
        # an entity: entity words joined by single spaces (pieces alternate word, space, word …)
        while (j + 2 < len(pieces) and pieces[j + 1] == " " and is_entity_word(pieces[j])
               and is_entity_word(pieces[j + 2])):
            j += 2
        out.append("".join(pieces[i:j + 1]))
        i = j + 1
    return out


def reverse_units(text: str, unit: Unit | str) -> str:
    """``text`` with its pieces in reverse order; its own inverse (``reverse_units(reverse_units(t)) == t``)."""
    return "".join(reversed(text_pieces(text, unit)))


def segment_permutation(ids: Sequence[int], special: Collection[int]) -> list[int]:
    """Positions of ``ids`` with the order of segments reversed (a segment: one ``special`` id, or a maximal run of
    other ids, kept in order). Applying it twice gives the identity."""
    segments: list[list[int]] = []
    for i, t in enumerate(ids):
        if t in special or not segments or segments[-1] and ids[segments[-1][-1]] in special:
            segments.append([i])
        else:
            segments[-1].append(i)
    return [i for segment in reversed(segments) for i in segment]


def flip(ids: Sequence[int], unit: Unit | str, specials: Specials) -> list[int]:
    """``ids`` read the other way round: reversed for token units, segments reversed for text units (see above)."""
    ids = [int(t) for t in ids]
    if Unit.parse(unit) is Unit.TOKEN:
        return ids[::-1]
    return [ids[p] for p in segment_permutation(ids, specials.all_ids())]


def reverses_text(way: Direction | str, unit: Unit | str) -> bool:
    """Whether a stretch read ``way`` by a model of ``unit`` is its reversed text (backward, a word or entity
    unit)."""
    return Direction.parse(way) is Direction.BACKWARD and Unit.parse(unit) is not Unit.TOKEN


def orient_text(text: str, way: Direction | str, unit: Unit | str) -> str:
    """The text to tokenize for a stretch read ``way``: reversed by pieces for a backward text unit, else as is
    (token units are reversed after tokenization, by :func:`flip`). Its own inverse: applied to the decoded
    model-order text it gives the reading-order text back."""
    return reverse_units(text, unit) if reverses_text(way, unit) else text


class UnitStream:
    """Model-order text pieces → reading-order pieces, each to go *before* the text so far.

    A piece of model-order text is final once two more pieces follow it (an entity may still grow over a space and
    a word), so each :meth:`feed` returns the pieces that became final and :meth:`finish` the rest."""

    def __init__(self, unit: Unit | str):
        self.unit = Unit.parse(unit)
        text_pieces("", self.unit)  # refuses token units
        self._text = ""

    def feed(self, text: str) -> str:
        self._text += text
        pieces = text_pieces(self._text, self.unit)
        done = pieces[:-3]
        self._text = "".join(pieces[-3:])
        return "".join(reversed(done))

    def finish(self) -> str:
        text, self._text = self._text, ""
        return reverse_units(text, self.unit)
