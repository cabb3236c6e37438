"""The quality gate on a held-out labelled set, built by rules the calibration set never used.

    python benchmarks/bench_gate.py [--config configs/filter-default.yaml] [--seed 29] [--save FILE]

From the 150 gold InstructIE test records it builds, for every record, one
corruption of each kind below, with rules and samples of its own (other
phrasings, other sources of invented values, other records drawn) than
``odie_async.quality.calibration``'s, and runs the gate (offline scorer: the
packaged all-MiniLM-L6-v2 encoder, no network) over gold and corrupted records.
It prints the share of gold records kept (target at least 0.93) and the share of
each corruption kind dropped (target at least 0.95), and the reasons that fired.

- ``values_not_in_text``: every column but one chosen at random gets values the
  text does not hold: numbers moved to other numbers, words taken from another
  record's *text* (the calibration set takes other records' table cells);
- ``swapped_instruction``: the instruction of any record of another domain, drawn anew;
- ``refusal``: refusals and assistant boilerplate worded unlike the calibration set's;
- ``repeated_cell``: one cell (body or header) in every body cell;
- ``header_only``: the header with or without its separator line;
- ``foreign_table``: the table of any other record, of any domain;
- ``truncated_table``: the markdown cut at a random character of its last third, mid-line;
- ``duplicated_rows``: the body written twice (a teacher looping), or one row three times.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import time
from collections import Counter
from pathlib import Path

from odie_async.evaluation.tables import TableError, is_na, parse_table, render
from odie_async.paths import shared_dir
from odie_async.quality import Gate, load_gate_config
from odie_async.quality.text import words

KINDS = ("values_not_in_text", "swapped_instruction", "refusal", "repeated_cell", "header_only",
         "foreign_table", "truncated_table", "duplicated_rows")
REFUSALS = (
    "I apologize, but I won't be able to go through this document for you.",
    "That's not something I can help with right now.",
    "As a large language model, I don't have access to the document you are referring to.",
    "My apologies, this request falls outside of what I'm able to do.",
    "I'm unable to process this request.",
    "Regrettably, I must decline to extract anything from this text.",
    "Thanks for your question! Unfortunately there is no information I can give you on this.",
    "I would rather not answer this one.",
    "Sorry, I can't do that.",
    "I cannot comply with this request as it stands.",
)
GOLD_KEPT, DROPPED = 0.93, 0.95


def _table(markdown: str):
    try:
        return parse_table(markdown, strict=True)
    except TableError:
        return parse_table(markdown, strict=False)


def _numbers_moved(cell: str, text: str, rng: random.Random) -> str:
    def move(match: re.Match) -> str:
        while True:
            value = str(int(re.sub(r"\D", "", match.group())[:6] or 0) * rng.choice((3, 7, 11)) + rng.randint(13, 977))
            if value not in text:
                return value
    return re.sub(r"\d+(?:[.,]\d+)*", move, cell)


def values_not_in_text(items, i, rng):
    text, table = items[i]["text"], _table(items[i]["table"])
    known = set(words(text))
    donor = rng.choice([x for j, x in enumerate(items) if j != i])["text"]
    vocabulary = [w for w in words(donor) if w not in known and len(w) > 3 and not w.isdigit()] or ["zeppelin"]
    kept = rng.randrange(table.n_columns)

    def invent(cell: str) -> str:
        if re.search(r"\d", cell):
            return _numbers_moved(cell, text, rng)
        return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 3))).title()

    rows = [[cell if j == kept else invent(cell) for j, cell in enumerate(row)] for row in table.rows]
    return {"table": render(table.header, rows)}


def swapped_instruction(items, i, rng):
    pool = [x for x in items if x["domain"] != items[i]["domain"] and x["instruction"] != items[i]["instruction"]]
    return {"instruction": rng.choice(pool)["instruction"]}


def refusal(items, i, rng):
    return {"instruction": rng.choice(REFUSALS)}


def repeated_cell(items, i, rng):
    table = _table(items[i]["table"])
    value = rng.choice([c for c in table.cells() + list(table.header) if not is_na(c) and c.strip()] or ["x"])
    return {"table": render(table.header, [[value] * table.n_columns for _ in range(max(2, table.n_rows))])}


def header_only(items, i, rng):
    table = _table(items[i]["table"])
    markdown = render(table.header, [])
    return {"table": markdown if rng.random() < 0.5 else markdown.split("\n")[0]}


def foreign_table(items, i, rng):
    return {"table": rng.choice([x for j, x in enumerate(items) if j != i and x["table"] != items[i]["table"]])["table"]}


def truncated_table(items, i, rng):
    markdown = render(*((t := _table(items[i]["table"])).header, t.rows))
    start = len(markdown) * 2 // 3
    cuts = [k for k in range(max(start, markdown.index("\n", markdown.index("\n") + 1) + 2), len(markdown) - 1)
            if markdown[k] not in "\n|" and markdown[k - 1] != "\n"]
    return {"table": markdown[: rng.choice(cuts)] if cuts else markdown[: len(markdown) - 3]}


def duplicated_rows(items, i, rng):
    table = _table(items[i]["table"])
    rows = list(table.rows) or [tuple(table.header)]
    if len(rows) > 1 and rng.random() < 0.5:
        return {"table": render(table.header, rows + rows)}
    k = rng.randrange(len(rows))
    return {"table": render(table.header, rows[: k + 1] + [rows[k]] * 2 + rows[k + 1 :])}


MAKERS = {name: globals()[name] for name in KINDS}


def build(items: list[dict], seed: int) -> list[dict]:
    """Every gold record (label ``gold``) and one corruption of each kind per record."""
    rng = random.Random(seed)
    fields = ("instruction", "text", "table", "category", "domain")
    out = [{"id": f"gold-{i:03d}", "label": "gold"} | {k: x[k] for k in fields} for i, x in enumerate(items)]
    for kind in KINDS:
        for i, x in enumerate(items):
            out.append({"id": f"{kind}-{i:03d}", "label": kind} | {k: x[k] for k in fields} | MAKERS[kind](items, i, rng))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-data", type=Path, default=shared_dir() / "instructie" / "test_data.json")
    parser.add_argument("--config", default=None, help="filter config (default: configs/filter-default.yaml)")
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--save", type=Path, default=None, help="write the labelled set with each verdict here (JSONL)")
    args = parser.parse_args()
    items = json.loads(args.test_data.read_text(encoding="utf-8"))
    records = build(items, args.seed)
    gate = Gate(load_gate_config(args.config))
    started = time.monotonic()
    verdicts = [v for k in range(0, len(records), 64) for v in gate.evaluate(records[k : k + 64])]
    wall = time.monotonic() - started
    print(f"{len(records)} records in {wall:.1f} s on {platform.machine()}, Python {platform.python_version()}; "
          f"config {gate.cfg.source}; seed {args.seed}")
    report(records, verdicts)
    if args.save:
        with open(args.save, "w", encoding="utf-8") as handle:
            for record, verdict in zip(records, verdicts):
                handle.write(json.dumps(record | {"kept": verdict.kept, "reasons": verdict.reasons,
                                                  "scores": verdict.scores}, ensure_ascii=False) + "\n")


def report(records: list[dict], verdicts: list) -> None:
    """Print the share kept (gold) or dropped (each kind) against its target, and the reasons per kind."""
    by_label: dict[str, list] = {}
    for record, verdict in zip(records, verdicts):
        by_label.setdefault(record["label"], []).append(verdict)
    met_all = True
    print(f"{'label':<22}{'records':>8}  {'measured':>16}  {'target':>8}  met")
    for label in ("gold", *KINDS):
        group = by_label[label]
        gold = label == "gold"
        share = sum(v.kept == gold for v in group) / len(group)
        target = GOLD_KEPT if gold else DROPPED
        met_all &= share >= target
        print(f"{label:<22}{len(group):>8}  {'kept' if gold else 'dropped':>7} {share:>7.1%}  "
              f"{'≥' + format(target, '.0%'):>8}  {'yes' if share >= target else 'NO'}")
    print(f"all targets met: {met_all}")
    for label in ("gold", *KINDS):
        reasons = Counter(r for v in by_label[label] if not v.kept for r in v.reasons)
        print(f"  {label}: " + (", ".join(f"{k} {n}" for k, n in reasons.most_common(6)) or "-"))


if __name__ == "__main__":
    main()
