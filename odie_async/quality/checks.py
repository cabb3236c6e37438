"""The checks that need no model: instruction, text, table structure, degenerate tables, truncation, leakage.

Each returns the list of reasons it finds (empty: passed), named ``group.what``
so a record's ``reasons`` say which check failed and the summary can count them.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import orjson

from ..evaluation.tables import Table, TableError, is_na, parse_table
from ..exceptions import ConfigError
from ..paths import config_dir
from .gate_config import DegenerateChecks, InstructionChecks, LeakageCheck, StructureChecks, TextChecks, TruncationChecks
from .text import DANGLING, flat, ngrams, normalise, words


_CLAUSE = re.compile(r"[.!;:,\n()]+\s*|\s+-+\s+|\s+(?:and|then|so|also)\s+")
# Words a request clause may open with before its verb ("Please kindly list ...", "Now, extract ...").
_FILLERS = frozenset("please kindly now also then so and just hey hi hello ok okay first next finally simply "
                     "additionally furthermore lastly".split())
_SEPARATOR = re.compile(r"^[ \t`]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$", re.MULTILINE)


@lru_cache(maxsize=64)
def _compiled(patterns: tuple[str, ...]) -> list[re.Pattern]:
    return [re.compile(p, re.IGNORECASE) for p in patterns]


def _matches(patterns: list[str], text: str) -> bool:
    return any(p.search(text) for p in _compiled(tuple(patterns)))


def clauses(instruction: str) -> list[str]:
    """The instruction's clauses, lower-cased: its sentences split at commas, semicolons, colons and dashes."""
    return [c.strip() for c in _CLAUSE.split(str(instruction).lower()) if c.strip()]


def _sentences(instruction: str) -> list[str]:
    return [c.strip() for c in re.split(r"[.!;:\n]+\s*", str(instruction).lower()) if c.strip()]


def _opens_with(clause: str, cues: list[str], fillers: frozenset[str]) -> bool:
    tokens = re.findall(r"[a-z']+", clause)
    while tokens and (tokens[0] in fillers or tokens[0].endswith("ly")):  # "Carefully check ..."
        tokens = tokens[1:]
    head = " ".join(tokens[:3]) + " "
    # a cue is a word or a word start ("summar"), but its plural is a noun ("Reports show ...")
    return any(head.startswith(cue) and not head.startswith((cue + "s ", cue + "es ")) for cue in cues)


def is_request(instruction: str, cfg: InstructionChecks) -> bool:
    """Whether an instruction asks for something: a question, a clause opening on a request verb
    (``Extract ...``, ``Please list ...``), a sentence opening on a question word, or a request phrase
    (``I need``, ``could you``) anywhere."""
    if "?" in instruction or _matches(cfg.request_phrases, instruction):
        return True
    if any(_opens_with(sentence, cfg.question_cues, _FILLERS) for sentence in _sentences(instruction)):
        return True
    return any(_opens_with(clause, cfg.request_cues, _FILLERS) for clause in clauses(instruction))


def copied_share(instruction: str, text: str, n: int = 4) -> float:
    """Share of the instruction's word ``n``-grams that occur verbatim in the text."""
    grams = ngrams(words(instruction), n)
    return len(grams & ngrams(words(text), n)) / len(grams) if grams else 0.0


def _kind_reasons(instruction: str, cfg: InstructionChecks) -> list[str]:
    """A refusal, or, for what asks for nothing: a meta remark, a description of the document, a statement."""
    if _matches(cfg.refusal_patterns, instruction):
        return ["instruction.refusal"]
    if not instruction or is_request(instruction, cfg):
        return []
    if _matches(cfg.meta_patterns, instruction):
        return ["instruction.meta"]
    if _matches(cfg.describes_text_patterns, instruction):
        return ["instruction.describes_text"]
    return ["instruction.statement"]


def instruction_reasons(instruction: str, text: str, cfg: InstructionChecks) -> list[str]:
    """``instruction.*``: refusal, meta, describes_text, statement, placeholder, too_short, copies_text."""
    if not cfg.enabled:
        return []
    instruction = str(instruction or "").strip()
    reasons = _kind_reasons(instruction, cfg)
    if not instruction or _matches(cfg.placeholder_patterns, instruction):
        reasons.append("instruction.placeholder")
    if len(words(instruction)) < cfg.min_words:
        reasons.append("instruction.too_short")
    if copied_share(instruction, text) > cfg.max_copied_share:
        reasons.append("instruction.copies_text")
    return reasons


