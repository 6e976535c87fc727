"""Spelling tasks generated from a word list (nanochat's tasks/spellingbee.py formats).

``SpellingBee``: "how many r are in strawberry?" answered by spelling the word out, counting letter by letter,
checking with a Python ``.count`` call and ending with ``#### N``. ``SimpleSpelling``: "Spell the word: w" →
``w:w,o,r,d``. Conversation ``i`` of split train comes from ``random.Random(i)``, of split test from
``random.Random(10_000_000 + i)`` (a nonzero ``seed`` mixes in as ``"seed:base"``).

Words: ``"english-words"`` (234,450 lowercase letters-only words from the pinned ``english-words`` wheel),
``"builtin"`` (a short list here), a path to a text file with one word a line (e.g. dwyl's words_alpha.txt, what
nanochat uses), or ``"auto"``: the wheel when it can be had, else the built-in list.
"""

from __future__ import annotations

import logging
import os
import random
import string
from pathlib import Path

from revjax.tasks.archives import archive_path, load_word_set, read_member
from revjax.tasks.base import Conversation, GeneratedTask, TaskError
from revjax.tasks.graders import grade_exact, grade_numeric, last_text
from revjax.tasks.registry import register

PathLike = str | os.PathLike[str]
log = logging.getLogger(__name__)

WORDS_MEMBER = "english_words/data/web2_alpha_lower.pickle"
BUILTIN_WORDS = tuple(
    """
    apple banana cherry strawberry raspberry blueberry orange lemon melon grape peach pear plum apricot mango
    papaya coconut walnut almond hazelnut pepper tomato potato carrot onion garlic cabbage lettuce spinach
    broccoli pumpkin cucumber mushroom river mountain valley forest meadow desert ocean island harbor bridge
    castle village market library museum theater garden kitchen bedroom window doorway ceiling balcony stairs
    mirror pillow blanket candle lantern compass anchor bottle basket hammer ladder needle pencil notebook
    letter envelope stamp parcel rocket planet comet galaxy nebula eclipse horizon thunder lightning rainbow
    blizzard drizzle breeze tornado volcano glacier canyon pebble boulder crystal diamond emerald sapphire
    elephant giraffe kangaroo penguin dolphin octopus squirrel rabbit hedgehog tortoise butterfly dragonfly
    mosquito pelican flamingo peacock sparrow falcon buffalo cheetah panther leopard gorilla chimpanzee zebra
    bicycle airplane submarine helicopter tractor scooter carriage wagon engine battery circuit keyboard
    monitor printer scissors umbrella necklace bracelet feather whistle trumpet violin guitar piano drummer
    orchestra symphony melody rhythm harmony chorus ballet poetry novel chapter sentence grammar alphabet
    mississippi committee accommodate occurrence possession embarrass bookkeeper balloon coffee toffee
    address success assessment parallel millennium necessary tomorrow beginning vacuum queue rhythm
    banana bandana cinnamon mammal llama lollipop bubble puzzle jazz fizz quiz sphinx oxygen xylophone
    """.split()
)
BEE_TEMPLATES = (
    "How many {letter} are in the word {word}", "How many {letter} are in {word}",
    "Count the number of {letter} in {word}", "How many times does {letter} appear in {word}",
    "What's the count of {letter} in {word}", "In the word {word}, how many {letter} are there",
    "How many letter {letter} are in the word {word}", "Count how many {letter} appear in {word}",
    "Tell me the number of {letter} in {word}", "How many occurrences of {letter} are in {word}",
    "Find the count of {letter} in {word}", "Can you count the {letter} letters in {word}",
    "What is the frequency of {letter} in {word}", "How many {letter}s are in {word}",
    "How many {letter}'s are in {word}", "Count all the {letter} in {word}", "How many times is {letter} in {word}",
    "Number of {letter} in {word}", "Total count of {letter} in {word}", "How many {letter} does {word} have",
    "How many {letter} does {word} contain", "What's the number of {letter} in {word}",
    "{word} has how many {letter}", "In {word}, count the {letter}", "How many {letter} appear in {word}",
    "Count the {letter} in {word}", "Give me the count of {letter} in {word}",
    "How many instances of {letter} in {word}", "Show me how many {letter} are in {word}",
    "Calculate the number of {letter} in {word}",
    "¿Cuántas {letter} hay en {word}?", "¿Cuántas veces aparece {letter} en {word}?", "Cuenta las {letter} en {word}",
    "¿Cuántas letras {letter} tiene {word}?",
    "{word}中有多少个{letter}", "{word}里有几个{letter}", "数一下{word}中的{letter}", "{word}这个词里有多少{letter}",
    "{word}에 {letter}가 몇 개 있나요", "{word}에서 {letter}의 개수는", "{word}에 {letter}가 몇 번 나오나요",
    "{word}라는 단어에 {letter}가 몇 개",
    "Combien de {letter} dans {word}", "Combien de fois {letter} apparaît dans {word}",
    "Compte les {letter} dans {word}",
    "Wie viele {letter} sind in {word}", "Wie oft kommt {letter} in {word} vor", "Zähle die {letter} in {word}",
    "{word}に{letter}は何個ありますか", "{word}の中に{letter}がいくつ", "{word}に{letter}が何回出てくる",
)


