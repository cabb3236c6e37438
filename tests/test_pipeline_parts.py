"""Pieces of the generation pipeline: parsers, de-duplication, config, seeds, filter, scorers."""

from __future__ import annotations

import orjson
import pytest
from rouge_score import rouge_scorer

from odie_async.exceptions import ConfigError, InputError
from odie_async.pipeline.config import from_dict
from odie_async.pipeline.dedup import Deduper, rouge_l, tokenize
from odie_async.pipeline.export import export
from odie_async.pipeline.flow import Outcome
from odie_async.pipeline.parsers import (
    ParseError,
    align_paraphrases,
    free_text,
    parse_cot_answer,
    parse_instruction_list,
    parse_paraphrases,
    parse_scores,
    parse_table_answer,
)
from odie_async.pipeline.prompts import FIXED, OPEN, load_seeds
from odie_async.pipeline.scorers import unieval_claims
from odie_async.pipeline.stages import Record
from odie_async.evaluation.tables import Table, TableError, parse_table

from .pipeline_support import SEEDS, write_seeds

# -- parsers ------------------------------------------------------------------------------


def test_instruction_list_from_labelled_numbered_text():
    answer = ("Sure! Here are new requests:\n\n1. Domain: Finance\nInstruction: Extract the ticker and price of each stock.\n"
              "2) **Domain:** Travel\n   **Instruction:** \"List every flight with its number and departure time.\"\n"
              "3. Instruction: Give the author and year of each book. | Domain: Literature\n\nHope this helps!")
    assert parse_instruction_list(answer) == [
        ("Finance", "Extract the ticker and price of each stock."),
        ("Travel", "List every flight with its number and departure time."),
        ("Literature", "Give the author and year of each book."),
    ]


def test_instruction_list_without_labels_and_from_json():
    assert parse_instruction_list("1. Extract the name and age of each person.\n2. ok") == [
        ("general", "Extract the name and age of each person.")]
    data = {"instructions": [{"domain": "Law", "instruction": "List each case with its court."}, {"x": 1}]}
    assert parse_instruction_list(orjson.dumps(data).decode()) == [("Law", "List each case with its court.")]
    assert parse_instruction_list("Here are two:\nList each river with its length.\nGive every city and its mayor.") == [
        ("general", "List each river with its length."), ("general", "Give every city and its mayor.")]
    with pytest.raises(ParseError):
        parse_instruction_list("I am sorry, I cannot help with that.")


def test_paraphrases_carry_their_request_numbers_in_json_and_text():
    assert parse_paraphrases("Here you go:\n2. \"Could you list X?\"\n1. Give me Y.\n") == [(2, "Could you list X?"), (1, "Give me Y.")]
    assert parse_paraphrases('```json\n{"paraphrases": [{"id": 2, "request": "a b"}, {"id": 1, "request": "c"}]}\n```') == [
        (2, "a b"), (1, "c")]
    assert parse_paraphrases("first line\nsecond line") == [(None, "first line"), (None, "second line")]
    assert parse_paraphrases('{"paraphrases": ["bare", {"id": true, "request": "x"}]}') == [(None, "bare"), (None, "x")]


def test_alignment_never_guesses_a_missing_repeated_or_unknown_number():
    items = [(3, "c"), (1, "a"), (1, "a again"), (7, "unknown"), (None, "no number")]
    found, todo = align_paraphrases(items, [1, 2, 3, 4])
    assert found == {3: "c"}
    assert todo == [1, 2, 4]
    assert align_paraphrases([(2, "b"), (1, "a")], [1, 2]) == ({2: "b", 1: "a"}, [])


def test_free_text_strips_labels_quotes_and_fences():
    assert free_text('Text: "The quick brown fox jumps."') == "The quick brown fox jumps."
    assert free_text("```\nDocument: one two three four\n```") == "one two three four"
    with pytest.raises(ParseError):
        free_text("  ", min_words=1)