def text_reasons(text: str, cfg: TextChecks) -> list[str]:
    """``text.empty`` or ``text.too_long`` (more than ``max_words`` space-separated words, as the paper counts)."""
    if not cfg.enabled:
        return []
    if not str(text or "").strip():
        return ["text.empty"]
    return ["text.too_long"] if len(str(text).split(" ")) > cfg.max_words else []


def parse(markdown: str) -> tuple[Table | None, list[str]]:
    """The table of a record and the structure or truncation reasons met while parsing it.

    A table whose only ragged row is the last one was cut short (``truncation.last_row``);
    any other ragged row is ``table.ragged_rows``. Either way the tolerant parse is returned.
    A separator line whose cell count alone is off (``| --- | --- | --- |`` under a
    four-cell header, as in some gold test tables) is forgiven.
    """
    markdown = str(markdown or "")
    try:
        return parse_table(markdown, strict=True), _open_last_row(markdown)
    except TableError as exc:
        if exc.reason == "no_table":
            return None, ["table.no_table"]
    table = parse_table(markdown, strict=False)
    canonical = _SEPARATOR.sub("| " + " | ".join("---" for _ in table.header) + " |", markdown, count=1)
    with contextlib.suppress(TableError):
        return parse_table(canonical, strict=True), []  # only the separator's cell count was off
    lines = markdown.rstrip().split("\n")
    try:
        parse_table("\n".join(lines[:-1]), strict=True)
        return table, ["truncation.last_row"]
    except TableError:
        return table, ["table.ragged_rows"]


def _open_last_row(markdown: str) -> list[str]:
    """``truncation.last_row`` when the rows close with a pipe but the last one does not (it was cut off)."""
    rows = [line.strip() for line in markdown.strip().split("\n") if "|" in line]
    return ["truncation.last_row"] if len(rows) > 2 and rows[0].endswith("|") and not rows[-1].endswith("|") else []


def informative(table: Table) -> list[str]:
    """The normalised body cells that say something (not N/A, not empty)."""
    return [normalise(cell) for cell in table.cells() if not is_na(cell) and normalise(cell)]


def structure_reasons(table: Table, cfg: StructureChecks) -> list[str]:
    """``table.*``: empty_header, no_rows, too_few_columns, too_small, too_many_na."""
    if not cfg.enabled:
        return []
    reasons = []
    if not any(normalise(cell) for cell in table.header):
        reasons.append("table.empty_header")
    if table.n_rows == 0:
        reasons.append("table.no_rows")
    if table.n_columns < cfg.min_columns:
        reasons.append("table.too_few_columns")
    if table.n_rows + table.n_columns < cfg.min_size:
        reasons.append("table.too_small")
    cells = table.cells()
    na = table.na_count()
    if (cfg.max_na is not None and na > cfg.max_na) or (cells and na / len(cells) > cfg.max_na_share):
        reasons.append("table.too_many_na")
    return reasons


def _repeats_one_value(row: tuple[str, ...]) -> bool:
    values = [normalise(cell) for cell in row if not is_na(cell) and normalise(cell)]
    if len(row) < 2 or len(values) < 2:
        return False
    return Counter(values).most_common(1)[0][1] >= max(2, math.ceil(2 * len(row) / 3))


def _constant_columns(table: Table) -> tuple[int, int]:
    """(columns of 3+ informative cells that hold one value all the way down, such columns in all)."""
    constant = tall = 0
    for j in range(table.n_columns):
        values = [normalise(row[j]) for row in table.rows if j < len(row) and not is_na(row[j])]
        if len(values) >= 3:
            tall += 1
            constant += len(set(values)) == 1
    return constant, tall


