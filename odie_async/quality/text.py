"""Word-level helpers the quality checks share: tokens, light stems, numbers, sentences, phrases."""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"[a-z0-9]+(?:['.,][a-z0-9]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
_ORDINALS = "first second third fourth fifth sixth seventh eighth ninth tenth".split()
NUMBER_WORDS = {w: str(i) for i, w in enumerate(_UNITS)} | {w: str(i) for i, w in enumerate(_ORDINALS, 1)} | {
    w: str(10 * i) for i, w in enumerate("thirty forty fifty sixty seventy eighty ninety".split(), 3)} | {
    "hundred": "100", "thousand": "1000", "dozen": "12", "half": "0.5"}
_SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\n+")
STOPWORDS = frozenset(
    "a an the of and or in on at to for from by with about as is are was were be this that these those "
    "each every all any its their his her our your it they them which what who whom whose how when where "
    "please can could would you me my i we us extract list give provide create make table given text".split()
)
# Words a phrase cut off mid-way tends to end on (a truncated cell).
DANGLING = frozenset("a an the of and or to for with in on at by from as that than is are was were but".split())


def normalise(text: str) -> str:
    """Lower case, accents folded, punctuation to spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9%$.,]+", " ", text).replace(" .", " ").replace(" ,", " ").split())


def words(text: str) -> list[str]:
    """Lower-cased word tokens (``3.5`` and ``o'neil`` stay whole)."""
    return _WORD.findall(normalise(text))


def stem(word: str) -> str:
    """A crude stem: the first six letters (``interactions`` and ``interaction`` meet)."""
    return word[:6] if not word[0].isdigit() else word


def content_stems(text: str) -> list[str]:
    """Stems of the words of ``text`` that are not stop words."""
    return [stem(w) for w in words(text) if w not in STOPWORDS]


def numbers(text: str) -> set[str]:
    """The numbers in ``text``: digits (thousands separators dropped, ``3:15`` read as ``3.15``) and number words."""
    text = str(text)
    found = {n.replace(",", "").rstrip(".") for n in _NUMBER.findall(re.sub(r"(?<=\d):(?=\d)", ".", text))}
    return found | {NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", text.lower()) if w in NUMBER_WORDS}


def sentences(text: str) -> list[str]:
    """The sentences and lines of ``text`` (non-empty)."""
    return [s.strip() for s in _SENTENCE.split(str(text)) if len(s.strip()) > 1]


def phrases(instruction: str, longest: int = 4) -> list[str]:
    """The instruction's 1–``longest``-word phrases that hold at least one content word."""
    tokens = words(instruction)
    found = dict.fromkeys(
        " ".join(tokens[i : i + n])
        for n in range(1, longest + 1)
        for i in range(len(tokens) - n + 1)
        if any(t not in STOPWORDS for t in tokens[i : i + n])
    )
    return list(found) or [instruction.lower()]


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    """The ``n``-grams of a token list."""
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}
