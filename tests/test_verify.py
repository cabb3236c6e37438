"""Items tied to their sources by number, and verified generation: candidates, repair turns, budget, resume."""

from __future__ import annotations

import asyncio

import orjson

from odie_async.endpoints.mock_server import MockServer
from odie_async.engine.checkpoint import Result
from odie_async.paths import config_dir
from odie_async.pipeline.context import Context
from odie_async.pipeline.flow import Flow
from odie_async.pipeline.mock_responder import PipelineResponder
from odie_async.pipeline.prompts import FIXED, Prompts, load_seeds
from odie_async.pipeline.run import format_summary, generate
from odie_async.pipeline.stages import Record, paraphrase
from odie_async.pipeline.verify import Verifier
from odie_async.quality import Verdict

from .pipeline_support import make_config

PROMPTS = Prompts(config_dir() / "prompts")
TEXT = ("The club report lists two boats. The boat Heron has length 12 meters and year 1990. "
        "The boat Ember has length 30 meters and year 2004.")
GOOD = "| Boat | Length | Year |\n| --- | --- | --- |\n| Heron | 12 meters | 1990 |\n| Ember | 30 meters | 2004 |"
HALF = "| Boat | Length | Year |\n| --- | --- | --- |\n| Heron | 12 meters | 1990 |\n| Ember | 31 meters | 2004 |"
BAD = "| Boat | Length | Year |\n| --- | --- | --- |\n| Heron | 99 meters | 1871 |\n| Ember | 77 meters | 1822 |"