def test_table_answer_json_and_markdown_agree():
    md = "| Name | Age |\n| --- | --- |\n| Ada | 36 |"
    from_json = parse_table_answer('{"header": ["Name", "Age"], "rows": [["Ada", "36"]]}')
    assert from_json == parse_table_answer("Table:\n```\n" + md + "\n```\nDone.")
    assert from_json.markdown() == md


def test_cot_answer_split_and_missing_explanation():
    explanation, table = parse_cot_answer("Explanation: the text names one person and her age.\n\nTable:\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert explanation == "the text names one person and her age."
    assert table.rows == (("1", "2"),)
    with pytest.raises(TableError):
        parse_cot_answer("| a | b |\n|---|---|\n| 1 | 2 |")
    data = {"explanation": "The request wants names.", "header": ["Name"], "rows": [["Ada"]]}
    assert parse_cot_answer(orjson.dumps(data).decode())[1] == Table(("Name",), (("Ada",),))


def test_scores_from_text_and_json():
    assert parse_scores("Consistency: 5\nFaithfulness: 3/5", ("consistency", "faithfulness")) == {
        "consistency": 1.0, "faithfulness": 0.5}
    assert parse_scores('{"faithfulness": 1}', ("faithfulness",)) == {"faithfulness": 0.0}
    with pytest.raises(ParseError):
        parse_scores("consistency: 4", ("consistency", "faithfulness"))


# -- de-duplication ------------------------------------------------------------------------


def test_rouge_l_matches_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = [("Extract the name and year of each company.", "List the name and the year of every company."),
             ("a b c d", "d c b a"), ("Same text here.", "same TEXT here")]
    for a, b in pairs:
        assert rouge_l(tokenize(a), tokenize(b)) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure)


def test_deduper_drops_near_duplicates_and_known_texts():
    dedup = Deduper(0.7, known=["Extract the name and year of each company in the report."])
    assert not dedup.add("Please extract the name and year of each company in the report.")
    assert dedup.add("Which rivers are mentioned, and how long is each?")
    assert not dedup.add("Which rivers are mentioned and how long is each one?")
    assert dedup.add("Tabulate every invoice with its total and due date.")
    assert dedup.kept == 2


# -- config and seeds ------------------------------------------------------------------------


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown key 'concurency'"):
        from_dict({"engine": {"concurency": 3}}, "x.yaml")
    with pytest.raises(ConfigError, match="stages: unknown stage 'table'"):
        from_dict({"stages": {"table": {}}}, "x.yaml")
    with pytest.raises(ConfigError, match="expected a number"):
        from_dict({"run": {"records": "ten"}}, "x.yaml")
    with pytest.raises(ConfigError, match="structured"):
        from_dict({"endpoint": {"structured": "maybe"}}, "x.yaml")


def test_config_reads_bare_off_and_splits_records():
    config = from_dict({"endpoint": {"structured": False}, "run": {"records": 11, "open_share": 0.5}})
    assert config.endpoint.structured == "off"
    assert (config.n_fixed, config.n_open) == (6, 5)
    assert from_dict({"run": {"records": 10, "open_share": 0.3}}).n_open == 3


def test_seeds_load_and_bad_lines_are_named(tmp_path):
    seeds = load_seeds(write_seeds(tmp_path))
    assert [s.category for s in seeds] == [FIXED, FIXED, OPEN]
    bad = dict(SEEDS[0], table="not a table")
    path = tmp_path / "bad.jsonl"
    path.write_bytes(orjson.dumps(SEEDS[2]) + b"\n" + orjson.dumps(bad) + b"\n")
    with pytest.raises(InputError, match=r"bad.jsonl:2: the table does not parse"):
        load_seeds(path)
    path.write_bytes(orjson.dumps(SEEDS[0]) + b"\n")
    with pytest.raises(InputError, match="no 'open header' task"):
        load_seeds(path)


# -- scorers (the gate's own checks are tested in test_quality.py) -----------------------------------


