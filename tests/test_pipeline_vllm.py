"""The pipeline against the embedded SmolLM2-135M on vLLM: one server start, two tiny runs.

With ``structured: auto`` the probe finds that vLLM honours ``response_format``
and every structured stage's answer is schema-shaped JSON (guided decoding); with
``structured: off`` the same server is asked in prompt-and-parse mode. Either
way the run ends with honest counts and files that load.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from odie_async.pipeline.run import generate
from odie_async.evaluation.tables import table_from_json

from .pipeline_support import make_config

pytestmark = pytest.mark.slow

SMALL = {
    "instructions": {"per_call": 3, "shots": 2, "max_tokens": 200, "temperature": 0.7, "max_calls_factor": 2},
    "texts": {"shots": 1, "max_tokens": 120, "temperature": 0.7},
    "open_instructions": {"shots": 1, "max_tokens": 40},
    "paraphrase": {"max_tokens": 120},
    "tables": {"shots": 1, "max_tokens": 200, "temperature": 0.3},
    "tables_cot": {"shots": 1, "max_tokens": 280, "temperature": 0.3},
    "judge": {"max_tokens": 20},
}
LIMITS = {"max_columns": 4, "max_rows": 4, "cell_chars": 24, "instruction_chars": 160, "explanation_chars": 200}


@pytest.fixture(scope="module")
def endpoint():
    from odie_async.endpoints.resolve import resolve_endpoint

    with resolve_endpoint() as served:
        yield served


def _config(tmp_path, endpoint, structured: str, scorer: str, variants):
    data_tmp = tmp_path / structured
    config = make_config(data_tmp, base_url=endpoint.base_url, structured=structured, records=2,
                         run={"variants": variants}, scorer={"kind": scorer}, limits=LIMITS,
                         endpoint={"send_seed": False, "model": endpoint.model},
                         engine={"concurrency": 4, "timeout_s": 300, "max_attempts": 2})
    for name, values in SMALL.items():
        for key, value in values.items():
            setattr(config.stage(name), key, value)
    return config, data_tmp / "out"


def _answers(out, stage: str) -> list[dict]:
    found = []
    for raw in (out / "requests.jsonl").read_bytes().splitlines():
        line = orjson.loads(raw)
        if line["custom_id"].startswith(stage + ":"):
            found.append(line["response"]["body"]["choices"][0])
    return found


def test_structured_outputs_on_vllm_give_schema_shaped_answers(tmp_path, endpoint):
    config, out = _config(tmp_path, endpoint, "auto", "llm", ["plain", "cot"])
    summary = asyncio.run(generate(config, out, show_progress=False, handle_signals=False))
    assert summary["structured"]["enabled"] is True, summary["structured"]["why"]
    assert set(summary["structured"]["stages"].values()) == {"json_schema"}
    complete = [c for c in _answers(out, "instructions") if c["finish_reason"] == "stop"]
    assert complete, "no instruction answer finished within max_tokens"
    for choice in complete:
        items = orjson.loads(choice["message"]["content"])["instructions"]
        assert 1 <= len(items) <= 3 and all(set(item) == {"domain", "instruction"} for item in items)
    for stage in ("tables", "tables_cot"):
        for choice in _answers(out, stage):
            if choice["finish_reason"] == "stop":
                table = table_from_json(orjson.loads(choice["message"]["content"]))
                assert 2 <= table.n_columns <= 4 and all(len(row) == table.n_columns for row in table.rows)
    for stage, counts in summary["stages"].items():
        assert counts.get("failed", 0) == 0, stage
    kept = summary["filter"]["plain"]["kept"]
    assert kept == len((out / "train.jsonl").read_bytes().splitlines())


def test_prompt_and_parse_on_vllm_reports_what_parsed(tmp_path, endpoint):
    config, out = _config(tmp_path, endpoint, "off", "offline", ["plain"])
    summary = asyncio.run(generate(config, out, show_progress=False, handle_signals=False))
    assert set(summary["structured"]["stages"].values()) == {"prompt"}
    instructions = summary["stages"]["instructions"]
    assert instructions["sent"] >= 1 and instructions["parsed"] + instructions.get("unparsable", 0) == instructions["sent"]
    dropped = [orjson.loads(raw) for raw in (out / "dropped.jsonl").read_bytes().splitlines()]
    report = summary["filter"]["plain"]
    assert report["records"] == report["kept"] + len(dropped) and all(d["reason"] for d in dropped)
