"""JSON schemas of the structured stages, and the ``response_format`` that carries them.

Every array and string is bounded (``maxItems``, ``maxLength``): a small model
under an unbounded schema can repeat one cell until ``max_tokens`` runs out. A
table is one ``anyOf`` alternative per column count, so the decoder cannot
write a row with more or fewer cells than the header.
Objects are closed (``additionalProperties: false``, every property required),
as OpenAI's strict mode demands; vLLM enforces the same field with guided
decoding. ``endpoint.schema_drop`` removes keywords an endpoint rejects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import EndpointConfig, LimitsConfig

JUDGE_SCALE = [1, 2, 3, 4, 5]


def _string(max_chars: int) -> dict:
    return {"type": "string", "maxLength": max_chars}


def _object(properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _array(items: dict, low: int, high: int) -> dict:
    return {"type": "array", "items": items, "minItems": low, "maxItems": high}


def instructions_schema(limits: LimitsConfig, count: int) -> dict:
    """``{"instructions": [{"domain", "instruction"}]}``, at most ``count`` items."""
    item = _object({"domain": _string(limits.domain_chars), "instruction": _string(limits.instruction_chars)})
    return _object({"instructions": _array(item, 1, count)})


def paraphrase_schema(limits: LimitsConfig, ids) -> dict:
    """``{"paraphrases": [{"id", "request"}]}``: one item per request, each with its request's number.

    ``ids`` is the list of numbers asked for (a count ``n`` means 1..n).
    """
    ids = list(range(1, ids + 1)) if isinstance(ids, int) else list(ids)
    item = _object({"id": {"type": "integer", "enum": ids}, "request": _string(limits.instruction_chars)})
    return _object({"paraphrases": _array(item, len(ids), len(ids))})


def _fixed_width_table(limits: LimitsConfig, width: int) -> dict:
    cell = _string(limits.cell_chars)
    row = _array(cell, width, width)
    return _object({"header": row, "rows": _array(row, 1, limits.max_rows)})


def _table_property(limits: LimitsConfig) -> dict:
    """One alternative per column count: every row then has exactly the header's cell count."""
    return {"anyOf": [_fixed_width_table(limits, width) for width in range(2, max(2, limits.max_columns) + 1)]}


def table_schema(limits: LimitsConfig) -> dict:
    """``{"table": {"header": [str] × k, "rows": [[str] × k]}}`` for some k in 2..max_columns."""
    return _object({"table": _table_property(limits)})


def cot_schema(limits: LimitsConfig) -> dict:
    """``{"explanation": str, "table": {...}}``, the table as in ``table_schema``."""
    return _object({"explanation": _string(limits.explanation_chars), "table": _table_property(limits)})


def judge_schema(fields: tuple[str, ...]) -> dict:
    """One integer 1–5 per score name."""
    return _object({name: {"type": "integer", "enum": JUDGE_SCALE} for name in fields})


PROBE_SCHEMA = _object({"answer": {"type": "string", "enum": ["yes", "no"]}, "count": {"type": "integer", "enum": [3]}})


def drop_keywords(schema, keywords: frozenset[str]):
    """A copy of ``schema`` without the given keywords, at every depth."""
    if isinstance(schema, dict):
        return {k: drop_keywords(v, keywords) for k, v in schema.items() if k not in keywords or k == "properties"}
    if isinstance(schema, list):
        return [drop_keywords(v, keywords) for v in schema]
    return schema


def response_format(name: str, schema: dict, endpoint: EndpointConfig) -> dict:
    """The ``response_format`` field asking for JSON that matches ``schema``."""
    if endpoint.schema_drop:
        schema = drop_keywords(schema, frozenset(endpoint.schema_drop))
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": endpoint.strict}}
