"""The quality gate: every check, the verdicts, `odie filter` (exactly one file per record, resume), the report."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import orjson
import pytest

from odie_async.cli import main as odie
from odie_async.evaluation.tables import parse_table
from odie_async.exceptions import ConfigError, DuplicateIdError, InputError
from odie_async.quality import Gate, load_gate_config
from odie_async.quality.calibration import CORRUPTIONS, build, choose, labelled_figures, shares, split_of
from odie_async.quality.checks import (degenerate_reasons, few_shot_values, instruction_reasons, leakage_reasons, parse,
                                       structure_reasons, text_reasons, truncation_reasons)
from odie_async.quality.gate_config import from_section
from odie_async.quality.filtering import filter_file
from odie_async.quality.semantic import lexical_support, worst_column
from odie_async.quality.text import content_stems, flat, normalise, numbers
from odie_async.runtime import run_async

CFG = load_gate_config()
TEXT = ("The city council reviewed three venues on Monday. The Harbor Hall opened in 1998 and seats 1,200 people. "
        "The Elm Street Theatre, which opened in 1955, seats 430. The newest, Northgate Arena, opened in 2019.")
INSTRUCTION = "Extract the name, opening year and seating capacity of each venue mentioned in the article."
TABLE = ("| Name | Opening Year | Seating Capacity |\n| --- | --- | --- |\n| Harbor Hall | 1998 | 1,200 |\n"
         "| Elm Street Theatre | 1955 | 430 |\n| Northgate Arena | 2019 | N/A |")
GOOD = {"instruction": INSTRUCTION, "text": TEXT, "table": TABLE, "category": "fixed header"}


class BagEmbedder:
    """Unit bag-of-words vectors (hashed words): cosine 1 for the same words, 0 for disjoint ones."""

    def encode(self, texts):
        rows = np.zeros((len(texts), 4096), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                rows[i, zlib.crc32(word.encode()) % 4096] += 1
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


def table(markdown: str):
    return parse_table(markdown, strict=False)


# -- instruction and text -----------------------------------------------------------------------


@pytest.mark.parametrize("instruction, reason", [
    ("I'm not sure I'm ready to talk about that.", "instruction.refusal"),
    ("I'm sorry, but I cannot help with that request.", "instruction.refusal"),
    ("As an AI language model, I can not read documents.", "instruction.refusal"),
    ("Sure! Extract the names of the venues.", "instruction.refusal"),
    ("Extract the ... of each venue.", "instruction.placeholder"),
    ("N/A", "instruction.placeholder"),
    ("Extract the [ATTRIBUTE] of each venue.", "instruction.placeholder"),
    ("Venues, please.", "instruction.too_short"),
    ("The weather was lovely in the city that spring and everybody went out.", "instruction.statement"),
    ("Sarah opened the Harbor Hall with her friends.", "instruction.statement"),
    # what the embedded model's paraphrases said: none of them asks for anything
    ("This document offers a wide range of financial planning services.", "instruction.describes_text"),
    ("The article describes three venues and when they opened.", "instruction.describes_text"),
    ("This is a request to provide the most recent version of the report.", "instruction.meta"),
    ("Here is a rewritten version of the instruction about the venues.", "instruction.meta"),
    ("The Harbor Hall opened in 1998 and seats 1,200 people. Extract it.", "instruction.copies_text"),
])
def test_instruction_checks_name_what_is_wrong(instruction, reason):
    assert reason in instruction_reasons(instruction, TEXT, CFG.instruction)


@pytest.mark.parametrize("instruction", [
    INSTRUCTION,
    "Could you collate data from the article? We need the venues and when they opened.",
    "Here are a few incident descriptions from an insurance claim. Give me the dates and locations.",
    "Mine the reports for the venues and their capacities.",
    "Carefully check the council's notes to gather the venues and their capacities.",
    "The council reviewed venues on Monday.  I want you to extract the key details.",
    "Given the article, give me the venues and the year each opened.",
    "Which venues opened before 2000, and how many seats do they have",
])
def test_instruction_checks_pass_real_requests(instruction):
    assert instruction_reasons(instruction, TEXT, CFG.instruction) == []


def test_text_checks():
    assert text_reasons("word " * 769, CFG.text) == ["text.too_long"]
    assert text_reasons("word " * 700, CFG.text) == []
    assert text_reasons("  ", CFG.text) == ["text.empty"]


# -- table structure, degenerate tables, truncation ------------------------------------------------


@pytest.mark.parametrize("markdown, reason", [
    ("no table here", "table.no_table"),
    ("| a | b |\n| --- | --- |\n| 1 | 2 | 3 |\n| 4 | 5 |", "table.ragged_rows"),
    ("| a | b | c |\n| --- | --- | --- |\n| 1 | 2 | 3 |\n| 4 | 5", "truncation.last_row"),
])
def test_parse_reasons(markdown, reason):
    assert reason in parse(markdown)[1]


def test_a_last_row_cut_inside_its_last_cell_is_truncation():
    # the cut leaves as many cells as the header, only the closing pipe is missing
    assert parse("| a | b |\n| --- | --- |\n| one | two |\n| three | fo")[1] == ["truncation.last_row"]
    assert parse("a | b\n--- | ---\none | two\nthree | four")[1] == []  # a table written without outer pipes


def test_a_separator_with_the_wrong_cell_count_alone_is_forgiven():
    parsed, reasons = parse("| a | b | c |\n| --- | --- |\n| 1 | 2 | 3 |\n| 4 | 5 | 6 |")
    assert reasons == [] and parsed.n_columns == 3 and parsed.n_rows == 2


@pytest.mark.parametrize("markdown, reason", [
    ("|  |  |\n| --- | --- |\n| 1 | 2 |\n| 3 | 4 |", "table.empty_header"),
    ("| a | b | c |\n| --- | --- | --- |", "table.no_rows"),
    ("| a |\n| --- |\n| 1 |\n| 2 |\n| 3 |", "table.too_few_columns"),
    ("| a | b |\n| --- | --- |\n| 1 | 2 |", "table.too_small"),
    ("| a | b | c |\n| --- | --- | --- |\n| x | N/A | N/A |\n| y | - | none |", "table.too_many_na"),
])
def test_structure_checks(markdown, reason):
    assert reason in structure_reasons(table(markdown), CFG.structure)


def test_structure_checks_pass_a_sound_table():
    assert structure_reasons(table(TABLE), CFG.structure) == []


def test_the_papers_na_count_rule_is_a_setting():
    t = table("| a | b | c | d |\n| --- | --- | --- | --- |\n" + "| x | N/A | N/A | y |\n| z | N/A | N/A | w |")
    assert "table.too_many_na" not in structure_reasons(t, CFG.structure)
    paper = CFG.structure.model_copy(update={"max_na": 3})
    assert "table.too_many_na" in structure_reasons(t, paper)


@pytest.mark.parametrize("markdown, reason", [
    ("| x | x |\n| --- | --- |\n| 1 | 2 |\n| 3 | 4 |", "degenerate.duplicate_header"),
    ("| a | b |\n| --- | --- |\n| a | b |\n| 1 | 2 |\n| 3 | 4 |", "degenerate.header_in_body"),
    ("| a | b |\n| --- | --- |\n| 1 | 2 |\n| 1 | 2 |\n| 3 | 4 |", "degenerate.repeated_rows"),
    ("| a | b | c |\n| --- | --- | --- |\n| q | q | 1 |\n| q | q | 2 |\n| q | 3 | 4 |", "degenerate.repeated_value"),
    ("| a | b | c |\n| --- | --- | --- |\n| 1 | k | k |\n| 2 | m | m |\n| 3 | n | n |", "degenerate.repeating_rows"),
    ("| a | b | c |\n| --- | --- | --- |\n| 1 | k | z |\n| 2 | k | z |\n| 3 | k | z |", "degenerate.constant_columns"),
    ("| a | b | c |\n| --- | --- | --- |\n| 1 | k | z |\n| 2 | z | k |\n| 2 | k | z |\n| 1 | z | k |", "degenerate.few_distinct"),
])
def test_degenerate_checks(markdown, reason):
    assert reason in degenerate_reasons(table(markdown), CFG.degenerate)


def test_degenerate_checks_pass_a_table_with_a_repeated_category():
    t = table("| Product | Feature | Verdict |\n| --- | --- | --- |\n| Camera | Zoom | good |\n"
              "| Camera | Battery | weak |\n| Shoes | Comfort | good |\n| Shoes | Price | high |")
    assert degenerate_reasons(t, CFG.degenerate) == []
    assert degenerate_reasons(table(TABLE), CFG.degenerate) == []


def test_truncation_checks():
    cut = table("| Step | Advice |\n| --- | --- |\n| 1. Start by having a chat with a | 2. Start by having a chat with a |\n"
                "| 3. Start by having a chat with | 4. Ask the |")
    assert truncation_reasons(cut, CFG.truncation) == ["truncation.cut_cells"]
    last = table("| a | b |\n| --- | --- |\n| one | two |\n| three | four |\n| five | six |\n| seven | eight of the |")
    assert truncation_reasons(last, CFG.truncation) == ["truncation.last_row"]
    assert truncation_reasons(table(TABLE), CFG.truncation) == []


# -- faithfulness, consistency, relevance (a bag-of-words encoder stands in for the real one) ------


def test_lexical_support_reads_strings_numbers_and_words():
    norm, nums, stems = flat(TEXT), numbers(TEXT), set(content_stems(TEXT))
    assert lexical_support("Harbor Hall", norm, nums, stems) is True
    assert lexical_support("1,200", norm, nums, stems) is True
    assert lexical_support("1,300", norm, nums, stems) is False  # a number the text does not hold
    assert lexical_support("Harbour Halls", norm, nums, stems) is None  # for the encoder
    assert numbers("at 3:15 am, six of them, the third") >= {"3.15", "6", "3"}


@pytest.mark.parametrize("cell, text", [
    ("1.2k", "It seats 1,200 people."),
    ("$1.2 million", "The roof cost 1,200,000 dollars."),
    ("1200", "It seats 1.2 thousand people."),
    ("3.50", "A ticket costs 3.5 euros."),
    ("2022-02-19", "The council met on February 19, 2022."),
    ("19 Feb 2022", "The council met on 2022-02-19."),
    ("Feb. 2022", "The council met on 19 February 2022."),
])
def test_numbers_and_dates_are_compared_in_any_format(cell, text):
    assert lexical_support(cell, flat(text), numbers(text), set(content_stems(text))) is True


@pytest.mark.parametrize("cell, text", [
    ("1.3k", "It seats 1,200 people."),
    ("2022-02-20", "The council met on February 19, 2022."),
    ("March 2022", "The council met on 19 February 2022."),
])
def test_a_number_or_date_the_text_does_not_hold_is_unsupported(cell, text):
    assert lexical_support(cell, flat(text), numbers(text), set(content_stems(text))) is False


def test_a_cell_copied_from_a_few_shot_example_is_leakage():
    value = max(few_shot_values(CFG.leakage.seeds, CFG.leakage.min_chars), key=len)  # a value of a seed table
    leaky = table(TABLE.replace("Northgate Arena", value.title()))
    assert leakage_reasons(leaky, TEXT, CFG.leakage) == ["leakage.few_shot"]
    assert leakage_reasons(leaky, TEXT + f" {value}.", CFG.leakage) == []  # the text holds it: no leak
    assert leakage_reasons(table(TABLE), TEXT, CFG.leakage) == []
    verdict = gate(faithfulness={"enabled": False}).evaluate([GOOD | {"table": leaky.markdown()}])[0]
    assert verdict.reasons == ["leakage.few_shot"]


def gate(**overrides) -> Gate:
    return Gate(load_gate_config(overrides=overrides), embedder=BagEmbedder())


def test_a_good_record_is_kept_with_every_score():
    verdict = gate().evaluate([GOOD])[0]
    assert verdict.kept and verdict.reasons == []
    assert verdict.scores["faithfulness"] == 1.0 and verdict.scores["consistency"] == 1.0
    assert verdict.scores["relevance"] > 0


def test_faithfulness_is_per_cell():
    invented = TABLE.replace("Elm Street Theatre | 1955 | 430", "Grand Opera | 1901 | 999").replace("Harbor Hall | 1998", "Blue Dome | 1877")
    verdict = gate(faithfulness={"min_score": 0.4}).evaluate([GOOD | {"table": invented}])[0]
    assert verdict.scores["faithfulness"] == pytest.approx(3 / 8) and "faithfulness.low" in verdict.reasons
    # a cell the words of which are elsewhere in a sentence counts through the encoder
    paraphrase = gate(faithfulness={"paraphrase_similarity": 0.3}).evaluate(
        [GOOD | {"table": TABLE.replace("Harbor Hall", "council venues reviewed")}])[0]
    assert paraphrase.scores["faithfulness"] == 1.0


def test_a_column_of_values_from_elsewhere_drops_a_table_whose_other_columns_hold():
    names = TABLE.replace("Harbor Hall", "Blue Dome").replace("Elm Street Theatre", "Grand Opera").replace(
        "Northgate Arena", "Red Barn")
    verdict = gate().evaluate([GOOD | {"table": names}])[0]
    assert verdict.scores["faithfulness"] == pytest.approx(5 / 8) and "faithfulness.low" not in verdict.reasons
    assert verdict.scores["columns"] == 0.0 and verdict.reasons == ["faithfulness.column"]
    numbered = ("| # | Name | Opening Year | Seating Capacity |\n| --- | --- | --- | --- |\n| 1 | Harbor Hall | 1998 | 1,200 |\n"
                "| 2 | Elm Street Theatre | 1955 | 430 |\n| 3 | Northgate Arena | 2019 | N/A |")
    kept = gate().evaluate([GOOD | {"table": numbered}])[0]  # row numbers no text states are not a column to judge
    assert kept.kept and kept.scores["columns"] == 1.0 and kept.scores["faithfulness"] < 1.0


def test_a_column_is_judged_by_how_near_the_text_its_unsupported_cells_stay():
    derived = [(0, True, None), (0, True, None), (1, False, 0.4), (1, False, 0.3), (1, True, None)]
    assert worst_column(derived) == pytest.approx(0.35)
    assert worst_column([(0, True, None), (0, False, 0.1)]) == 1.0  # half unsupported is not most
    assert worst_column([(0, False, 0.1), (-1, False, 0.0), (-1, False, 0.0)]) == 1.0  # one cell; row numbers
    assert worst_column([(2, False, None), (2, False, 0.1)]) is None  # no encoder: no verdict


def test_consistency_for_fixed_and_open_headers():
    off_topic = "| Colour | Weight | Smell |\n| --- | --- | --- |\n| Harbor Hall | 1998 | 1,200 |\n| Northgate Arena | 2019 | 430 |"
    fixed = gate().evaluate([GOOD | {"table": off_topic}])[0]
    assert fixed.scores["consistency"] < 0.3 and "consistency.low" in fixed.reasons
    opened = gate().evaluate([GOOD | {"category": "open header", "table": off_topic}])[0]
    assert "consistency.low" in opened.reasons
    assert gate().evaluate([GOOD | {"category": "open header"}])[0].scores["consistency"] is not None


def test_relevance_drops_an_instruction_about_something_else():
    other = "Count planets having moons or rings?"
    verdict = gate(relevance={"min_score": 0.05}).evaluate([GOOD | {"instruction": other}])[0]
    assert verdict.scores["relevance"] < 0.05 and "relevance.low" in verdict.reasons
    assert "belongs.low" in gate().evaluate([GOOD | {"instruction": other}])[0].reasons  # the default's floor


def test_an_instruction_must_belong_to_its_text_and_header_together():
    """Consistency and relevance each above their floor, their sum with the header similarity (``belongs``) below its own."""
    half = "Extract the name and opening year of each venue and the colour of its roof."
    floors = {"consistency": {"min_fixed": 0.45}, "relevance": {"min_score": 0.05}, "belongs": {"min_fixed": 1.3}}
    verdict = gate(**floors).evaluate([GOOD | {"instruction": half}])[0]
    scores = verdict.scores
    assert scores["consistency"] >= 0.45 and scores["relevance"] >= 0.05
    assert scores["belongs"] == pytest.approx(scores["consistency"] + scores["relevance"] + scores["header"], abs=1e-3)
    assert verdict.reasons == ["belongs.low"]
    opened = gate(**floors).evaluate([GOOD | {"instruction": half, "category": "open header"}])[0].scores
    assert "header" not in opened and opened["belongs"] == pytest.approx(opened["consistency"] + opened["relevance"], abs=1e-3)
    assert gate(**floors).evaluate([GOOD])[0].kept
    assert "belongs" not in gate(belongs={"enabled": False}).evaluate([GOOD | {"instruction": half}])[0].scores


def test_a_check_that_cannot_run_is_a_reason_and_one_switched_off_is_named():
    all_na = "| Name | Opening Year | Seating Capacity |\n| --- | --- | --- |\n| N/A | N/A | N/A |\n| - | - | - |"
    verdict = gate(structure={"enabled": False}).evaluate([GOOD | {"table": all_na}])[0]
    assert "faithfulness.not_run" in verdict.reasons and verdict.scores["faithfulness"] is None
    no_table = gate().evaluate([GOOD | {"table": "nothing"}])[0]
    assert {"table.no_table", "faithfulness.not_run", "consistency.not_run"} <= set(no_table.reasons)
    off = gate(consistency={"enabled": False})
    verdict = off.evaluate([GOOD | {"table": "nothing"}])[0]
    assert "consistency" not in verdict.scores and not any(r.startswith("consistency") for r in verdict.reasons)
    assert off.cfg.switched_off() == ["consistency"]


def test_every_failed_check_is_reported_not_just_the_first():
    record = {"instruction": "I'm not ready to talk about that.", "text": TEXT, "category": "open header",
              "table": "| x | x |\n| --- | --- |\n| x | x |\n| x | x |"}
    reasons = gate().evaluate([record])[0].reasons
    assert {"instruction.refusal", "degenerate.duplicate_header", "degenerate.header_in_body",
            "degenerate.repeated_rows", "belongs.low"} <= set(reasons)


def test_another_scorers_scores_replace_the_encoders_and_its_failure_is_a_reason():
    g = gate()
    prepared = g.prepare([GOOD, GOOD, GOOD])
    low, high, failed = g.finish(prepared, [{"faithfulness": 0.2, "consistency": 0.9}, {"faithfulness": 0.9, "consistency": 0.9},
                                            {"error": "request_failed:judge"}])
    assert low.reasons == ["faithfulness.low"] and low.scores["faithfulness"] == 0.2
    assert high.kept
    assert failed.reasons == ["request_failed:judge"]


# -- config ------------------------------------------------------------------------------------------


def test_config_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("faithfulness:\n  min_scor: 0.5\n")
    with pytest.raises(ConfigError, match=r"f.yaml: faithfulness.min_scor"):
        load_gate_config(path)
    path.write_text("relevance:\n  min_score: high\n")
    with pytest.raises(ConfigError, match=r"f.yaml: relevance.min_score"):
        load_gate_config(path)


def test_a_pipeline_filter_section_overrides_the_filter_file():
    cfg = from_section({"relevance": {"min_score": 0.05}, "truncation": {"enabled": False}}, "gen.yaml: filter")
    assert cfg.relevance.min_score == 0.05 and cfg.switched_off() == ["truncation"]
    assert cfg.faithfulness.min_score == CFG.faithfulness.min_score
    with pytest.raises(ConfigError, match="gen.yaml: filter"):
        from_section({"relevance": {"nope": 1}}, "gen.yaml: filter")


# -- odie filter: exactly one file per record, resume --------------------------------------------------


def records(n: int) -> list[dict]:
    bad = {"instruction": "I'm not ready to talk about that.", "category": "open header"}
    return [GOOD | {"id": f"r{i}", "extra": i} | (bad if i % 3 == 0 else {}) for i in range(n)]


def lines(path):
    return [orjson.loads(raw) for raw in path.read_bytes().splitlines()] if path.exists() else []


def run_filter(src, tmp_path, **kwargs):
    return run_async(filter_file(src, tmp_path / "kept.jsonl", tmp_path / "dropped.jsonl", gate(), progress=False,
                                 handle_signals=False, **kwargs))


def test_every_record_lands_in_exactly_one_file_with_its_fields(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records(10)))
    stats = run_filter(src, tmp_path, batch_size=3)
    kept, dropped = lines(tmp_path / "kept.jsonl"), lines(tmp_path / "dropped.jsonl")
    assert sorted(x["id"] for x in kept + dropped) == sorted(f"r{i}" for i in range(10))
    assert {x["id"] for x in dropped} == {"r0", "r3", "r6", "r9"} and stats.kept == 6 and stats.dropped == 4
    assert all(x["extra"] == int(x["id"][1:]) and "scores" in x for x in kept + dropped)
    assert all("reasons" not in x for x in kept) and all("instruction.refusal" in x["reasons"] for x in dropped)


def test_a_rerun_resumes_and_judges_only_what_is_not_written(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(records(9)))  # a JSON array
    run_filter(src, tmp_path, batch_size=4)
    kept_path = tmp_path / "kept.jsonl"
    whole = lines(kept_path) + lines(tmp_path / "dropped.jsonl")
    # as if stopped mid-way: keep the first two kept lines and a torn third one
    kept_bytes = kept_path.read_bytes().splitlines(keepends=True)
    kept_path.write_bytes(b"".join(kept_bytes[:2]) + kept_bytes[2][:20])
    stats = run_filter(src, tmp_path)
    again = lines(kept_path) + lines(tmp_path / "dropped.jsonl")
    assert stats.resumed == 2 + len(lines(tmp_path / "dropped.jsonl")) - stats.dropped
    assert stats.done == 9 - stats.resumed
    assert sorted(x["id"] for x in again) == sorted(x["id"] for x in whole)  # each once, none lost
    assert run_filter(src, tmp_path).done == 0


def test_records_without_an_id_are_keyed_by_line(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [dict(GOOD), GOOD | {"instruction": "N/A"}, dict(GOOD)]
    src.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    run_filter(src, tmp_path)
    got = lines(tmp_path / "kept.jsonl") + lines(tmp_path / "dropped.jsonl")
    assert sorted(x["source_line"] for x in got) == [1, 2, 3]
    assert run_filter(src, tmp_path).done == 0


@pytest.mark.parametrize("content, match", [
    (b'{"instruction": "a", "text": "b", "table": "c"}\n{"instruction": \n', r"in.jsonl:2: not valid JSON"),
    (b'{"instruction": "a", "text": "b"}\n', r"in.jsonl:1: field 'table' is missing"),
    (b'{"instruction": "a", "text": 3, "table": "c"}\n', r"in.jsonl:1: field 'text' must be a string"),
    (b'[1, 2]', r"in.jsonl:1: expected a JSON object"),
])
def test_bad_input_names_file_and_line_before_anything_is_written(tmp_path, content, match):
    src = tmp_path / "in.jsonl"
    src.write_bytes(content)
    with pytest.raises(InputError, match=match):
        run_filter(src, tmp_path)
    assert not (tmp_path / "kept.jsonl").exists()


def test_a_duplicate_id_names_both_lines(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(GOOD | {"id": i}) + b"\n" for i in (1, 2, 1)))
    with pytest.raises(DuplicateIdError, match=r"in.jsonl:3: duplicate custom_id '1' \(first seen on line 1\)"):
        run_filter(src, tmp_path)


def test_odie_filter_command_summary_report_and_exit_codes(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r | {"expected": "drop" if i % 3 == 0 else "keep", "label": "x",
                                               "split": "fit" if i < 3 else "held_out"}) + b"\n"
                             for i, r in enumerate(records(6))))
    config = tmp_path / "lexical.yaml"  # the checks that need no encoder, so the command runs in a blink
    config.write_text("faithfulness: {enabled: false}\nconsistency: {enabled: false}\nrelevance: {enabled: false}\n")
    args = [str(src), "--kept", str(tmp_path / "k.jsonl"), "--dropped", str(tmp_path / "d.jsonl"),
            "--config", str(config), "--no-progress", "--report", str(tmp_path / "report")]
    assert odie(["filter", *args]) == 0
    out = capsys.readouterr().out
    assert "kept 4 of 6, dropped 2" in out and "instruction.refusal" in out
    assert "checks off: faithfulness, consistency, relevance" in out
    assert "instruction    precision 1.000, recall 1.000 (6 records)" in out  # per check
    assert "split fit: precision 1.000, recall 1.000 (3 records)" in out and "split held_out:" in out
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["labels"]["drop_precision"] == 1.0 and summary["labels"]["drop_recall"] == 1.0
    assert summary["reasons"]["instruction.refusal"] == 2 and (tmp_path / "report" / "report.png").stat().st_size > 1000
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": 1}\n')
    assert odie(["filter", str(bad), "--kept", str(tmp_path / "k2.jsonl"), "--dropped", str(tmp_path / "d2.jsonl")]) == 2
    assert "bad.jsonl:1:" in capsys.readouterr().err and not (tmp_path / "k2.jsonl").exists()


# -- the calibration set ------------------------------------------------------------------------------


def test_corruptions_break_what_they_claim():
    items = [GOOD | {"domain": "news"},
             {"instruction": "List the planets and their moons.", "category": "fixed header", "domain": "space",
              "text": "Mars has two moons, Phobos and Deimos. Jupiter has 95 known moons.",
              "table": "| Planet | Moons |\n| --- | --- |\n| Mars | 2 |\n| Jupiter | 95 |"}]
    made = {r["id"]: r for r in build(items, seed=1)}
    assert len(made) == 2 * (1 + len(CORRUPTIONS)) and made["gold-000"]["expected"] == "keep"
    assert len(set(table(made["repeat_cell-000"]["table"]).cells())) == 1
    assert made["foreign_table-000"]["table"] == items[1]["table"]
    assert made["swapped_instruction-000"]["instruction"] == items[1]["instruction"]
    assert table(made["header_only-000"]["table"]).n_rows == 0
    replaced = table(made["values_not_in_text-000"]["table"])
    norm, nums, stems = normalise(TEXT), numbers(TEXT), set(content_stems(TEXT))
    assert all(lexical_support(c, norm, nums, stems) is not True for row in replaced.rows for c in row[1:])
    assert all(r["expected"] == "drop" for k, r in made.items() if not k.startswith("gold"))


def test_a_gold_record_and_its_corruptions_share_one_split():
    planets = {"instruction": "List the planets and their moons.", "category": "fixed header", "domain": "space",
               "text": "Mars has two moons, Phobos and Deimos. Jupiter has 95 known moons.",
               "table": "| Planet | Moons |\n| --- | --- |\n| Mars | 2 |\n| Jupiter | 95 |"}
    items = [(GOOD if i % 2 else planets) | {"domain": f"d{i}"} for i in range(40)]
    made = build(items, seed=3)
    for record in made:
        assert record["split"] == split_of(int(record["id"].rsplit("-", 1)[1]))
    assert 10 < sum(r["split"] == "fit" for r in made if r["label"] == "gold") < 30


def test_thresholds_are_chosen_on_the_rows_given_and_figures_reported_per_split_and_check():
    def row(label, faithfulness, split="fit"):
        return {"label": label, "split": split, "reasons": [], "fixed": True,
                "scores": {"faithfulness": faithfulness, "consistency": 1.0, "relevance": 0.5, "belongs": 1.5}}

    fit = [row("gold", 0.8), row("gold", 0.9), row("values_not_in_text", 0.5), row("values_not_in_text", 0.55)]
    base = {"consistency_fixed": 0.45, "consistency_open": 0.1, "relevance": 0.05}
    limits = choose(fit, {"gold": 0.93, "values_not_in_text": 0.95}, base)
    assert 0.55 < limits["faithfulness"] <= 0.8
    assert shares(fit, limits) == {"gold": 1.0, "values_not_in_text": 1.0}
    held = [row("gold", 0.4, "held_out"), row("values_not_in_text", 0.3, "held_out")]
    assert shares(held, limits)["gold"] == 0.0  # the held-out gold record the fit split never saw
    lines = [(True, {"expected": "keep", "split": "fit"}),
             (False, {"expected": "drop", "split": "fit", "reasons": ["instruction.refusal", "belongs.low"]}),
             (False, {"expected": "keep", "split": "held_out", "reasons": ["belongs.low"]}),
             (True, {"expected": "drop", "split": "held_out"})]
    figures = labelled_figures(lines)
    assert figures["by_split"]["fit"] == {"records": 2, "precision": 1.0, "recall": 1.0}
    assert figures["by_split"]["held_out"] == {"records": 2, "precision": 0.0, "recall": 0.0}
    assert figures["per_check"]["belongs"] == {"records": 4, "precision": 0.5, "recall": 0.5}
    assert figures["per_check"]["instruction"] == {"records": 4, "precision": 1.0, "recall": 0.5}


# -- the records the embedded model's run kept before the gate ---------------------------------------


GARBAGE = Path(__file__).parent / "data" / "garbage_kept_by_default_run.jsonl"  # copied from ../shared/instructie


def test_the_garbage_the_default_run_kept_is_dropped_by_the_checks_that_need_no_model():
    garbage = [orjson.loads(raw) for raw in GARBAGE.read_bytes().splitlines()]
    lexical = Gate(load_gate_config(overrides={"faithfulness": {"enabled": False}, "consistency": {"enabled": False},
                                                "relevance": {"enabled": False}}))
    verdicts = lexical.evaluate(garbage)
    assert len(verdicts) == 4 and not any(v.kept for v in verdicts)
    assert all("instruction.refusal" in v.reasons for v in verdicts[:3])
    assert {"degenerate.repeated_value", "degenerate.header_in_body"} <= set(verdicts[0].reasons)
    assert "degenerate.repeating_rows" in verdicts[1].reasons and "truncation.cut_cells" in verdicts[2].reasons
    # the fresh clone's record: a statement about a document, paraphrased from another record's instruction
    assert "instruction.describes_text" in verdicts[3].reasons and "text.empty" not in verdicts[3].reasons


@pytest.mark.slow
def test_the_garbage_the_default_run_kept_survives_no_part_of_the_real_gate(tmp_path):
    stats = run_async(filter_file(GARBAGE, tmp_path / "k.jsonl", tmp_path / "d.jsonl", Gate(CFG), progress=False,
                                  handle_signals=False))
    dropped = lines(tmp_path / "d.jsonl")
    assert stats.kept == 0 and len(dropped) == 4 and not (tmp_path / "k.jsonl").read_bytes()
    for line in dropped:  # every check ran: each score is there
        assert {"faithfulness", "columns", "consistency", "relevance", "belongs"} <= set(line["scores"])
        assert all(value is not None for value in line["scores"].values())


# -- odie export -----------------------------------------------------------------------------------------


def test_odie_export_writes_one_split_as_parquet_and_to_disk(tmp_path, capsys):
    import datasets

    from odie_async.pipeline.export import FILES

    def line(rid, variant):
        return {"id": f"{rid}-{variant}", "record_id": rid, "variant": variant, "messages": [{"role": "user", "content": "x"}],
                "instruction": "i", "original_instruction": "o", "domain": "d", "category": "open header",
                "source_text": "t", "table": "| a | b |", "explanation": "why" if variant == "cot" else "",
                "scores": {"faithfulness": 1.0, "consistency": None, "relevance": 0.5}}

    run = tmp_path / "run"
    run.mkdir()
    for variant, name in FILES.items():
        (run / name).write_bytes(b"".join(orjson.dumps(line(r, variant)) + b"\n" for r in ("f1", "o1")))
    assert odie(["export", str(run), "--parquet", "--save-to-disk"]) == 0
    assert "4 records" in capsys.readouterr().out
    from_parquet = datasets.load_dataset("parquet", data_files=str(run / "dataset.parquet"), split="train",
                                         cache_dir=str(tmp_path / "cache"))
    from_disk = datasets.load_from_disk(str(run / "dataset"))
    for split in (from_parquet, from_disk):
        assert sorted(split["id"]) == ["f1-cot", "f1-plain", "o1-cot", "o1-plain"]
        assert sorted(set(split["variant"])) == ["cot", "plain"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert odie(["export", str(empty), "--parquet"]) == 2
    assert "no records to export" in capsys.readouterr().err


@pytest.mark.slow  # loads the sentence encoder for the record the judge is not asked about
def test_odie_filter_with_the_llm_judge_of_a_pipeline_config(tmp_path, capsys):
    """The judge (here the in-process mock teacher of generate-mock.yaml) scores what the cheap checks pass."""
    src = tmp_path / "in.jsonl"
    refusal = GOOD | {"id": "r", "instruction": "I'm not ready to talk about that."}
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in (GOOD | {"id": "g"}, refusal)))
    config = tmp_path / "no-encoder.yaml"
    config.write_text("relevance: {enabled: false}\n")
    args = ["filter", str(src), "--kept", str(tmp_path / "k.jsonl"), "--dropped", str(tmp_path / "d.jsonl"),
            "--config", str(config), "--scorer", "llm", "--pipeline-config", "generate-mock.yaml", "--no-progress"]
    assert odie(args) == 0
    dropped = {x["id"]: x for x in lines(tmp_path / "d.jsonl")}
    # the mock judge knows none of these columns: consistency 2 of 5 -> 0.25; every cell is in the text: 5 -> 1.0
    assert dropped["g"]["scores"] == {"faithfulness": 1.0, "consistency": 0.25} and dropped["g"]["reasons"] == ["consistency.low"]
    assert "instruction.refusal" in dropped["r"]["reasons"]  # scored by the encoder instead
    judged = [x for x in lines(tmp_path / "k.jsonl.judge.jsonl") if x["custom_id"].startswith("judge:")]
    assert len(judged) == 1  # only the record the cheap checks passed was sent to the judge


# -- the pipeline: paraphrases the gate rejects fall back to the original -----------------------------


def test_the_pipeline_keeps_the_original_where_a_paraphrase_is_a_refusal(tmp_path):
    from odie_async.endpoints.mock_server import MockServer
    from odie_async.pipeline.run import generate

    from .pipeline_support import make_config, responder

    teacher = responder()
    teacher._paraphrase = lambda body, rng, as_json, schema: (
        json.dumps({"paraphrases": [{"id": i, "request": "I'm not ready to talk about that."}
                                    for i in schema["properties"]["paraphrases"]["items"]["properties"]["id"]["enum"]]})
        if as_json else "\n".join(f"{n}. I'm not ready to talk about that." for n in range(1, 11)))

    async def go():
        async with MockServer(responder=teacher) as server:
            config = make_config(tmp_path, structured="on", records=6)
            config.endpoint.base_url = server.base_url
            return await generate(config, tmp_path / "out", show_progress=False, handle_signals=False)

    summary = run_async(go())
    assert summary["stages"]["paraphrase"]["rejected_kept_original"] == 6
    exported = [orjson.loads(raw) for name in ("train.jsonl", "train_cot.jsonl", "dropped.jsonl")
                for raw in (tmp_path / "out" / name).read_bytes().splitlines()]
    assert exported and not any("ready to talk" in x["instruction"] for x in exported)
