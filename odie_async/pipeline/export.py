"""Write the kept records as chat-format JSONL, the dropped ones with their reasons, and the summary.

``train.jsonl`` (plain tables) and ``train_cot.jsonl`` (explanation, blank line,
table) hold one object a line: ``messages`` (system, user = instruction + blank
line + text, assistant) plus ``id``, ``instruction``, ``original_instruction``,
``domain``, ``text``, ``category``, ``table`` and ``scores`` (and
``explanation`` in the CoT file). Both load with
``datasets.load_dataset("json", data_files=...)``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import orjson

from .flow import Outcome

FILES = {"plain": "train.jsonl", "cot": "train_cot.jsonl"}
DROPPED = "dropped.jsonl"
SUMMARY = "summary.json"


def _order(variants: list[str]):
    # Records finish in whatever order the endpoint answers; the export must not.
    return lambda o: (o.record.id[1:], o.record.id[0], variants.index(o.variant))


def _scores(outcome: Outcome) -> dict:
    return {"consistency": outcome.scores.get("consistency"), "faithfulness": outcome.scores.get("faithfulness")}


def training_line(outcome: Outcome, system_prompt: str) -> dict:
    """One exported record."""
    record, table = outcome.record, outcome.table.markdown()
    answer = f"{outcome.explanation}\n\n{table}" if outcome.variant == "cot" else table
    line = {
        "id": record.id,
        "messages": [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": f"{record.instruction}\n\n{record.text}"},
            {"role": "assistant", "content": answer},
        ],
        "instruction": record.instruction,
        "original_instruction": record.original_instruction,
        "domain": record.domain,
        "text": record.text,
        "category": record.category,
        "table": table,
        "scores": _scores(outcome),
    }
    if outcome.variant == "cot":
        line["explanation"] = outcome.explanation
    return line


def dropped_line(outcome: Outcome) -> dict:
    """One dropped record with the reason and the stage it left at."""
    record = outcome.record
    return {
        "id": record.id,
        "variant": outcome.variant,
        "category": record.category,
        "reason": outcome.reason,
        "stage": outcome.stage,
        "domain": record.domain,
        "instruction": record.instruction or record.original_instruction,
        "text": record.text,
        "table": outcome.table.markdown() if outcome.table is not None else None,
        "scores": _scores(outcome),
    }


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    os.replace(tmp, path)


def export(out: Path, outcomes: list[Outcome], variants: list[str], system_prompt: str) -> dict[str, str]:
    """Write the training files and ``dropped.jsonl``; return their paths."""
    ordered = sorted(outcomes, key=_order(variants))
    paths = {}
    for variant in variants:
        kept = [o for o in ordered if o.variant == variant and o.kept]
        _write_jsonl(out / FILES[variant], [training_line(o, system_prompt) for o in kept])
        paths[variant] = str(out / FILES[variant])
    _write_jsonl(out / DROPPED, [dropped_line(o) for o in ordered if not o.kept])
    paths["dropped"] = str(out / DROPPED)
    return paths


def filter_report(outcomes: list[Outcome], variants: list[str]) -> dict:
    """Per variant: records attempted, kept, yield, and the histogram of drop reasons."""
    report = {}
    for variant in variants:
        mine = [o for o in outcomes if o.variant == variant]
        kept = sum(o.kept for o in mine)
        by_category = Counter(o.record.category for o in mine if o.kept)
        report[variant] = {
            "records": len(mine),
            "kept": kept,
            "yield": round(kept / len(mine), 4) if mine else None,
            "kept_by_category": dict(sorted(by_category.items())),
            "reasons": dict(Counter(o.reason for o in mine if not o.kept).most_common()),
        }
    return report


def stage_report(counts: dict[str, Counter], modes: dict[str, str]) -> dict:
    """Per stage: requests sent, answered from the checkpoint, failed, parse share, mode."""
    report = {}
    for stage, mode in modes.items():
        c = counts.get(stage, Counter())
        judged = c["parsed"] + c["unparsable"]
        report[stage] = dict(sorted(c.items())) | {
            "parse_share": round(c["parsed"] / judged, 4) if judged else None,
            "mode": mode,
        }
    return report


def yields(counts: dict[str, Counter], filter_summary: dict, planned: int) -> dict:
    """What each step keeps of what it was given."""
    instructions = counts.get("instructions", Counter())
    out = {
        "instructions_kept_per_call": round(instructions["kept"] / instructions["calls"], 3) if instructions["calls"] else None,
        "instructions_kept_of_parsed": round(instructions["kept"] / instructions["items"], 3) if instructions["items"] else None,
    }
    for stage, c in counts.items():
        if stage != "instructions" and c["answered"]:
            out[f"{stage}_parsed_of_answered"] = round(c["parsed"] / c["answered"], 3)
    for variant, report in filter_summary.items():
        out[f"{variant}_kept_of_records"] = report["yield"]
        out[f"{variant}_kept_of_planned"] = round(report["kept"] / planned, 3) if planned else None
    return out
