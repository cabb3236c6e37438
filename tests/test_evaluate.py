"""``odie eval`` without the model: reading prediction files, the table and the plots."""

from __future__ import annotations

import json

import pytest

from odie_async.evaluation.evaluate import format_table, load_predictions, plot_reports
from odie_async.exceptions import EvalError

RECORD = {
    "instruction": "List the drugs.", "text": "...", "gold": "| drug |\n|---|\n| x |",
    "output": "| drug |\n|---|\n| x |", "category": "fixed header", "difficulty": "easy",
    "source_type": "retrieve", "domain": "medicine",
}


def test_json_list_and_jsonl_read_the_same_records(tmp_path):
    records = [RECORD, {**RECORD, "output": "none"}]
    as_json, as_jsonl = tmp_path / "p.json", tmp_path / "p.jsonl"
    as_json.write_text(json.dumps(records, indent=2))
    as_jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert load_predictions(as_json) == records
    assert load_predictions(as_jsonl) == records


def test_missing_field_names_the_file_and_the_item(tmp_path):
    path = tmp_path / "p.json"
    broken = {k: v for k, v in RECORD.items() if k != "output"}
    path.write_text(json.dumps([RECORD, RECORD, broken]))
    with pytest.raises(EvalError, match=r"p\.json: item 2: missing field 'output'"):
        load_predictions(path)


def test_bad_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(RECORD) + "\n" + '{"output": "| a |", \n')
    with pytest.raises(EvalError, match=r"p\.jsonl:2: invalid JSON"):
        load_predictions(path)


def test_bad_json_list_names_the_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("[\n" + json.dumps(RECORD) + ",\n{oops}\n]")
    with pytest.raises(EvalError, match=r"p\.json:3: invalid JSON"):
        load_predictions(path)


def test_non_string_field_and_empty_file_are_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({**RECORD, "category": None}) + "\n")
    with pytest.raises(EvalError, match=r"p\.jsonl:1: field 'category' must be a string"):
        load_predictions(path)
    path.write_text("\n")
    with pytest.raises(EvalError, match="no predictions"):
        load_predictions(path)


def _report(name: str, header: float, with_generate: bool = True) -> dict:
    groups = {"category": {"fixed header": header}, "difficulty": {"easy": header},
              "source_type": {"retrieve": header, **({"generate": 1.0} if with_generate else {})}}
    return {
        "file": f"/x/{name}.json", "mode": "default", "notes": ["default mode: fixed"], "n": 1,
        "header": {"overall": header, "precision": header, "recall": header, **groups},
        "content": {"overall": 10.0, **groups},
    }


def test_table_shows_files_side_by_side_with_missing_groups_dashed():
    table = format_table([_report("one", 12.345), _report("two", 50.0, with_generate=False)])
    lines = table.splitlines()
    assert lines[0] == "mode: default"
    header_row = next(line for line in lines if line.startswith("metric"))
    assert header_row.split()[-2:] == ["one", "two"]
    overall = next(line for line in lines if line.startswith("header   overall"))
    assert overall.split()[-2:] == ["12.35", "50.00"]
    generate = next(line for line in lines if line.startswith("header   source_type=generate"))
    assert generate.split()[-2:] == ["1.00", "-"]


def test_plot_writes_one_png_per_metric(tmp_path):
    paths = plot_reports([_report("one", 20.0), _report("two", 40.0)], tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["content.png", "header.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
