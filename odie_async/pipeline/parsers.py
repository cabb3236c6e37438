"""Turn stage answers back into records, from JSON (structured outputs) or free text.

Each parser first tries the answer as JSON of the stage's schema, then as the
text form its prompt asks for, tolerating what models add: list numbers,
labels, quotes, code fences, a sentence before or after. A parser raises
``ParseError`` (with a short reason) when nothing usable is left.
"""

from __future__ import annotations

import re

import orjson

from ..evaluation.tables import Table, TableError, split_around_table, table_from_json

_NUMBERED = re.compile(r"^\s*(?:\d{1,3}\s*[.):\]-]|[-*•]|\(\d{1,3}\))\s+")
_LABEL = re.compile(
    r"^\s*(?:\*\*)?(instruction|request|domain|text|document|rewritten request|paraphrase|answer|explanation)"
    r"(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*", re.I)
_FENCE = re.compile(r"^```[\w-]*\s*\n?|\n?```\s*$")
_QUOTES = "\"'“”‘’`"
_FIELD = re.compile(r"(?:\*\*)?\b(domain|instruction|request)\b(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*", re.I)
_SCORE = re.compile(r"\b({names})\b[^0-9\n]{{0,20}}([0-9](?:\.[0-9]+)?)", re.I)


class ParseError(ValueError):
    """An answer had nothing usable; ``reason`` is a short tag."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def load_json(content: str):
    """The JSON value in ``content`` (fences stripped), or None when it is not JSON."""
    text = _FENCE.sub("", content.strip()).strip()
    if not text or text[0] not in "{[":
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def strip_quotes(text: str) -> str:
    """``text`` without the quotes or backticks wrapped around all of it."""
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def clean_line(line: str) -> str:
    """One list item: numbering, bullets, a label and wrapping quotes removed."""
    line = _NUMBERED.sub("", line.strip(), count=1)
    line = _LABEL.sub("", line, count=1)
    return strip_quotes(line)


def free_text(content: str | None, min_words: int = 3) -> str:
    """A free-text answer (a text, an instruction) without fences, a leading label or quotes."""
    text = _FENCE.sub("", (content or "").strip()).strip()
    text = strip_quotes(_LABEL.sub("", text, count=1))
    if len(text.split()) < min_words:
        raise ParseError("empty")
    return text


def parse_instruction_list(content: str) -> list[tuple[str, str]]:
    """``[(domain, instruction)]`` from a list answer (JSON or numbered text)."""
    data = _json_list(content, "instructions")
    if data is not None:
        pairs = [_pair_from_json(item) for item in data]
    else:
        pairs = [_pair_from_text(item) for item in _items(content) or _plain_lines(content)]
    pairs = [pair for pair in pairs if pair is not None]
    if not pairs:
        raise ParseError("no_items")
    return pairs


def _json_list(content: str, key: str) -> list | None:
    """The answer's JSON list: the answer itself, or its ``key`` field; None for a text answer."""
    data = load_json(content)
    if isinstance(data, dict):
        data = data.get(key)
    return data if isinstance(data, list) else None


def _pair_from_json(item) -> tuple[str, str] | None:
    if isinstance(item, dict) and isinstance(item.get("instruction"), str):
        instruction = strip_quotes(item["instruction"])
        return (strip_quotes(str(item.get("domain") or "")) or "general", instruction) if instruction else None
    return None


def _items(content: str) -> list[str]:
    """Split a numbered list into items (an item may span lines)."""
    items: list[list[str]] = []
    after_blank = False
    for line in _FENCE.sub("", content).splitlines():
        if _NUMBERED.match(line) and re.match(r"^\s*\(?\d", line):
            items.append([line])
        elif items and line.strip() and (not after_blank or _FIELD.match(line.strip())):
            items[-1].append(line)  # after a blank line only a labelled line still belongs to the item
        after_blank = not line.strip()
    return ["\n".join(lines) for lines in items]


def _plain_lines(content: str) -> list[str]:
    """Without any numbering: lines of four words or more that do not introduce a list (a list has two or more)."""
    lines = [line.strip() for line in _FENCE.sub("", content).splitlines()]
    lines = [line for line in lines if len(line.split()) >= 4 and not line.rstrip("*").endswith(":")]
    return lines if len(lines) >= 2 else []


