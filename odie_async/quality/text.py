"""Word-level helpers the quality checks share: tokens, light stems, numbers, sentences, phrases."""

from __future__ import annotations

import contextlib
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


_MONTH_NAMES = "january february march april may june july august september october november december".split()
MONTHS = {name: i for i, name in enumerate(_MONTH_NAMES, 1)} | {name[:3]: i for i, name in enumerate(_MONTH_NAMES, 1)} | {
    "sept": 9}
_MONTH = r"(" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_DATES = (
    ("ymd", re.compile(r"\b(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})\b")),
    ("either", re.compile(r"\b(\d{1,2})[/.](\d{1,2})[/.](\d{4})\b")),
    ("mdy", re.compile(rf"\b{_MONTH}\s+{_DAY},?\s+(\d{{4}})\b", re.IGNORECASE)),
    ("dmy", re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH},?\s+(\d{{4}})\b", re.IGNORECASE)),
    ("my", re.compile(rf"\b{_MONTH},?\s+(\d{{4}})\b", re.IGNORECASE)),
)
_SCALES = {"k": 1e3, "thousand": 1e3, "m": 1e6, "mn": 1e6, "million": 1e6, "b": 1e9, "bn": 1e9, "billion": 1e9,
           "trillion": 1e12}
_SCALED = re.compile(r"(\d+(?:[.,]\d+)*)\s*(k|mn|m|bn|b|thousand|million|billion|trillion)\b", re.IGNORECASE)


def canonical_number(raw: str) -> str:
    """``1,200`` -> ``1200``, ``3.50`` -> ``3.5``, ``007`` -> ``7`` (a number as any text may write it)."""
    raw = raw.replace(",", "").rstrip(".")
    try:
        value = float(raw)
    except ValueError:
        return raw
    return str(int(value)) if value.is_integer() else f"{value:.6f}".rstrip("0")


def _date_forms(kind: str, groups: tuple[str, ...]) -> set[str]:
    if kind == "my":
        return {f"{int(groups[1]):04d}-{MONTHS[groups[0].lower()]:02d}"}
    if kind == "ymd":
        y, m, d = groups
    elif kind == "mdy":
        m, d, y = MONTHS[groups[0].lower()], groups[1], groups[2]
    elif kind == "dmy":
        d, m, y = groups[0], MONTHS[groups[1].lower()], groups[2]
    else:  # 02/03/2024: March 2nd or February 3rd
        return _date_forms("ymd", (groups[2], groups[1], groups[0])) | _date_forms("ymd", (groups[2], groups[0], groups[1]))
    return {f"{int(y):04d}-{int(m):02d}-{int(d):02d}"} if 1 <= int(m) <= 12 and 1 <= int(d) <= 31 else set()


def quantities(text: str) -> list[frozenset[str]]:
    """Each date and number of ``text``, as the set of forms it may be written in elsewhere.

    Dates become ISO (``February 19, 2022``, ``19 Feb 2022``, ``2022-02-19`` meet);
    numbers lose thousands separators and trailing zeros, and ``1.2k`` or ``1.2 million``
    also count as ``1200`` or ``1200000``; ``3:15`` is read as ``3.15``; number words count.
    """
    text = str(text)
    found = []
    for kind, pattern in _DATES:
        for match in pattern.finditer(text):
            if forms := _date_forms(kind, match.groups()):
                found.append(frozenset(forms))
        text = pattern.sub(" ", text)
    text = re.sub(r"(?<=\d):(?=\d)", ".", text)
    for match in _SCALED.finditer(text):
        number, scale = match.groups()
        with contextlib.suppress(ValueError):
            scaled = canonical_number(str(float(number.replace(",", "")) * _SCALES[scale.lower()]))
            found.append(frozenset({canonical_number(number), scaled}))
        text = text.replace(match.group(), " ", 1)
    found += [frozenset({canonical_number(n)}) for n in _NUMBER.findall(text)]
    return found + [frozenset({NUMBER_WORDS[w]}) for w in re.findall(r"[a-z]+", text.lower()) if w in NUMBER_WORDS]


def numbers(text: str) -> set[str]:
    """Every form of every number and date in ``text``, and the year and day of each date (what a cell may cite)."""
    out = set()
    for forms in quantities(text):
        out |= forms
        out |= {str(int(part)) for form in forms if "-" in form for part in form.split("-")[::2]}
    return out


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
