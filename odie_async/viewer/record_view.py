"""What the viewer shows of one record, whatever file it came from.

The shapes: ``odie batch`` output and errors lines (``custom_id``, ``response``,
``error``), ``odie generate``'s ``train*.jsonl`` (kept) and ``dropped.jsonl``
(``reason``, ``stage``), and ``odie filter``'s kept/dropped files (``scores``,
``reasons``: a record with a non-empty ``reasons`` list is a dropped one).
"""

from __future__ import annotations

from ..engine.stats import stage_of
from ..evaluation.tables import TableError, split_around_table

FACETS = ("status", "reason", "category", "domain", "stage", "variant")
PREVIEW = 160
LIMIT = 4 << 20  # a record above this many bytes is not parsed: it is shown in raw pages
RAW_PAGE = 1 << 20


def _content(record: dict) -> str | None:
    """The assistant's answer in a batch output line."""
    try:
        return record["response"]["body"]["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None


def _message(record: dict, role: str) -> str | None:
    for message in record.get("messages") or ():
        if isinstance(message, dict) and message.get("role") == role:
            return message.get("content")
    return None


def status(record: dict, default: str = "kept") -> str:
    """``kept``, ``dropped``, ``ok`` (answered) or ``error``."""
    if isinstance(record.get("reasons"), list):
        return "dropped" if record["reasons"] else "kept"
    if record.get("reason"):
        return "dropped"
    if "custom_id" in record:
        return "error" if record.get("error") else "ok"
    return default


def reasons(record: dict) -> list[str]:
    """Why the record was dropped or failed."""
    if isinstance(record.get("reasons"), list):
        return [str(r) for r in record["reasons"]]
    if record.get("reason"):
        return [str(record["reason"])]
    error = record.get("error")
    if isinstance(error, dict) and error.get("code") is not None:
        return [str(error["code"])]
    return []


def facets(record: dict, default: str = "kept") -> dict[str, list[str]]:
    """The filterable values of one record (a field may hold several, or none)."""
    stage = record.get("stage")
    if stage is None and isinstance(record.get("custom_id"), str):
        stage = stage_of(record["custom_id"])
    values = {"status": [status(record, default)], "reason": reasons(record), "stage": [stage]}
    for name in ("category", "domain", "variant"):
        values[name] = [record.get(name)]
    return {k: [str(v) for v in vs if v is not None and not isinstance(v, (dict, list))] for k, vs in values.items()}


def _first_text(*values) -> str:
    return next((v for v in values if isinstance(v, str) and v), "")


def row(number: int, record: dict, default: str = "kept") -> dict:
    """One line of the records table."""
    f = facets(record, default)
    preview = _first_text(record.get("instruction"), record.get("original_instruction"), _content(record),
                          (record.get("error") or {}).get("message") if isinstance(record.get("error"), dict) else None,
                          _message(record, "user"))
    return {"n": number, "id": str(record.get("id") or record.get("custom_id") or number),
            **{k: ", ".join(v) for k, v in f.items()}, "preview": preview[:PREVIEW]}


def _table(markdown: str) -> tuple[str, dict | None, str]:
    """``(text before, {"header", "rows"} or None, text after)`` of a table answer."""
    try:
        before, table, after = split_around_table(markdown, strict=False)
    except (TableError, IndexError, ValueError):
        return markdown, None, ""
    return before, table.as_json(), after


def detail(number: int, record: dict, default: str = "kept") -> dict:
    """The record opened: instruction, source text, table, explanation, scores and reasons."""
    answer = _first_text(record.get("table"), _message(record, "assistant"), _content(record))
    before, table, after = _table(answer) if answer else ("", None, "")
    explanation = _first_text(record.get("explanation"), before if record.get("table") is None else "")
    error = record.get("error") if isinstance(record.get("error"), dict) else None
    return {
        "n": number, "row": row(number, record, default),
        "instruction": _first_text(record.get("instruction"), record.get("original_instruction")),
        "original_instruction": record.get("original_instruction") or "",
        "text": _first_text(record.get("text"), _message(record, "user")),
        "answer": answer, "table": table, "explanation": explanation, "after_table": after,
        "scores": record.get("scores") if isinstance(record.get("scores"), dict) else {},
        "reasons": reasons(record), "error": error, "record": record,
    }
