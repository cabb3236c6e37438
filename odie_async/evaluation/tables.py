"""Markdown tables: find and parse the table in a model's answer, and render one.

Models wrap tables in code fences, put ``Table:`` or a list number before them,
quote them, or keep talking after them. ``parse_table`` finds the first block of
a header line followed by a separator line (``| --- | :-: |``) and the pipe lines
after it, and cuts whatever stands before the first and after the last ``|`` of
each line when the table uses outer pipes. ``render`` writes the one canonical
form the pipeline exports::

    | Name | Year |
    | --- | --- |
    | Ada | 1843 |

Cells are whitespace-collapsed; a ``|`` inside a cell is written ``\\|``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPLIT = re.compile(r"(?<!\\)\|")
_SEPARATOR_CELL = re.compile(r"^:?-+:?$")
NA_VALUES = frozenset({"n/a", "na", "none", "-", "--", "not specified", "not mentioned", "unknown", ""})


class TableError(ValueError):
    """No usable table in a text; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Table:
    """A parsed table: header cells and rows of cells (rows may be ragged when not strict)."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    @property
    def n_columns(self) -> int:
        """Number of header cells."""
        return len(self.header)

    @property
    def n_rows(self) -> int:
        """Number of body rows."""
        return len(self.rows)

    def cells(self) -> list[str]:
        """Every body cell, row by row."""
        return [cell for row in self.rows for cell in row]

    def na_count(self) -> int:
        """How many body cells are empty or say N/A (or an equivalent)."""
        return sum(1 for cell in self.cells() if is_na(cell))

    def markdown(self) -> str:
        """This table in the canonical markdown form (see ``render``)."""
        return render(self.header, self.rows)

    def as_json(self) -> dict:
        """``{"header": [...], "rows": [[...], ...]}``."""
        return {"header": list(self.header), "rows": [list(row) for row in self.rows]}


def is_na(cell: str) -> bool:
    """Whether a cell holds no information (``N/A``, ``-``, empty, ``not specified`` ...)."""
    return cell.strip().strip(".").lower() in NA_VALUES


def clean_cell(value: object) -> str:
    """One cell's text: any value as a string, whitespace collapsed to single spaces."""
    return " ".join(str(value).split())


def _escape(cell: str) -> str:
    return clean_cell(cell).replace("|", "\\|")


def render_row(cells) -> str:
    """One markdown table line: ``| a | b |``."""
    return "| " + " | ".join(_escape(cell) for cell in cells) + " |"


def render(header, rows) -> str:
    """The canonical markdown of a table; ragged rows are written as they are."""
    lines = [render_row(header), "| " + " | ".join("---" for _ in header) + " |"]
    lines += [render_row(row) for row in rows]
    return "\n".join(lines)


def _is_separator(line: str) -> bool:
    cells = _split_cells(line, outer=line.strip().startswith("|"))
    return bool(cells) and all(_SEPARATOR_CELL.match(cell.replace(" ", "")) for cell in cells)


def _trim_outer(line: str) -> str:
    """Cut what stands before the first and after the last unescaped pipe."""
    pipes = [m.start() for m in _SPLIT.finditer(line)]
    return line[pipes[0] : pipes[-1] + 1] if pipes else ""


def _split_cells(line: str, outer: bool) -> list[str]:
    text = _trim_outer(line) if outer else line.strip()
    if outer:
        text = text[1:-1] if len(text) >= 2 else ""
    else:
        text = text[1:] if text.startswith("|") else text
        text = text[:-1] if text.endswith("|") and not text.endswith("\\|") else text
    return [cell.strip().replace("\\|", "|") for cell in _SPLIT.split(text)]


def _has_pipe(line: str) -> bool:
    return _SPLIT.search(line) is not None


def _find_start(lines: list[str]) -> int:
    for i in range(len(lines) - 1):
        if _has_pipe(lines[i]) and _has_pipe(lines[i + 1]) and _is_separator(lines[i + 1]):
            return i
    raise TableError("no_table", "no header line followed by a | --- | separator line")


def _uses_outer_pipes(header_line: str, separator: str) -> bool:
    """Outer-pipe style (``| a | b |``): then text before the first pipe of a line is noise."""
    return any(line.strip().startswith("|") or line.strip().endswith("|") for line in (header_line, separator))


def parse_table(text: str, strict: bool = True) -> Table:
    """The first markdown table in ``text``.

    With ``strict`` (the filter's rule) every row and the separator must have the
    header's cell count, else ``TableError('ragged_rows')``; without it short rows
    are padded with empty cells and long ones cut.
    """
    return split_around_table(text, strict)[1]


def split_around_table(text: str, strict: bool = True) -> tuple[str, Table, str]:
    """``(text before the table, the table, text after it)``; see ``parse_table``."""
    raw = str(text).replace("\r\n", "\n").split("\n")
    lines = [line.strip().strip("`").strip() for line in raw]
    start = _find_start(lines)
    outer = _uses_outer_pipes(lines[start], lines[start + 1])
    header = tuple(_split_cells(lines[start], outer))
    if strict and len(_split_cells(lines[start + 1], outer)) != len(header):
        raise TableError("ragged_rows", "the separator line does not match the header's cell count")
    rows = []
    end = start + 2
    for line in lines[start + 2 :]:
        if not _has_pipe(line):
            break
        rows.append(_fit(tuple(_split_cells(line, outer)), len(header), strict))
        end += 1
    before, after = "\n".join(raw[:start]).strip(), "\n".join(raw[end:]).strip()
    return before, Table(header, tuple(rows)), after


def _fit(row: tuple[str, ...], width: int, strict: bool) -> tuple[str, ...]:
    if len(row) == width:
        return row
    if strict:
        raise TableError("ragged_rows", f"a row has {len(row)} cells, the header {width}")
    return (row + ("",) * width)[:width]


def table_from_json(data: dict) -> Table:
    """A table from ``{"header": [...], "rows": [[...]]}`` (a structured-output answer).

    The same object under a ``"table"`` key is accepted too.
    """
    if isinstance(data, dict) and isinstance(data.get("table"), dict):
        data = data["table"]
    if not isinstance(data, dict) or not isinstance(data.get("header"), list) or not isinstance(data.get("rows"), list):
        raise TableError("no_table", "the JSON answer has no 'header' and 'rows' lists")
    rows = [row for row in data["rows"] if isinstance(row, list)]
    return Table(tuple(clean_cell(c) for c in data["header"]), tuple(tuple(clean_cell(c) for c in row) for row in rows))
