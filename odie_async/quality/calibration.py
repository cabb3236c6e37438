"""The calibration set: gold InstructIE test records and corruptions of them, labelled.

Each corruption is what a teacher gets wrong, made from a gold record:

- ``repeat_cell``: one body cell copied into every body cell;
- ``foreign_table``: another record's table (from another domain);
- ``swapped_instruction``: another record's instruction (from another domain);
- ``refusal``: a refusal or assistant boilerplate as the instruction;
- ``values_not_in_text``: every cell outside the first column replaced by a value
  from other records' tables that the text does not contain;
- ``header_only``: the header and separator, no body row.

Records carry ``id``, ``label`` (``gold`` or the corruption), ``expected``
(``keep`` or ``drop``) and ``split`` (``fit`` or ``held_out``), which ``odie filter
--report`` turns into precision and recall per check and per split. A gold record
and every corruption made from it share one split (decided by the gold record's
index), so no held-out record is a variant of one the thresholds were chosen on.
``choose`` picks the score thresholds on the ``fit`` split alone.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable, Iterable

from ..evaluation.tables import Table, TableError, is_na, parse_table, render
from .semantic import lexical_support
from .text import content_stems, flat, numbers

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
    text_norm, text_numbers, text_stems = flat(text), numbers(text), set(content_stems(text))
    foreign = [c for j, x in enumerate(items) if j != i for c in _table(x).cells()
               if not is_na(c) and lexical_support(c, text_norm, text_numbers, text_stems) is not True]
    table = _table(items[i])
    rows = [[row[0]] + [rng.choice(foreign) for _ in row[1:]] for row in table.rows]
    return {"table": render(table.header, rows)}


MAKERS: dict[str, Callable] = {name: globals()[name] for name in CORRUPTIONS}


def split_of(index: int) -> str:
    """``fit`` or ``held_out`` for the gold record at ``index`` (about half each, fixed by a digest of the index)."""
    return "fit" if hashlib.blake2b(str(index).encode(), digest_size=1).digest()[0] % 2 == 0 else "held_out"


def build(items: list[dict], per_corruption: int | None = None, seed: int = 0) -> list[dict]:
    """Every gold record, and ``per_corruption`` corruptions of each kind (all records when None)."""
    rng = random.Random(seed)
    out = []
    keep = ("instruction", "text", "table", "category", "domain")
    for i, item in enumerate(items):
        out.append({"id": f"gold-{i:03d}", "label": "gold", "expected": "keep", "split": split_of(i)}
                   | {k: item[k] for k in keep})
    for kind in CORRUPTIONS:
        chosen = sorted(rng.sample(range(len(items)), per_corruption)) if per_corruption else range(len(items))
        for i in chosen:
            record = {k: items[i][k] for k in keep} | MAKERS[kind](items, i, rng)
            out.append({"id": f"{kind}-{i:03d}", "label": kind, "expected": "drop", "split": split_of(i)} | record)
    return out


# -- choosing thresholds on one split, measuring on the other ---------------------------------------------

SCORE_LIMITS = {"faithfulness": ("faithfulness", "min_score"), "faithfulness_open": ("faithfulness", "min_open"),
                "consistency_fixed": ("consistency", "min_fixed"), "consistency_open": ("consistency", "min_open"),
                "relevance": ("relevance", "min_score"), "belongs_fixed": ("belongs", "min_fixed"),
                "belongs_open": ("belongs", "min_open"), "columns": ("faithfulness", "min_column")}
# The thresholds ``choose`` searches; the others (the open-header consistency floor, the fixed-header
# consistency and relevance floors, which count through ``belongs``) stay as configured.
GRID = {"faithfulness": [x / 20 for x in range(6, 13)], "faithfulness_open": [x / 20 for x in range(4, 11)],
        "belongs_fixed": [x / 20 for x in range(20, 40)], "belongs_open": [x / 20 for x in range(6, 13)],
        "columns": [0.1, 0.15, 0.2, 0.25, 0.3]}


def dropped(row: dict, limits: dict[str, float]) -> bool:
    """Whether a scored row (``reasons``: the checks that need no model, ``scores``, ``fixed``) is dropped at ``limits``."""
    if row["reasons"]:
        return True
    kind = "fixed" if row["fixed"] else "open"
    pairs = (("faithfulness", limits["faithfulness" if row["fixed"] else "faithfulness_open"]),
             ("consistency", limits[f"consistency_{kind}"]), ("relevance", limits["relevance"]),
             ("belongs", limits[f"belongs_{kind}"]))
    scores = row["scores"]
    if scores.get("columns") is not None and scores["columns"] < limits["columns"]:
        return True
    return any(scores[name] is None or scores[name] < limit for name, limit in pairs if name in scores)


def shares(rows: Iterable[dict], limits: dict[str, float]) -> dict[str, float]:
    """Share kept of ``gold`` rows and share dropped of each other ``label``."""
    groups: dict[str, list[bool]] = {}
    for row in rows:
        groups.setdefault(row["label"], []).append(dropped(row, limits))
    return {label: (1 - sum(v) / len(v)) if label == "gold" else sum(v) / len(v) for label, v in groups.items()}


def choose(rows: list[dict], targets: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """The ``GRID`` thresholds (over ``base``, the others) whose worst margin over ``targets`` (label -> share)
    is largest on ``rows``.

    Ties go to the thresholds keeping more gold records. Only ``rows`` are seen: pass the fit split.
    """
    def margin(limits: dict[str, float]) -> tuple[float, float]:
        got = shares(rows, limits)
        return min(got.get(label, 1.0) - target for label, target in targets.items()), got.get("gold", 0.0)

    names = list(GRID)
    grid = (base | dict(zip(names, values)) for values in itertools.product(*(GRID[n] for n in names)))
    return max(grid, key=margin)


def precision_recall(rows: Iterable[tuple[bool, bool]]) -> dict[str, float | int | None]:
    """Precision and recall of drops (a drop is a positive) over ``(dropped, should_drop)`` pairs."""
    rows = list(rows)
    tp = sum(d and want for d, want in rows)
    fp = sum(d and not want for d, want in rows)
    fn = sum(want and not d for d, want in rows)
    return {"records": len(rows), "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None}


def check_of(reason: str) -> str:
    """The check a reason belongs to: ``instruction.refusal`` -> ``instruction``."""
    return reason.split(".", 1)[0]


def labelled_figures(lines: list[tuple[bool, dict]], field: str = "expected") -> dict | None:
    """Per check and per ``split``: precision and recall of the drops against the ``field`` labels (keep/drop).

    A check's precision is the share of the records it flagged that should be dropped; its recall the share of
    the records that should be dropped that it flagged. None when no line carries a label.
    """
    labelled = [(kept, line) for kept, line in lines if line.get(field) in ("keep", "drop")]
    if not labelled:
        return None
    checks = sorted({check_of(r) for _, line in labelled for r in line.get("reasons") or []})
    per_check = {check: precision_recall((any(check_of(r) == check for r in line.get("reasons") or []),
                                          line[field] == "drop") for _, line in labelled) for check in checks}
    splits = sorted({str(line["split"]) for _, line in labelled if line.get("split")})
    by_split = {name: precision_recall((not kept, line[field] == "drop") for kept, line in labelled
                                       if str(line.get("split")) == name) for name in splits}
    return {"per_check": per_check, "by_split": by_split}


def format_figures(figures: dict) -> list[str]:
    """``labelled_figures`` as lines for a terminal."""
    def pr(f: dict) -> str:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        return f"precision {fmt(f['precision'])}, recall {fmt(f['recall'])} ({f['records']} records)"

    lines = [f"  {check:<14} {pr(f)}" for check, f in figures["per_check"].items()]
    lines = ["per check (drops it made against the labels):"] + lines
    lines += [f"split {name}: {pr(f)}" for name, f in figures["by_split"].items()]
    return lines
