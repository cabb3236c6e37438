"""The whole pipeline against the mock teacher: exports, counts, streaming, checkpointed rerun."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import orjson
import pytest

from odie_async.endpoints.mock_server import MockServer, MockSettings
from odie_async.paths import config_dir
from odie_async.pipeline.run import generate
from odie_async.evaluation.tables import parse_table

from .pipeline_support import make_config, responder

SYSTEM = (config_dir() / "prompts" / "system.txt").read_text().strip()


async def _run(config, out, latency_ms: float = 0.0):
    async with MockServer(settings=MockSettings(latency_ms=latency_ms), responder=responder(), record_bodies=True) as server:
        config.endpoint.base_url = server.base_url
        summary = await generate(config, out, show_progress=False, handle_signals=False)
        return summary, [orjson.loads(b) for b in server.state.bodies]


def _lines(path):
    return [orjson.loads(raw) for raw in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def text_mode_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    config = make_config(tmp, structured="off", records=30)
    summary, bodies = asyncio.run(_run(config, tmp / "out"))
    return tmp / "out", summary, bodies, config


def test_export_is_chat_format_with_valid_tables_of_both_categories(text_mode_run):
    out, _summary, _bodies, _config = text_mode_run
    for name, cot in (("train.jsonl", False), ("train_cot.jsonl", True)):
        lines = _lines(out / name)
        assert lines and {line["category"] for line in lines} == {"fixed header", "open header"}
        for line in lines:
            system, user, assistant = line["messages"]
            assert [m["role"] for m in line["messages"]] == ["system", "user", "assistant"]
            assert system["content"] == SYSTEM
            assert user["content"] == f"{line['instruction']}\n\n{line['source_text']}"
            assert line["variant"] == ("cot" if cot else "plain") and line["id"] == f"{line['record_id']}-{line['variant']}"
            table = parse_table(line["table"])
            assert table.markdown() == line["table"] and table.n_columns >= 2 and table.n_rows + table.n_columns > 3
            assert table.na_count() < 4
            expected = f"{line['explanation']}\n\n{line['table']}" if cot else line["table"]
            assert assistant["content"] == expected
            assert line["domain"] and line["source_text"] and line["instruction"] != line["original_instruction"]
            assert "text" not in line and set(line["scores"]) == {"faithfulness", "consistency", "relevance"}


def test_exports_load_with_datasets(text_mode_run):
    from datasets import load_dataset

    out = text_mode_run[0]
    files = [str(out / name) for name in ("train.jsonl", "train_cot.jsonl")]
    data = load_dataset("json", data_files=files, split="train")  # one schema: one split
    assert len(data) == sum(len(_lines(out / name)) for name in ("train.jsonl", "train_cot.jsonl"))
    assert data[0]["messages"][0]["role"] == "system" and set(data["variant"]) == {"plain", "cot"}
    assert len(set(data["id"])) == len(data)


def test_per_stage_counts_match_the_requests_sent(text_mode_run):
    _out, summary, bodies, config = text_mode_run
    teacher = responder()
    at_server = Counter(teacher.stage_of(body) or "probe" for body in bodies)
    stages = summary["stages"]
    for stage, counts in stages.items():
        assert counts["sent"] == at_server[stage], stage
        assert counts.get("cached", 0) == 0
    n_fixed, n_open = config.n_fixed, config.n_open
    assert stages["instructions"]["kept"] == n_fixed and stages["instructions"]["near_duplicates"] > 0
    assert stages["texts"]["sent"] == n_fixed and stages["open_instructions"]["sent"] == n_open
    assert stages["paraphrase"]["sent"] == 2 + 2 + stages["paraphrase"].get("asked_again", 0)  # 15 + 15 in chunks of 10
    for stage in ("tables", "tables_cot"):  # one first answer per record, and the verification rounds' tries
        assert stages[stage]["sent"] == n_fixed + n_open + stages[stage].get("verify_requests", 0)
    assert stages["tables"]["verify_requests"] > 0  # the mock's refusals and N/A tables get more tries
    assert summary["records"] == {"planned": 30, "fixed_header": 15, "open_header": 15}


def test_filter_report_matches_the_files(text_mode_run):
    out, summary, _bodies, _config = text_mode_run
    dropped = _lines(out / "dropped.jsonl")
    for variant, name in (("plain", "train.jsonl"), ("cot", "train_cot.jsonl")):
        report = summary["filter"][variant]
        assert report["kept"] == len(_lines(out / name))
        mine = Counter(d["reason"] for d in dropped if d["variant"] == variant)
        assert report["reasons"] == dict(mine) and report["records"] == report["kept"] + sum(mine.values())
    assert all(d["reason"] for d in dropped)
    assert all(d["reason"] == d["reasons"][0] for d in dropped)
    assert summary["stages"]["tables"]["unparsable"] > 0  # the mock's prose answers were caught, then tried again
    plain = summary["verify"]["plain"]
    assert plain["kept_after_round"][-1] == summary["filter"]["plain"]["kept"]
    assert plain["kept_after_round"][0] < plain["kept_after_round"][-1]  # the tries kept records the first answer lost
    assert summary["verify"]["tokens_per_kept_record"] > 0
    card = (out / "README.md").read_text()
    assert "kept/planned after each round" in card and "per kept record" in card
    assert f"| plain | train.jsonl | {summary['filter']['plain']['records']} | {summary['filter']['plain']['kept']} |" in card
    assert json.loads((out / "summary.json").read_text())["filter"] == summary["filter"]


def test_rerun_sends_nothing_and_writes_the_same_files(text_mode_run, tmp_path):
    out, first, _bodies, config = text_mode_run
    before = {name: (out / name).read_bytes() for name in ("train.jsonl", "train_cot.jsonl", "dropped.jsonl")}
    summary, bodies = asyncio.run(_run(config, out))
    assert bodies == []
    assert all(c.get("sent", 0) == 0 for c in summary["stages"].values())
    assert summary["filter"] == first["filter"]
    assert {name: (out / name).read_bytes() for name in before} == before


def test_stages_stream_into_each_other(tmp_path):
    """Texts start before the instruction stage ends, tables before the texts end."""
    config = make_config(tmp_path, structured="off", records=60)
    config.stage("instructions").parallel_calls = 1
    _summary, bodies = asyncio.run(_run(config, tmp_path / "out", latency_ms=5))
    order = [responder().stage_of(body) for body in bodies]
    last = {stage: max(i for i, s in enumerate(order) if s == stage) for stage in set(order) - {None}}
    first = {stage: min(i for i, s in enumerate(order) if s == stage) for stage in set(order) - {None}}
    assert first["texts"] < last["instructions"]
    assert first["tables"] < last["texts"]
    assert first["judge"] < last["tables"]