def load_words(words: str | PathLike = "auto", cache_dir: PathLike | None = None,
               archive: PathLike | None = None, verify: bool = True) -> tuple[list[str], str]:
    """``(words, source name)`` for a spelling task (see the module docstring for ``words``)."""
    if words in ("auto", "english-words"):
        try:
            wheel = archive_path("english-words", cache_dir, archive, verify=verify)
            return load_word_set(read_member(wheel, WORDS_MEMBER)), "english-words"
        except TaskError as e:
            if words == "english-words":
                raise
            log.warning("spelling tasks use the built-in word list: %s", e)
        return sorted(set(BUILTIN_WORDS)), "builtin"
    if words == "builtin":
        return sorted(set(BUILTIN_WORDS)), "builtin"
    path = Path(words).expanduser()
    if not path.is_file():
        raise TaskError(f"word list {path} does not exist; use 'english-words', 'builtin', 'auto' or a text file")
    found = [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]
    if not found:
        raise TaskError(f"word list {path} is empty")
    return found, path.name


class _Spelling(GeneratedTask):
    eval_type = "generative"

    def __init__(self, size: int, split: str, seed: int, words: str | PathLike, cache_dir: PathLike | None,
                 archive: PathLike | None, verify: bool, kind: str) -> None:
        super().__init__(kind, size, split, seed)
        self.words, self.word_source = load_words(words, cache_dir, archive, verify)


@register("spelling-bee")
class SpellingBee(_Spelling):
    """Count a letter in a word: manual spelling and counting, a Python check, then ``#### N``."""

    def __init__(self, size: int = 1000, split: str = "train", seed: int = 0, words: str | PathLike = "auto",
                 cache_dir: PathLike | None = None, archive: PathLike | None = None, verify: bool = True) -> None:
        super().__init__(size, split, seed, words, cache_dir, archive, verify, "spelling-bee")

    def _get(self, index: int) -> Conversation:
        rng = self._rng(index)
        word = rng.choice(self.words)
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(string.ascii_lowercase)
        count = word.count(letter)
        template = rng.choice(BEE_TEMPLATES)
        if rng.random() < 0.3:
            template = template.lower()
        quotes = ("", "'", '"')
        lq, wq = rng.choice(quotes), rng.choice(quotes)
        question = template.format(letter=f"{lq}{letter}{lq}", word=f"{wq}{word}{wq}")
        if rng.random() < 0.5:
            question += "?"
        lines = [
            f"We are asked to find the number '{letter}' in the word '{word}'. Let me try a manual approach first.",
            "", "First spell the word out:", f"{word}:{','.join(word)}", "",
            f"Then count the occurrences of '{letter}':",
        ]
        running = 0
        for i, char in enumerate(word, 1):
            if char == letter:
                running += 1
                lines.append(f"{i}:{char} hit! count={running}")
            else:
                lines.append(f"{i}:{char}")
        manual = "\n".join(lines) + f"\n\nThis gives us {running}."
        parts = [
            {"type": "text", "text": manual},
            {"type": "text", "text": "\n\nLet me double check this using Python:\n\n"},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\n\nPython gives us {count}.\n\nMy final answer is:\n\n#### {count}"},
        ]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": parts}]}

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        return grade_numeric(last_text(conversation), reply)


@register("simple-spelling")
class SimpleSpelling(_Spelling):
    """Spell a word letter by letter: ``Spell the word: apple`` → ``apple:a,p,p,l,e``; graded by exact match."""

    def __init__(self, size: int = 1000, split: str = "train", seed: int = 0, words: str | PathLike = "auto",
                 cache_dir: PathLike | None = None, archive: PathLike | None = None, verify: bool = True) -> None:
        super().__init__(size, split, seed, words, cache_dir, archive, verify, "simple-spelling")
        random.Random(42).shuffle(self.words)  # a word order of its own, unlike SpellingBee's

    def _get(self, index: int) -> Conversation:
        word = self._rng(index).choice(self.words)
        return {
            "messages": [
                {"role": "user", "content": f"Spell the word: {word}"},
                {"role": "assistant", "content": f"{word}:{','.join(word)}"},
            ]
        }

    def evaluate(self, conversation: Conversation, reply: str) -> bool:
        return grade_exact(last_text(conversation), reply)
