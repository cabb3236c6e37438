"""The seed tasks: well-formed, diverse, and no near-copy of the InstructIE test set."""

from collections import Counter

import orjson
import pytest
from rouge_score import rouge_scorer

from odie_async.paths import config_dir, shared_dir
from odie_async.tables import parse_table

FIELDS = ("id", "category", "domain", "instruction", "text", "table", "explanation")
SEEDS = [orjson.loads(line) for line in (config_dir() / "seeds/seed_tasks.jsonl").read_bytes().splitlines() if line.strip()]
SCORER = rouge_scorer.RougeScorer(["rougeL"])


def test_every_seed_is_complete_and_ids_are_unique():
    assert len(SEEDS) >= 20
    for seed in SEEDS:
        assert all(isinstance(seed.get(f), str) and seed[f].strip() for f in FIELDS), seed.get("id")
    assert len({s["id"] for s in SEEDS}) == len(SEEDS)


def test_both_categories_and_many_domains():
    categories = Counter(s["category"] for s in SEEDS)
    assert set(categories) == {"fixed header", "open header"}
    assert categories["open header"] >= 8
    assert len({s["domain"] for s in SEEDS}) >= 16


@pytest.mark.parametrize("seed", SEEDS, ids=[s["id"] for s in SEEDS])
def test_every_seed_table_parses_with_consistent_cells(seed):
    table = parse_table(seed["table"])
    assert len(table.header) >= 2 and table.rows
    assert all(len(row) == len(table.header) for row in table.rows)


def _tokens(text: str) -> list[str]:
    return SCORER._tokenizer.tokenize(text)


def _max_rouge_l(seed_texts: list[str], test_texts: list[str]) -> float:
    """The highest ROUGE-L F over all pairs, exact whenever it is at least 0.3.

    F = 2·LCS/(m+n) and LCS ≤ the multiset overlap, so pairs whose bag-of-words
    bound is below 0.3 (or below the best so far) cannot matter and are skipped.
    """
    best = 0.0
    test_bags = [(t, Counter(_tokens(t)), len(_tokens(t))) for t in test_texts]
    for seed_text in seed_texts:
        bag, n = Counter(_tokens(seed_text)), len(_tokens(seed_text))
        for text, other, m in test_bags:
            if 2 * sum((bag & other).values()) / max(1, n + m) < max(best, 0.3):
                continue
            best = max(best, SCORER.score(text, seed_text)["rougeL"].fmeasure)
    return best


def _test_set():
    path = shared_dir() / "instructie/test_data.json"
    if not path.exists():
        pytest.skip(f"the InstructIE test set is not at {path}")
    return orjson.loads(path.read_bytes())


def test_no_seed_instruction_is_a_near_copy_of_a_test_instruction():
    test = _test_set()
    assert _max_rouge_l([s["instruction"] for s in SEEDS], [t["instruction"] for t in test]) < 0.5


def test_no_seed_text_is_a_near_copy_of_a_test_text():
    test = _test_set()
    assert _max_rouge_l([s["text"] for s in SEEDS], [t["text"] for t in test]) < 0.5