class ScriptedEngine:
    """``call`` answers from ``script(custom_id, body) -> [contents]`` and remembers every request."""

    def __init__(self, script) -> None:
        self.script = script
        self.calls: list[tuple[str, dict]] = []

    async def call(self, custom_id: str, body: dict) -> Result:
        self.calls.append((custom_id, body))
        contents = self.script(custom_id, body)
        choices = [{"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
                   for i, c in enumerate(contents)]
        return Result(custom_id, True, {"choices": choices, "usage": {"total_tokens": 100 * len(contents)}})


class CellScorer:
    """A stand-in gate: a table passes when the text states every body cell; faithfulness is the share stated."""

    async def judge_table(self, ctx, record, variant, table) -> Verdict:
        cells = [c for row in table.rows for c in row[1:]]
        share = sum(c in record.text for c in cells) / len(cells)
        return Verdict(share == 1.0, [] if share == 1.0 else ["faithfulness.low"], {"faithfulness": share})


def _ctx(tmp_path, script, **verify) -> Context:
    config = make_config(tmp_path, verify=verify) if verify else make_config(tmp_path)
    return Context(config, PROMPTS, load_seeds(config.path(config.seeds)), ScriptedEngine(script), "m")


def _record() -> Record:
    return Record("f00001", FIXED, "boats", "List each boat with its length and year.", TEXT,
                  "List each boat with its length and year.")


def _stage_calls(ctx, stage="tables"):
    return [(cid, body) for cid, body in ctx.engine.calls if cid.startswith(stage + ":")]


# -- paraphrases tied to their requests by number --------------------------------------------------

ORIGINALS = ["List each river with its length and source country.",
             "Give every film's director, release year and box office takings.",
             "Extract the name and price of each coffee blend on the menu."]
REWRITES = ["Could you list each river together with its length and the country of its source?",
            "Please give every film's director, its release year and its box office takings.",
            "Kindly extract the name and the price of each coffee blend on the menu."]


def _numbers_asked(body: dict) -> list[int]:
    prompt = body["messages"][-1]["content"]
    return [int(line.split(".")[0]) for line in prompt.splitlines() if line[:1].isdigit()]


def _paraphrase_run(tmp_path, answer) -> tuple[list, list]:
    ctx = _ctx(tmp_path, lambda cid, body: [answer(len(_stage_calls(ctx, "paraphrase")), _numbers_asked(body))])
    result = asyncio.run(paraphrase(ctx, "fixed0000", ORIGINALS))
    return result, [_numbers_asked(body) for _cid, body in _stage_calls(ctx, "paraphrase")]


def test_a_shuffled_list_lands_on_its_own_requests(tmp_path):
    result, asked = _paraphrase_run(tmp_path, lambda call, ids: "\n".join(f"{i}. {REWRITES[i - 1]}" for i in reversed(ids)))
    assert result == REWRITES and asked == [[1, 2, 3]]


def test_a_short_list_asks_again_for_the_missing_request_only(tmp_path):
    def answer(call, ids):
        ids = ids[:-1] if call == 1 else ids  # the first answer leaves out the last request
        return "\n".join(f"{i}. {REWRITES[i - 1]}" for i in ids)

    result, asked = _paraphrase_run(tmp_path, answer)
    assert result == REWRITES and asked == [[1, 2, 3], [3]]


def test_a_repeated_number_is_asked_again_never_guessed(tmp_path):
    def answer(call, ids):
        if call == 1:  # request 2's number given twice, request 3's not at all
            return f"1. {REWRITES[0]}\n2. {REWRITES[1]}\n2. {REWRITES[2]}"
        return "\n".join(f"{i}. {REWRITES[i - 1]}" for i in ids)

    result, asked = _paraphrase_run(tmp_path, answer)
    assert result == REWRITES and asked == [[1, 2, 3], [2, 3]]


def test_a_rewrite_the_gate_rejects_is_asked_again(tmp_path):
    def answer(call, ids):
        texts = {i: REWRITES[i - 1] for i in ids} | ({2: "I'm not ready to talk about that."} if call == 1 else {})
        return "\n".join(f"{i}. {texts[i]}" for i in ids)

    result, asked = _paraphrase_run(tmp_path, answer)
    assert result == REWRITES and asked == [[1, 2, 3], [2]]


def test_requests_never_answered_come_back_as_none(tmp_path):
    result, asked = _paraphrase_run(tmp_path, lambda call, ids: "Here they are, rewritten:\n" + "\n".join(REWRITES))
    assert result == [None, None, None] and len(asked) == 3  # max_tries, each time all three, unnumbered never placed


def _closest(tmp_path, rewritten: list[str], originals: list[str]):
    from odie_async.pipeline.scorers import make_scorer

    config = make_config(tmp_path, scorer={"kind": "offline"})

    async def run():
        ctx = Context(config, PROMPTS, [], ScriptedEngine(lambda cid, body: []), "m")
        flow = Flow(ctx, make_scorer(config))
        return await flow._close_to_original(rewritten, originals), ctx.counts["paraphrase"]

    return asyncio.run(run())


def test_a_paraphrase_swapped_with_another_keeps_its_original(tmp_path):
    swapped = [REWRITES[1], REWRITES[0], REWRITES[2]]  # requests 1 and 2 got each other's rewrite
    chosen, counts = _closest(tmp_path, swapped, ORIGINALS)
    assert chosen == [ORIGINALS[0], ORIGINALS[1], REWRITES[2]]
    assert counts["far_from_original_kept_original"] == 2


def test_swapped_rewrites_of_requests_one_word_apart_keep_their_originals(tmp_path):
    # each rewrite is still close to its own original, but closer to the other's
    originals = ["Summarise what the text says about every site in a table.",
                 "Summarise what the text says about every festival in a table.",
                 "Extract the name and price of each coffee blend on the menu."]
    rewritten = ["Please summarise what the text says about every festival in a table.",
                 "Please summarise what the text says about every site in a table.",
                 "Kindly extract the name and the price of each coffee blend on the menu."]
    chosen, counts = _closest(tmp_path, rewritten, originals)
    assert chosen == [originals[0], originals[1], rewritten[2]]
    assert counts["closer_to_another_kept_original"] == 2 and counts["far_from_original_kept_original"] == 0


# -- verified tables ----------------------------------------------------------------------------------


def _verify(tmp_path, script, **budget):
    ctx = _ctx(tmp_path, script, **budget)
    done = asyncio.run(Verifier(ctx, CellScorer(), _record(), "plain").run())
    return ctx, done


def test_the_best_passing_candidate_of_one_n_request_is_kept(tmp_path):
    def script(cid, body):
        return [BAD, HALF, GOOD][: body.get("n", 1)] if "-cand" in cid else [BAD]

    ctx, done = _verify(tmp_path, script)
    calls = _stage_calls(ctx)
    assert [cid.split(":")[1] for cid, _ in calls] == ["f00001", "f00001-cand"]
    assert calls[1][1]["n"] == 3  # candidates 4: the first answer and three more from one request
    assert done.best.kept and done.best.table.markdown() == GOOD and done.round == 1
    assert done.tokens == 100 + 300


def test_an_endpoint_ignoring_n_gets_separate_requests(tmp_path):
    ctx, done = _verify(tmp_path, lambda cid, body: [GOOD if cid.split(":")[1].endswith("cand2") else BAD])
    keys = [cid.split(":")[1] for cid, _ in _stage_calls(ctx)]
    assert keys == ["f00001", "f00001-cand", "f00001-cand1", "f00001-cand2"]
    assert done.best.kept and done.round == 1 and ctx.counts["tables"]["n_not_honoured"] == 1


def test_the_repair_turn_sends_the_failed_answer_and_the_cells_not_in_the_text(tmp_path):
    def script(cid, body):
        if "-fix" in cid:
            return [GOOD]
        return [HALF] if "-cand" not in cid else [BAD] * body["n"]

    ctx, done = _verify(tmp_path, script)
    cid, body = _stage_calls(ctx)[-1]
    assert cid.split(":")[1] == "f00001-fix2"
    assert body["messages"][-2] == {"role": "assistant", "content": HALF}  # the best failed answer, not the worse ones
    assert "these cells are not in the text: '31 meters'" in body["messages"][-1]["content"]
    assert done.best.table.markdown() == GOOD and done.round == 2


def test_no_round_starts_once_the_token_budget_is_spent(tmp_path):
    ctx, done = _verify(tmp_path, lambda cid, body: [BAD] * body.get("n", 1), max_tokens_per_record=100)
    assert len(_stage_calls(ctx)) == 1 and not done.best.kept and done.round == -1
    ctx, done = _verify(tmp_path, lambda cid, body: [BAD] * body.get("n", 1), rounds=3)
    assert [cid.split(":")[1] for cid, _ in _stage_calls(ctx)] == ["f00001", "f00001-cand", "f00001-fix2", "f00001-fix3"]


def test_a_record_dropped_for_its_instruction_gets_no_tries(tmp_path):
    class InstructionScorer(CellScorer):
        async def judge_table(self, ctx, record, variant, table):
            return Verdict(False, ["instruction.refusal"], {})

    ctx = _ctx(tmp_path, lambda cid, body: [GOOD])
    done = asyncio.run(Verifier(ctx, InstructionScorer(), _record(), "plain").run())
    assert len(_stage_calls(ctx)) == 1 and done.best.reasons == ["instruction.refusal"]


# -- the whole pipeline against the mock teacher with wrong first answers ----------------------------


async def _generate(config, out):
    teacher = PipelineResponder(PROMPTS, config.endpoint.mock_wrong_share, config.run.seed)
    async with MockServer(responder=teacher, record_bodies=True) as server:
        config.endpoint.base_url = server.base_url
        summary = await generate(config, out, show_progress=False, handle_signals=False)
        return summary, [orjson.loads(b) for b in server.state.bodies]


def _mock_preset(tmp_path, wrong: float, records: int = 24, **budget):
    from odie_async.pipeline.config import load_config

    config = load_config("generate-mock.yaml", limit=records)
    config.endpoint.mock_wrong_share = wrong
    for key, value in budget.items():
        setattr(config.verify, key, value)
    return config


def test_half_the_first_answers_wrong_still_keeps_what_a_perfect_teacher_keeps(tmp_path):
    perfect, _ = asyncio.run(_generate(_mock_preset(tmp_path, 0.0), tmp_path / "perfect"))
    flawed, _ = asyncio.run(_generate(_mock_preset(tmp_path, 0.5), tmp_path / "flawed"))
    for variant in ("plain", "cot"):
        rounds = flawed["verify"][variant]["kept_after_round"]
        assert rounds[0] < 0.75 * perfect["filter"][variant]["kept"]  # the knob did make first answers wrong
        assert flawed["filter"][variant]["kept"] >= 0.95 * perfect["filter"][variant]["kept"]
        assert flawed["verify"][variant]["table_tokens_per_kept"] > perfect["verify"][variant]["table_tokens_per_kept"]
    assert flawed["verify"]["tokens_per_kept_record"] > 0
    printed = format_summary(flawed)
    assert "kept/planned after each round" in printed and "per kept record" in printed


def test_the_wrong_answers_are_the_same_on_every_run(tmp_path):
    teacher = PipelineResponder(PROMPTS, 0.5, seed=3)
    ctx = _ctx(tmp_path, lambda cid, body: [])
    from odie_async.pipeline.stages import table_messages

    bodies = [{"messages": table_messages(ctx, Record(f"f{i:05d}", FIXED, "boats", "List each boat with its length and year.",
                                                      f"{TEXT} Issue {i}.", "List each boat with its length and year."), "tables")}
              for i in range(40)]
    first = [teacher(b) for b in bodies]
    assert first == [PipelineResponder(PROMPTS, 0.5, seed=3)(b) for b in bodies]
    wrong = sum(a != PipelineResponder(PROMPTS, 0.0, seed=3)(b) for a, b in zip(first, bodies))
    assert 10 <= wrong <= 30
    assert first != [PipelineResponder(PROMPTS, 0.5, seed=4)(b) for b in bodies]


def test_a_rerun_resumes_across_rounds_and_a_larger_budget_sends_only_its_new_round(tmp_path):
    out = tmp_path / "out"
    budget = {"records": 16, "candidates": 2}
    first, _ = asyncio.run(_generate(_mock_preset(tmp_path, 0.5, rounds=1, **budget), out))
    again, bodies = asyncio.run(_generate(_mock_preset(tmp_path, 0.5, rounds=1, **budget), out))
    assert bodies == [] and again["filter"] == first["filter"]
    more, bodies = asyncio.run(_generate(_mock_preset(tmp_path, 0.5, rounds=2, **budget), out))
    repairs = sum(more["stages"][s].get("repairs", 0) for s in ("tables", "tables_cot"))
    assert repairs > 0 and len(bodies) >= repairs
    teacher = PipelineResponder(PROMPTS)
    stages = [teacher.stage_of(b) for b in bodies]
    assert set(stages) <= {"tables", "tables_cot", "judge"}  # only the repair turns (and their judging) were sent
    assert sum(s in ("tables", "tables_cot") for s in stages) == repairs
    for variant in ("plain", "cot"):
        assert more["verify"][variant]["kept_after_round"][:2] == first["verify"][variant]["kept_after_round"]
