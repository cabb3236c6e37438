"""Markdown table parsing and rendering: property tests and the noise real models add."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from odie_async.evaluation.tables import Table, TableError, clean_cell, is_na, parse_table, render, table_from_json

_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x85\u2028\u2029")
cells = st.text(_CHARS, max_size=20)
tables = st.integers(min_value=1, max_value=6).flatmap(
    lambda width: st.tuples(
        st.lists(cells, min_size=width, max_size=width),
        st.lists(st.lists(cells, min_size=width, max_size=width), max_size=8),
    )
)


def _normal(header, rows) -> Table:
    return Table(tuple(clean_cell(c) for c in header), tuple(tuple(clean_cell(c) for c in r) for r in rows))


@given(tables)
def test_render_then_parse_round_trips(table):
    header, rows = table
    assert parse_table(render(header, rows)) == _normal(header, rows)


@given(tables)
def test_render_is_a_fixed_point(table):
    header, rows = table
    once = render(header, rows)
    assert parse_table(once).markdown() == once


NOISE = [
    lambda md: f"```markdown\n{md}\n```",
    lambda md: f"```\n{md}\n```\nThe table lists every item.",
    lambda md: "Table: " + md,
    lambda md: "Here is the table you asked for:\n\n" + md + "\n\nLet me know if you need more.",
    lambda md: f'"{md}"',
    lambda md: "1. " + md,
    lambda md: md + "\n\n| unrelated | second table |\n| --- | --- |",
]


@settings(max_examples=60)
@given(tables, st.sampled_from(range(len(NOISE))))
def test_parse_tolerates_what_models_wrap_tables_in(table, which):
    header, rows = table
    md = render(header, rows)
    assert parse_table(NOISE[which](md)) == _normal(header, rows)


@given(tables)
def test_table_from_json_renders_like_the_text_path(table):
    header, rows = table
    from_json = table_from_json({"header": header, "rows": rows})
    assert from_json.markdown() == render(header, rows)
    assert parse_table(from_json.markdown()) == from_json


def test_no_outer_pipes():
    assert parse_table("Name | Age\n--- | ---\nAda | 36\n\nThat is all.") == Table(("Name", "Age"), (("Ada", "36"),))


def test_alignment_colons_in_separator():
    assert parse_table("| a | b |\n|:---|---:|\n| 1 | 2 |").rows == (("1", "2"),)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("No table here, sorry.", "no_table"),
        ("| a | b |\n| 1 | 2 |", "no_table"),
        ("| a | b |\n| --- | --- |\n| 1 |", "ragged_rows"),
        ("| a | b |\n| --- |\n| 1 | 2 |", "ragged_rows"),
    ],
)
def test_strict_parse_reasons(text, reason):
    with pytest.raises(TableError) as info:
        parse_table(text)
    assert info.value.reason == reason


def test_lenient_parse_pads_and_cuts_rows():
    table = parse_table("| a | b |\n| --- | --- |\n| 1 |\n| 1 | 2 | 3 |", strict=False)
    assert table.rows == (("1", ""), ("1", "2"))


def test_na_cells_counted():
    table = parse_table("| a | b |\n| --- | --- |\n| N/A | - |\n|  | Not specified. |\n| x | none |")
    assert table.na_count() == 5
    assert not is_na("Nairobi")


def test_table_from_json_rejects_other_shapes():
    with pytest.raises(TableError):
        table_from_json({"columns": ["a"]})
