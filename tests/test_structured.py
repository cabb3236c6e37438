"""Structured outputs: schema → request, JSON → record, the auto probe and its fallback."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from odie_async.engine.core import Engine, EngineSettings
from odie_async.endpoints.mock_server import MockServer
from odie_async.pipeline import schemas
from odie_async.pipeline.config import EndpointConfig, LimitsConfig
from odie_async.pipeline.run import generate
from odie_async.pipeline.stages import Record, table_messages
from odie_async.pipeline.structured import resolve_structured
from odie_async.runtime import run_async
from odie_async.evaluation.tables import parse_table

from .pipeline_support import make_config, responder
from .scripted_server import ScriptedServer

LIMITS = LimitsConfig(max_columns=5, max_rows=7, cell_chars=30, instruction_chars=100, domain_chars=20, explanation_chars=200)
ALL_SCHEMAS = {
    "instructions": schemas.instructions_schema(LIMITS, 10),
    "paraphrase": schemas.paraphrase_schema(LIMITS, 4),
    "tables": schemas.table_schema(LIMITS),
    "tables_cot": schemas.cot_schema(LIMITS),
    "judge": schemas.judge_schema(("consistency", "faithfulness")),
}


def _walk(node):
    yield node
    for value in node.get("properties", {}).values():
        yield from _walk(value)
    if "items" in node:
        yield from _walk(node["items"])
    for alternative in node.get("anyOf", []):
        yield from _walk(alternative)


@pytest.mark.parametrize("name", sorted(ALL_SCHEMAS))
def test_every_array_and_string_is_bounded_and_objects_are_closed(name):
    for node in _walk(ALL_SCHEMAS[name]):
        if node.get("type") == "array":
            assert 1 <= node["minItems"] <= node["maxItems"]
        if node.get("type") == "string":
            assert node["maxLength"] > 0 or "enum" in node
        if node.get("type") == "object":
            assert node["additionalProperties"] is False and set(node["required"]) == set(node["properties"])


def test_schema_bounds_come_from_the_config():
    alternatives = schemas.table_schema(LIMITS)["properties"]["table"]["anyOf"]
    assert [a["properties"]["header"]["maxItems"] for a in alternatives] == [2, 3, 4, 5]
    for table in (a["properties"] for a in alternatives):
        width = table["header"]["minItems"]
        assert table["header"]["maxItems"] == width
        assert table["rows"]["items"]["minItems"] == table["rows"]["items"]["maxItems"] == width  # no ragged rows
        assert table["rows"]["maxItems"] == 7 and table["header"]["items"]["maxLength"] == 30
    assert schemas.paraphrase_schema(LIMITS, 4)["properties"]["paraphrases"]["minItems"] == 4


def test_response_format_and_dropped_keywords():
    schema = schemas.table_schema(LIMITS)
    fmt = schemas.response_format("odie_tables", schema, EndpointConfig(schema_drop=["maxLength"]))
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "odie_tables"
    assert fmt["json_schema"]["strict"] is True
    assert "maxLength" not in orjson.dumps(fmt).decode() and "maxItems" in orjson.dumps(fmt).decode()
    assert "maxLength" in orjson.dumps(schema).decode()  # the original is untouched


class _FakeContext:
    """Just enough of ``Context`` to build table requests."""

    def __init__(self, tmp_path, structured: bool) -> None:
        from odie_async.paths import config_dir
        from odie_async.pipeline.prompts import Prompts, load_seeds

        self.config = make_config(tmp_path)
        self.prompts = Prompts(config_dir() / "prompts")
        self.seeds = load_seeds(self.config.path(self.config.seeds))
        self.structured = structured

    def rng(self, key):
        import random

        return random.Random(key)

    def format_key(self):
        return "format_json" if self.structured else "format_text"


def test_table_request_shots_follow_the_mode(tmp_path):
    record = Record("f00001", "fixed header", "news", "x", text="Some text.", instruction="List names.")
    json_messages = table_messages(_FakeContext(tmp_path, True), record, "tables")
    text_messages = table_messages(_FakeContext(tmp_path, False), record, "tables")
    json_shot, text_shot = json_messages[2]["content"], text_messages[2]["content"]
    assert {"table": parse_table(text_shot).as_json()} == orjson.loads(json_shot)
    assert json_messages[-1] == text_messages[-1] == {"role": "user", "content": "List names.\n\nSome text."}
    assert "JSON" in json_messages[0]["content"] and "JSON" not in text_messages[0]["content"]


async def _probe(base_url: str, tmp_path, setting: str = "auto") -> tuple[bool, str]:
    config = make_config(tmp_path, structured=setting)
    engine = Engine(EngineSettings(base_url=base_url, max_attempts=1), tmp_path / "r.jsonl", tmp_path / "e.jsonl", keep_bodies=True)
    async with engine:
        return await resolve_structured(engine, config, "mock-model")


def test_probe_honoured_ignored_refused(tmp_path):
    async def scenario():
        async with MockServer() as server:
            honoured = await _probe(server.base_url, tmp_path / "a")
        async with MockServer(responder=lambda body: "Yes, the sky is blue; that is three words.") as server:
            ignored = await _probe(server.base_url, tmp_path / "b")
        async with ScriptedServer([(400, {})]) as server:
            refused = await _probe(server.base_url, tmp_path / "c")
            sent = server.seen[0]["body"]
        return honoured, ignored, refused, sent

    honoured, ignored, refused, sent = asyncio.run(scenario())
    assert honoured == (True, "auto: the endpoint honoured response_format")
    assert ignored == (False, "auto: the endpoint ignored response_format")
    assert refused[0] is False and "refused" in refused[1]
    assert sent["response_format"]["type"] == "json_schema"


def test_probe_answer_is_reused_on_rerun(tmp_path):
    async def twice():
        async with MockServer() as server:
            first = await _probe(server.base_url, tmp_path)
            second = await _probe(server.base_url, tmp_path)
            return first, second, server.request_count

    first, second, count = asyncio.run(twice())
    assert first == second and count == 1


def _bodies_by_stage(bodies):
    teacher = responder()
    by_stage = {}
    for raw in bodies:
        body = orjson.loads(raw)
        by_stage.setdefault(teacher.stage_of(body) or "probe", []).append(body)
    return by_stage


@pytest.mark.parametrize("setting", ["on", "auto"])
def test_pipeline_sends_schemas_on_structured_stages_only(tmp_path, setting):
    async def scenario():
        async with MockServer(responder=responder(), record_bodies=True) as server:
            config = make_config(tmp_path, base_url=server.base_url, structured=setting, records=6)
            summary = await generate(config, tmp_path / "out", show_progress=False, handle_signals=False)
            return summary, list(server.state.bodies)

    summary, bodies = asyncio.run(scenario())
    by_stage = _bodies_by_stage(bodies)
    for stage in ("instructions", "paraphrase", "tables", "tables_cot", "judge"):
        assert by_stage[stage] and all(b["response_format"]["json_schema"]["name"] == f"odie_{stage}" for b in by_stage[stage])
    for stage in ("texts", "open_instructions"):
        assert all("response_format" not in b for b in by_stage[stage])
    assert summary["structured"]["enabled"] is True
    assert set(summary["structured"]["stages"].values()) == {"json_schema"}
    assert summary["stages"]["texts"]["mode"] == "free_text"


def test_ignored_response_format_falls_back_to_prompt_and_parse(tmp_path):
    teacher = responder()

    def ignores_schemas(body: dict) -> str:  # an endpoint that drops response_format silently
        return teacher({k: v for k, v in body.items() if k != "response_format"}) if teacher.stage_of(body) else "Yes."

    async def scenario():
        async with MockServer(responder=ignores_schemas, record_bodies=True) as server:
            config = make_config(tmp_path, base_url=server.base_url, structured="auto", records=6)
            summary = await generate(config, tmp_path / "out", show_progress=False, handle_signals=False)
            return summary, list(server.state.bodies)

    summary, bodies = asyncio.run(scenario())
    assert summary["structured"]["enabled"] is False and "ignored" in summary["structured"]["why"]
    assert set(summary["structured"]["stages"].values()) == {"prompt"}
    assert sum("response_format" in orjson.loads(b) for b in bodies) == 1  # the probe only
    assert summary["filter"]["plain"]["kept"] > 0


def test_json_and_text_paths_export_the_same_table_text(tmp_path):
    """The structured path's exported tables are exactly what the markdown path would write."""
    async def both():
        out = {}
        for setting in ("on", "off"):
            config = make_config(tmp_path / setting, structured=setting, records=8)
            out[setting] = await generate(config, tmp_path / setting / "out", show_progress=False, handle_signals=False)
        return out

    run_async(both())
    for setting in ("on", "off"):
        for raw in (tmp_path / setting / "out" / "train.jsonl").read_bytes().splitlines():
            line = orjson.loads(raw)
            assert parse_table(line["table"]).markdown() == line["table"] == line["messages"][2]["content"]
