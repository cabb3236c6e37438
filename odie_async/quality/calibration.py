"""The calibration set: gold InstructIE test records and corruptions of them, labelled.

Each corruption is what a teacher gets wrong, made from a gold record:

- ``repeat_cell``: one body cell copied into every body cell;
- ``foreign_table``: another record's table (from another domain);
- ``swapped_instruction``: another record's instruction (from another domain);
- ``refusal``: a refusal or assistant boilerplate as the instruction;
- ``values_not_in_text``: every cell outside the first column replaced by a value
  from other records' tables that the text does not contain;
- ``header_only``: the header and separator, no body row.

Records carry ``id``, ``label`` (``gold`` or the corruption) and ``expected``
(``keep`` or ``drop``), which ``odie filter --report`` turns into precision and recall.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..evaluation.tables import Table, TableError, is_na, parse_table, render
from .semantic import lexical_support
from .text import content_stems, normalise, numbers

CORRUPTIONS = ("repeat_cell", "foreign_table", "swapped_instruction", "refusal", "values_not_in_text", "header_only")
# Phrasings unlike the patterns of configs/filter-default.yaml where possible, so the set tests them.
REFUSALS = (
    "I'm not sure I'm ready to talk about that.",
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I cannot browse the documents you mention.",
    "Unfortunately I am unable to assist with extracting this information.",
    "I cannot provide a table for this text.",
    "Sure! Here is the information you asked for.",
    "I don't feel comfortable answering that.",
    "I'm not able to do that, but feel free to ask something else.",
)


def _table(item: dict) -> Table:
    try:
        return parse_table(item["table"], strict=True)
    except TableError:
        return parse_table(item["table"], strict=False)


def _other(items: list[dict], i: int, rng: random.Random) -> dict:
    """A record of another domain than record ``i`` (any other record when none is left)."""
    pool = [x for j, x in enumerate(items) if j != i and x.get("domain") != items[i].get("domain")]
    return rng.choice(pool or [x for j, x in enumerate(items) if j != i])


def repeat_cell(items, i, rng) -> dict:
    table = _table(items[i])
    cells = [c for c in table.cells() if not is_na(c)] or table.cells() or ["N/A"]
    value = rng.choice(cells)
    return {"table": render(table.header, [[value] * table.n_columns for _ in table.rows or [()]])}


def foreign_table(items, i, rng) -> dict:
    return {"table": _other(items, i, rng)["table"]}


def swapped_instruction(items, i, rng) -> dict:
    return {"instruction": _other(items, i, rng)["instruction"]}


def refusal(items, i, rng) -> dict:
    return {"instruction": rng.choice(REFUSALS)}


def header_only(items, i, rng) -> dict:
    return {"table": render(_table(items[i]).header, [])}


def values_not_in_text(items, i, rng) -> dict:
    """Cells outside the first column become values of other tables that the text does not state."""
    text = items[i]["text"]
    text_norm, text_numbers, text_stems = normalise(text), numbers(text), set(content_stems(text))
    foreign = [c for j, x in enumerate(items) if j != i for c in _table(x).cells()
               if not is_na(c) and lexical_support(c, text_norm, text_numbers, text_stems) is not True]
    table = _table(items[i])
    rows = [[row[0]] + [rng.choice(foreign) for _ in row[1:]] for row in table.rows]
    return {"table": render(table.header, rows)}


MAKERS: dict[str, Callable] = {name: globals()[name] for name in CORRUPTIONS}


def build(items: list[dict], per_corruption: int | None = None, seed: int = 0) -> list[dict]:
    """Every gold record, and ``per_corruption`` corruptions of each kind (all records when None)."""
    rng = random.Random(seed)
    out = []
    keep = ("instruction", "text", "table", "category", "domain")
    for i, item in enumerate(items):
        out.append({"id": f"gold-{i:03d}", "label": "gold", "expected": "keep"} | {k: item[k] for k in keep})
    for kind in CORRUPTIONS:
        chosen = sorted(rng.sample(range(len(items)), per_corruption)) if per_corruption else range(len(items))
        for i in chosen:
            record = {k: items[i][k] for k in keep} | MAKERS[kind](items, i, rng)
            out.append({"id": f"{kind}-{i:03d}", "label": kind, "expected": "drop"} | record)
    return out