def degenerate_reasons(table: Table, cfg: DegenerateChecks) -> list[str]:
    """``degenerate.*``: duplicate_header, header_in_body, repeated_rows, repeated_value,
    repeating_rows, constant_columns, few_distinct."""
    if not cfg.enabled:
        return []
    reasons = []
    header = [normalise(cell) for cell in table.header if normalise(cell)]
    if len(set(header)) < len(header):
        reasons.append("degenerate.duplicate_header")
    cells = informative(table)
    if cells and sum(cell in set(header) for cell in cells) / len(cells) > cfg.max_header_in_body_share:
        reasons.append("degenerate.header_in_body")
    if len(set(table.rows)) < table.n_rows:
        reasons.append("degenerate.repeated_rows")
    if len(cells) >= cfg.min_cells:
        if Counter(cells).most_common(1)[0][1] / len(cells) > cfg.max_value_share:
            reasons.append("degenerate.repeated_value")
        if len(set(cells)) / len(cells) < cfg.min_distinct_share:
            reasons.append("degenerate.few_distinct")
    if table.rows and sum(map(_repeats_one_value, table.rows)) / table.n_rows > cfg.max_repeating_row_share:
        reasons.append("degenerate.repeating_rows")
    constant, tall = _constant_columns(table)
    if tall >= 2 and constant / table.n_columns > cfg.max_constant_column_share:
        reasons.append("degenerate.constant_columns")
    return reasons


def dangling(cell: str) -> bool:
    """Whether a cell of two or more words ends on a word a phrase cannot end on (``with a``)."""
    tokens = str(cell).strip().rstrip(",;:-").split()
    return len(tokens) >= 2 and tokens[-1].lower() in DANGLING


def truncation_reasons(table: Table, cfg: TruncationChecks) -> list[str]:
    """``truncation.cut_cells``: too many cells end mid-phrase (a length limit cut them)."""
    if not cfg.enabled:
        return []
    cells = [cell for cell in table.cells() + list(table.header) if not is_na(cell)]
    if cells and sum(map(dangling, cells)) / len(cells) > cfg.max_dangling_share:
        return ["truncation.cut_cells"]
    last = table.rows[-1] if table.rows else ()
    if last and dangling(next((c for c in reversed(last) if c.strip()), "")):
        return ["truncation.last_row"]
    return []


def _specific(value: str, text: str, min_chars: int) -> bool:
    """Whether a few-shot table value is a fact of its example's text a copy can be told by: a name the
    text capitalises mid-sentence, or a figure of three digits or more (not a label such as "Positive",
    "No change", nor a clock time)."""
    plain, value = flat(value), value.strip()
    if len(plain) < min_chars or is_na(value) or f" {plain} " not in f" {flat(text)} ":
        return False
    if any(ch.isdigit() for ch in plain):
        return sum(ch.isdigit() for ch in plain) >= 3 and not re.fullmatch(r"\d{1,2} \d{2}", plain)
    return re.search(rf"[a-z0-9,;] {re.escape(value[0].upper() + value[1:])}\b", text) is not None


@lru_cache(maxsize=8)
def few_shot_values(seeds: str, min_chars: int) -> frozenset[str]:
    """The specific values of the few-shot examples' tables, flattened (``seeds`` relative to configs/ or absolute)."""
    path = Path(seeds) if Path(seeds).is_absolute() else config_dir() / seeds
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"leakage.seeds: cannot read {path}: {exc.strerror}") from exc
    values = set()
    for raw in filter(bytes.strip, lines):
        seed = orjson.loads(raw)
        if isinstance(seed.get("table"), str):
            cells = parse_table(seed["table"], strict=False).cells()
            values |= {flat(c) for c in cells if _specific(c, str(seed.get("text") or ""), min_chars)}
    return frozenset(values)


def leaked(cell: str, text_norm: str, values: frozenset[str]) -> bool:
    """Whether a cell holds a few-shot example's value (whole words) that the text does not."""
    padded = f" {flat(cell)} "
    return any(f" {v} " in padded and f" {v} " not in text_norm for v in values)


def leakage_reasons(table: Table, text: str, cfg: LeakageCheck) -> list[str]:
    """``leakage.few_shot``: a body cell copies a few-shot example's value that is not in the text."""
    if not cfg.enabled:
        return []
    values = few_shot_values(cfg.seeds, cfg.min_chars)
    text_norm = f" {flat(text)} "
    return ["leakage.few_shot"] if any(leaked(c, text_norm, values) for c in table.cells() if not is_na(c)) else []