def test_unieval_claims_follow_the_paper():
    table = parse_table("| Name | Year |\n|---|---|\n| Ada | 1843 |")
    header_claims, cell_claims = unieval_claims("List names and years.", "Ada wrote it in 1843.", table)
    assert header_claims[1] == ("question: Is this claim consistent with the document? </s> claim: Extract the Year "
                                "from the given text. </s> document: List names and years.")
    assert cell_claims == ["question: Is this claim consistent with the document? </s> claim: The Year of Ada is "
                           "1843. </s> document: Ada wrote it in 1843."]


def test_unieval_needs_a_checkpoint_folder(tmp_path):
    from odie_async.pipeline.scorers import make_scorer

    config = from_dict({"scorer": {"kind": "unieval"}}, "x.yaml")
    with pytest.raises(ConfigError, match="unieval_dir is not set"):
        make_scorer(config)
    config.scorer.unieval_dir = str(tmp_path)
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        make_scorer(config)


def _tiny_t5(folder, swap: bool) -> None:
    """A random one-layer T5 whose first decoder step scores 'yes' against 'no' as +s / -s (or swapped)."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from odie_async.evaluation.embedder import model_path

    tokenizer = AutoTokenizer.from_pretrained(str(model_path()))  # any local tokenizer will do
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=16, d_ff=32, num_layers=1, num_decoder_layers=1,
                      num_heads=2, d_kv=8, decoder_start_token_id=tokenizer.cls_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    yes, no = (tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in ("Yes", "No"))
    direction = torch.randn(config.d_model)
    with torch.no_grad():
        for weights in {id(w): w for w in (model.shared.weight, model.lm_head.weight)}.values():  # tied or not
            weights[no if swap else yes] = direction
            weights[yes if swap else no] = -direction
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.mark.slow
def test_unieval_scorer_loads_a_local_checkpoint_and_reads_yes_against_no(tmp_path):
    from odie_async.pipeline.scorers import UniEvalScorer

    table = parse_table("| Name | Year |\n|---|---|\n| Ada | 1843 |\n| Bob | 1901 |")
    item = ("List the names and years.", "Ada wrote it in 1843; Bob in 1901.", table, True)
    scores = []
    for swap in (False, True):
        _tiny_t5(tmp_path / str(swap), swap)
        scores.append(UniEvalScorer(str(tmp_path / str(swap)))._score_batch([item, item[:3] + (False,)]))
    plain, swapped = scores
    assert set(plain[0]) == {"consistency", "faithfulness"} and set(plain[1]) == {"faithfulness"}
    for name in ("consistency", "faithfulness"):
        assert plain[0][name] + swapped[0][name] == pytest.approx(1.0, abs=1e-5)
        assert abs(plain[0][name] - 0.5) > 0.01


@pytest.mark.parametrize("name", ["generate-default.yaml", "generate-openai.yaml", "generate-mock.yaml"])
def test_shipped_configs_load(name):
    from odie_async.paths import config_dir
    from odie_async.pipeline.config import load_config

    config = load_config(config_dir() / name, limit=10)
    assert config.run.records == 10 and config.n_fixed + config.n_open == 10
    assert config.path(config.prompts).is_dir()


# -- export -------------------------------------------------------------------------------

def test_export_order_does_not_depend_on_completion_order(tmp_path):
    def outcome(rid, variant):
        record = Record(id=rid, category="fixed header", domain="d", original_instruction=f"list {rid}")
        return Outcome(record=record, variant=variant, kept=False, reason=f"{variant}-reason", stage=variant)

    outcomes = [outcome(rid, v) for rid in ("f00002", "o00001", "f00001") for v in ("cot", "plain")]
    files = []
    for run, order in enumerate((outcomes, outcomes[::-1])):
        (tmp_path / str(run)).mkdir()
        export(tmp_path / str(run), order, ["plain", "cot"], "system")
        files.append((tmp_path / str(run) / "dropped.jsonl").read_bytes())
    assert files[0] == files[1]
    lines = [orjson.loads(line) for line in files[0].splitlines()]
    assert [(d["record_id"], d["variant"]) for d in lines] == [
        ("f00001", "plain"), ("f00001", "cot"), ("o00001", "plain"), ("o00001", "cot"),
        ("f00002", "plain"), ("f00002", "cot")]