def _pair_from_text(item: str) -> tuple[str, str] | None:
    body = _NUMBERED.sub("", item.strip(), count=1)
    parts = _FIELD.split(body)
    fields = {parts[i].lower(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    instruction = fields.get("instruction") or fields.get("request") or (parts[0] if len(parts) == 1 else "")
    instruction = strip_quotes(" ".join(instruction.split()).strip(" |;*"))
    domain = strip_quotes(" ".join(fields.get("domain", "").split()).strip(" |;.,*"))
    if len(instruction.split()) < 3:
        return None
    return (domain or "general", instruction)


def parse_paraphrases(content: str) -> list[tuple[int | None, str]]:
    """``[(id, rewritten request)]``: each item with the number of the request it rewrites.

    JSON items carry ``id``; text lines carry their list number. An item without one
    gets ``None``: ``align_paraphrases`` never places it by position.
    """
    data = _json_list(content, "paraphrases")
    if data is not None:
        items = [_paraphrase_from_json(x) for x in data]
    else:
        raw = [line for line in _FENCE.sub("", content).splitlines() if line.strip()]
        numbered = [line for line in raw if _ITEM_NUMBER.match(line)]
        items = [(_number(line), clean_line(line)) for line in (numbered or raw)]
    return [(i, " ".join(text.split())) for i, text in items if text.strip()]


_ITEM_NUMBER = re.compile(r"^\s*\(?(\d{1,3})\s*[.):\]-]\s+")


def _number(line: str) -> int | None:
    found = _ITEM_NUMBER.match(line)
    return int(found.group(1)) if found else None


def _paraphrase_from_json(item) -> tuple[int | None, str]:
    if isinstance(item, dict):
        number = item.get("id")
        number = number if isinstance(number, int) and not isinstance(number, bool) else None
        return number, strip_quotes(str(item.get("request") or ""))
    return None, strip_quotes(str(item))


def align_paraphrases(items: list[tuple[int | None, str]], ids: list[int]) -> tuple[dict[int, str], list[int]]:
    """``(rewrite per id, ids still to ask)``: an id given twice, missing or unknown is never guessed."""
    seen: dict[int, list[str]] = {}
    for number, text in items:
        if number in ids:
            seen.setdefault(number, []).append(text)
    found = {number: texts[0] for number, texts in seen.items() if len(texts) == 1}
    return found, [number for number in ids if number not in found]


def parse_table_answer(content: str) -> Table:
    """The table of a table-stage answer: JSON ``{"header", "rows"}`` or a markdown table."""
    data = load_json(content)
    if isinstance(data, dict):
        return table_from_json(data)
    return split_around_table(content)[1]


def parse_cot_answer(content: str) -> tuple[str, Table]:
    """``(explanation, table)`` of a chain-of-thought answer."""
    data = load_json(content)
    if isinstance(data, dict):
        explanation = " ".join(str(data.get("explanation") or "").split())
        table = table_from_json(data)
    else:
        before, table, _after = split_around_table(content)
        explanation = " ".join(_LABEL.sub("", _FENCE.sub("", before)).split())
        explanation = re.sub(r"\s*(?:table|markdown table)\s*:?\s*$", "", explanation, flags=re.I)
    if len(explanation.split()) < 3:
        raise TableError("no_explanation", "the answer gives no explanation before the table")
    return explanation, table


def parse_scores(content: str, names: tuple[str, ...]) -> dict[str, float]:
    """Judge scores mapped from 1–5 to 0–1 (``(s - 1) / 4``), one per name."""
    data = load_json(content)
    raw: dict[str, float] = {}
    if isinstance(data, dict):
        raw = {k.lower(): v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    else:
        pattern = re.compile(_SCORE.pattern.format(names="|".join(names)), re.I)
        for name, value in pattern.findall(content or ""):
            raw.setdefault(name.lower(), float(value))
    if any(name not in raw for name in names):
        raise ParseError("missing_score")
    return {name: min(1.0, max(0.0, (float(raw[name]) - 1.0) / 4.0)) for name in names}
