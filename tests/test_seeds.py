"""The seed tasks: well-formed, diverse, and no near-copy of the InstructIE test set."""

from collections import Counter
from itertools import combinations

import orjson
import pytest
from rouge_score import rouge_scorer

from odie_async.paths import config_dir, shared_dir
from odie_async.evaluation.tables import parse_table

FIELDS = ("id", "category", "domain", "instruction", "text", "table", "explanation")
SEEDS = [orjson.loads(line) for line in (config_dir() / "seeds/seed_tasks.jsonl").read_bytes().splitlines() if line.strip()]
SCORER = rouge_scorer.RougeScorer(["rougeL"])
NEAR_COPY = 0.5
DEDUP = 0.7  # the pipeline drops a generated instruction this close to any seen one


def test_every_seed_is_complete_and_ids_are_unique():
    assert len(SEEDS) >= 24
    for seed in SEEDS:
        assert all(isinstance(seed.get(f), str) and seed[f].strip() for f in FIELDS), seed.get("id")
    assert len({s["id"] for s in SEEDS}) == len(SEEDS)


def test_both_categories_and_many_domains():
    categories = Counter(s["category"] for s in SEEDS)
    assert set(categories) == {"fixed header", "open header"}
    assert categories["open header"] >= 8
    assert categories["fixed header"] >= categories["open header"]
    assert len({s["domain"] for s in SEEDS}) >= 16


@pytest.mark.parametrize("seed", SEEDS, ids=[s["id"] for s in SEEDS])
def test_every_seed_has_a_well_shaped_table_and_text(seed):
    table = parse_table(seed["table"])
    assert all(len(row) == len(table.header) for row in table.rows)
    assert 2 <= table.n_columns <= 6 and 2 <= table.n_rows <= 8
    assert table.na_count() <= 1
    assert 80 <= len(seed["text"].split()) <= 300


def test_seed_instructions_are_diverse():
    worst = max(SCORER.score(a["instruction"], b["instruction"])["rougeL"].fmeasure for a, b in combinations(SEEDS, 2))
    assert worst < DEDUP


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def max_rouge_l(seed_texts: list[str], test_texts: list[str], floor: float = 0.3) -> float:
    """The highest ROUGE-L F (rouge_score's tokenizer) over all pairs; exact whenever it is at least ``floor``.

    F = 2·LCS/(m+n) and LCS is at most the tokens' multiset overlap, so a pair whose
    bag-of-words bound is below ``floor`` (or the best so far) is skipped: the full
    quadratic LCS over every pair of ~300-word texts would take tens of seconds.
    """
    tokenized = [(tokens, Counter(tokens)) for tokens in map(SCORER._tokenizer.tokenize, test_texts)]
    best = 0.0
    for seed_tokens in map(SCORER._tokenizer.tokenize, seed_texts):
        bag = Counter(seed_tokens)
        for tokens, other in tokenized:
            total = len(seed_tokens) + len(tokens)
            if total and 2 * sum((bag & other).values()) / total >= max(best, floor):
                best = max(best, 2 * _lcs(seed_tokens, tokens) / total)
    return best


def test_max_rouge_l_is_rouge_scores_f_measure():
    seed, other = SEEDS[0]["text"], SEEDS[1]["text"]
    assert max_rouge_l([seed], [other], floor=0.0) == pytest.approx(SCORER.score(other, seed)["rougeL"].fmeasure)
    assert max_rouge_l([seed], [seed]) == pytest.approx(1.0)


def _test_set() -> list[dict]:
    path = shared_dir() / "instructie/test_data.json"
    if not path.exists():
        pytest.skip(f"the InstructIE test set is not at {path}, so the near-copy check cannot run")
    return orjson.loads(path.read_bytes())


@pytest.mark.parametrize("field", ["instruction", "text"])
def test_no_seed_is_a_near_copy_of_a_test_item(field):
    test = _test_set()
    assert max_rouge_l([s[field] for s in SEEDS], [t[field] for t in test]) < NEAR_COPY
