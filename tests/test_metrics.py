"""Unit tests of the InstructIE metrics with a tiny fake encoder (no model loaded)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rouge_score import rouge_scorer

from odie_async.evaluation import metrics
from odie_async.evaluation.metrics import HeaderCounts, content_scores, evaluate_records, header_cells, header_counts

# Unit vectors with known dot products: a·b = 0, a·c = 0.6, b·c = 0.8, a·"" = 0.8, b·"" = 0.6.
VECTORS = {
    "a": (1.0, 0.0),
    "b": (0.0, 1.0),
    "c": (0.6, 0.8),
    "": (0.8, 0.6),
}


class FakeEncoder:
    """Looks texts up in VECTORS and records every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return np.array([VECTORS[t] for t in texts], dtype=np.float32)


def record(output: str, gold: str, category="fixed header", difficulty="easy", source_type="retrieve"):
    return {"output": output, "gold": gold, "category": category,
            "difficulty": difficulty, "source_type": source_type}


# --- header extraction -------------------------------------------------------------------------

def test_header_cells_lowercases_and_takes_the_first_table_line():
    text = "Here is the table:\n| Name | AGE |\n|---|---|\n| x | 3 |\nDone."
    assert header_cells(text) == ["name", "age"]


def test_header_cells_is_none_without_a_pipe():
    assert header_cells("I could not find any such information.") is None


def test_header_cells_span_runs_to_the_last_pipe_only():
    assert header_cells("| a | b | trailing words") == ["a", "b"]


def test_na_replacement_is_one_ordered_pass_like_the_original():
    # "| | |" becomes "| N/A | |" in one pass of str.replace; a repeat-until-stable
    # rewrite would also turn the second blank cell into N/A.
    assert header_cells("| a | | | b |") == ["a", "N/A", "| b"]
    assert metrics.replace_na("| | |", metrics.HEADER_NA_PATTERNS) == "| N/A | |"


def test_header_na_patterns_apply_after_lowercasing():
    assert header_cells("| Not Specified | NONE | - |") == ["N/A", "N/A", "N/A"]


def test_content_span_keeps_case_and_runs_to_the_end():
    text = "Table:\n| A | Not specified |\n| NOT SPECIFIED | None | tail"
    assert metrics.content_span(text) == "| A | N/A |\n| NOT SPECIFIED | N/A | tail"
    assert metrics.content_span("no table") == ""


# --- pooled soft-match arithmetic ---------------------------------------------------------------

def test_pooled_counts_follow_the_readme_formula():
    enc = FakeEncoder()
    (first, second) = header_counts([["a"], ["a", "b"]], [["a", "c"], ["c"]], enc)
    # item 1: pred a vs gold {a, c}: P_sum = 1; gold a -> 1, gold c -> 0.6: R_sum = 1.6
    assert first == HeaderCounts(pytest.approx(1.0), pytest.approx(1.6), 1, 2)
    # item 2: pred a -> 0.6, pred b -> 0.8: P_sum = 1.4; gold c -> max(0.6, 0.8) = 0.8
    assert second == HeaderCounts(pytest.approx(1.4), pytest.approx(0.8), 2, 1)
    pooled = first + second
    p, r = 100 * 2.4 / 3, 100 * 2.4 / 3
    assert pooled.precision == pytest.approx(p)
    assert pooled.recall == pytest.approx(r)
    assert pooled.f1 == pytest.approx(2 * p * r / (p + r))
    # Pooled F differs from the mean of per-item F.
    assert pooled.f1 != pytest.approx((first.f1 + second.f1) / 2)


def test_every_distinct_cell_is_encoded_once_in_one_call():
    enc = FakeEncoder()
    header_counts([["a", "b"], ["b"], ["a"]], [["a"], ["a", "c"], ["b"]], enc)
    assert len(enc.calls) == 1
    assert sorted(enc.calls[0]) == ["a", "b", "c"]


def test_empty_group_scores_zero_instead_of_dividing_by_zero():
    assert HeaderCounts(0.0, 0.0, 0, 3).f1 == 0.0
    assert HeaderCounts(0.0, 0.0, 0, 3).precision == 0.0


# --- the no-table quirk -------------------------------------------------------------------------

def test_compat_scores_a_missing_table_as_the_empty_string_vector():
    enc = FakeEncoder()
    (counts,) = header_counts([None], [["a", "b"]], enc, compat=True)
    # "" is one vector: P_sum gets its best similarity (0.8), R_sum each gold's (0.8 + 0.6),
    # yet pred_n stays 0.
    assert counts == HeaderCounts(pytest.approx(0.8), pytest.approx(1.4), 0, 2)
    assert "" in enc.calls[0]


def test_default_scores_a_missing_table_as_zero_cells():
    enc = FakeEncoder()
    (counts,) = header_counts([None], [["a", "b"]], enc, compat=False)
    assert counts == HeaderCounts(0.0, 0.0, 0, 2)
    assert "" not in enc.calls[0]


def test_missing_table_lowers_recall_in_default_but_not_in_compat():
    records = [record("| a |\n|---|\n| 1 |", "| a |\n|---|\n| 1 |"), record("no table here", "| a | b |")]
    compat = evaluate_records(records, FakeEncoder(), compat=True)["header"]
    fixed = evaluate_records(records, FakeEncoder(), compat=False)["header"]
    # compat: P = 100 (1 + 0.8) / 1, R = 100 (1 + 1.4) / 3; default: P = 100, R = 100 / 3.
    assert compat["precision"] == pytest.approx(180.0)
    assert compat["recall"] == pytest.approx(80.0)
    assert fixed["precision"] == pytest.approx(100.0)
    assert fixed["recall"] == pytest.approx(100 / 3)
    assert fixed["overall"] < compat["overall"]


# --- groups and the report -----------------------------------------------------------------------

def _grouped_records():
    return [
        record("| a |", "| a |", category="fixed header", difficulty="hard"),
        record("| b |", "| a |", category="fixed headers", difficulty="easy", source_type="generate"),
        record("| a |", "| c |", category="open header", difficulty="medium"),
    ]


def test_compat_keys_groups_exactly_as_spelled():
    groups = metrics.group_indices(_grouped_records(), compat=True)
    assert groups["category"] == {"fixed header": [0], "open header": [2], "fixed headers": [1]}
    assert list(groups["difficulty"]) == ["easy", "medium", "hard"]
    assert groups["source_type"] == {"retrieve": [0, 2], "generate": [1]}


def test_default_folds_fixed_headers_into_fixed_header():
    groups = metrics.group_indices(_grouped_records(), compat=False)
    assert groups["category"] == {"fixed header": [0, 1], "open header": [2]}


def test_report_has_the_documented_keys_and_group_scores():
    report = evaluate_records(_grouped_records(), FakeEncoder(), compat=False)
    assert set(report) == {"mode", "notes", "n", "header", "content"}
    assert report["mode"] == "default" and report["n"] == 3
    assert set(report["header"]) == {"overall", "precision", "recall", *metrics.GROUP_FIELDS}
    assert set(report["content"]) == {"overall", *metrics.GROUP_FIELDS}
    # fixed header pools items 0 (a vs a: 1) and 1 (b vs a: 0): P = R = 50.
    assert report["header"]["category"]["fixed header"] == pytest.approx(50.0)
    assert report["header"]["difficulty"]["hard"] == pytest.approx(100.0)
    assert report["content"]["category"]["fixed header"] == pytest.approx(50.0)
    assert any("'fixed headers' scored as 'fixed header'" in note for note in report["notes"])


def test_notes_name_the_mode_and_the_items_the_quirk_touches():
    records = [record("| a |", "| a |"), record("nothing", "| a |")]
    compat = evaluate_records(records, FakeEncoder(), compat=True)
    fixed = evaluate_records(records, FakeEncoder(), compat=False)
    assert compat["mode"] == "compat" and fixed["mode"] == "default"
    assert any("items 1" in note for note in compat["notes"])
    assert any("items 1" in note and "lowering recall" in note for note in fixed["notes"])


# --- content ROUGE-Lsum -------------------------------------------------------------------------

def test_rouge_lsum_treats_table_rows_as_sentences():
    gold = "| a | b |\n| c | d |"
    swapped_rows = "| c | d |\n| a | b |"
    assert content_scores([swapped_rows], [gold]) == [pytest.approx(100.0)]


def test_rouge_scores_gold_as_target_and_output_as_prediction():
    gold, output = "| d d |\n| d |\n| d a b |", "| c |\n| b d d |"
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=False)
    right = 100 * scorer.score(gold, output)["rougeLsum"].fmeasure
    wrong = 100 * scorer.score(output, gold)["rougeLsum"].fmeasure
    assert not math.isclose(right, wrong)
    assert content_scores([output], [gold]) == [pytest.approx(right)]


def test_rouge_is_zero_for_an_output_without_a_table():
    assert content_scores(["sorry, nothing found"], ["| a |\n| b |"]) == [0.0]
