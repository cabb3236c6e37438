"""``odie view``'s parts: line index, filters index, record shapes, metrics file, server security."""

import asyncio

import aiohttp
import orjson
import pytest

from odie_async.endpoints.mock_server import MockServer, MockSettings
from odie_async.engine.core import Engine, EngineSettings
from odie_async.engine.metrics_log import MetricsLog, public_endpoint
from odie_async.exceptions import ConfigError
from odie_async.viewer import record_view as records
from odie_async.viewer.facets import FacetIndex
from odie_async.viewer.index import LineIndex, index_path
from odie_async.viewer.runs import load_runs
from odie_async.viewer.server import serve
from odie_async.pipeline.run import generate
from tests.helpers import chat_line
from tests.pipeline_support import make_config, responder


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The viewer's per-user cache folder, private to each test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _jsonl(path, rows):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def _append(path, rows):
    with open(path, "ab") as handle:
        handle.write(b"".join(orjson.dumps(r) + b"\n" for r in rows))


# -- the line index ------------------------------------------------------------------------------

def test_index_pages_extends_and_persists(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [{"i": i, "s": "é" * (i % 5)} for i in range(1000)])
    index = LineIndex(path)
    assert index.refresh() == 1000
    assert [orjson.loads(raw)["i"] for raw in index.lines(500, 503)] == [500, 501, 502]
    assert [orjson.loads(raw)["i"] for raw in index.pick([999, 0, 7])] == [999, 0, 7]
    assert index_path(path).is_file()
    with open(path, "ab") as handle:
        handle.write(orjson.dumps({"i": 1000}) + b"\n" + b'{"i": 10')  # a torn last line is not a record yet
    assert index.refresh() == 1001
    assert orjson.loads(index.line(1000))["i"] == 1000
    with pytest.raises(IndexError):
        index.line(1001)
    reopened = LineIndex(path)
    assert reopened.refresh() == 1001
    assert reopened._saved_count >= 1000  # read back from the per-user cache, not rebuilt


def test_index_rebuilds_when_the_file_is_replaced(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [{"i": i} for i in range(50)])
    LineIndex(path).refresh()
    _jsonl(path, [{"j": i} for i in range(60)])  # same folder, new content, longer
    index = LineIndex(path)
    assert index.refresh() == 60
    assert orjson.loads(index.line(0)) == {"j": 0}


def test_search_finds_lines_case_insensitively_and_json_escaped(tmp_path):
    rows = [{"text": "plain"}, {"text": 'Says "Hello"'}, {"text": "hello again"}, {"text": "x"}]
    index = LineIndex(_jsonl(tmp_path / "a.jsonl", rows))
    index.refresh()
    assert list(index.search(b"HELLO")) == [1, 2]
    assert list(index.search(orjson.dumps('"Hello"')[1:-1])) == [1]
    assert list(index.search(b"absent")) == []


# -- the filters index and record shapes ------------------------------------------------------------

def test_facets_select_by_reason_and_category_and_persist(tmp_path):
    rows = [{"id": i, "category": "open header" if i % 2 else "fixed header",
             "reasons": ["low faithfulness", "too small"] if i % 3 == 0 else ([] if i % 3 == 1 else ["no table"])}
            for i in range(30)]
    path = _jsonl(tmp_path / "dropped.jsonl", rows)
    facets = FacetIndex(LineIndex(path), "dropped")
    facets.refresh()
    assert facets.select({"reason": "too small"}) == [i for i in range(30) if i % 3 == 0]
    assert facets.select({"reason": "no table", "category": "open header"}) == [i for i in range(30) if i % 3 == 2 and i % 2]
    assert facets.counts()["status"] == {"dropped": 20, "kept": 10}
    assert facets.select({}) is None
    _append(path, [{"id": 30, "reasons": ["no table"]}])
    again = FacetIndex(LineIndex(path), "dropped")  # loads what was saved, then indexes the one new line
    added, add = [], again._add
    again._add = lambda number, raw: (added.append(number), add(number, raw))
    again.refresh()
    assert added == [30]
    assert again.select({"reason": "no table"})[-1] == 30


def test_record_shapes():
    batch_ok = {"id": "b1", "custom_id": "tables:f00001:ab", "error": None,
                "response": {"status_code": 200, "body": {"choices": [{"message": {"content": "| A |\n| --- |\n| x |"}}]}}}
    batch_err = {"id": "b2", "custom_id": "r2", "response": None, "error": {"code": "http_500", "message": "boom"}}
    dropped = {"id": "o1", "reason": "too_many_na", "stage": "tables", "category": "open header",
               "text": "Iris in Cork", "table": "| City |\n| --- |\n| Cork |"}
    assert records.facets(batch_ok) == {"status": ["ok"], "reason": [], "stage": ["tables"], "category": [],
                                             "domain": [], "variant": []}
    assert records.row(1, batch_err)["reason"] == "http_500" and records.row(1, batch_err)["status"] == "error"
    detail = records.detail(3, dropped)
    assert detail["table"] == {"header": ["City"], "rows": [["Cork"]]}
    assert detail["reasons"] == ["too_many_na"] and detail["row"]["status"] == "dropped"
    assert records.detail(0, batch_ok)["table"]["rows"] == [["x"]]


def test_load_runs_names_a_bad_argument(tmp_path):
    with pytest.raises(ConfigError, match="not-there.txt"):
        load_runs([str(tmp_path / "not-there.txt")])


# -- the metrics file -------------------------------------------------------------------------------

def test_metrics_log_appends_a_line_per_interval_and_a_final_one(tmp_path):
    async def main():
        async with MockServer(settings=MockSettings(latency_ms=20)) as server:
            settings = EngineSettings(base_url=server.base_url.replace("http://", "http://user:pw@"), concurrency=4)
            engine = Engine(settings, tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl")
            async with MetricsLog(engine, tmp_path / "out.metrics.jsonl", interval=0.05, extra=lambda: {"x": 1}), engine:
                for i in range(40):
                    await engine.submit(f"r{i}", orjson.loads(chat_line(f"r{i}"))["body"])
                await engine.join()

    asyncio.run(main())
    lines = [orjson.loads(raw) for raw in (tmp_path / "out.metrics.jsonl").read_bytes().splitlines()]
    assert len(lines) >= 3
    assert [l["done"] for l in lines] == sorted(l["done"] for l in lines)
    assert lines[-1]["final"] and lines[-1]["done"] == 40 and lines[-1]["funnel"] == {"x": 1}
    assert any(l["p50_ms"] for l in lines) and "user" not in lines[0]["endpoint"] and "pw" not in lines[0]["endpoint"]


def test_generate_writes_its_funnel_into_the_run_folder(tmp_path):
    async def main():
        async with MockServer(settings=MockSettings(latency_ms=40), responder=responder()) as server:
            config = make_config(tmp_path, records=12)
            config.endpoint.base_url = server.base_url
            return await generate(config, tmp_path / "run", show_progress=False, handle_signals=False)

    summary = asyncio.run(main())
    lines = [orjson.loads(raw) for raw in (tmp_path / "run" / "metrics.jsonl").read_bytes().splitlines()]
    assert lines[-1]["final"]
    final = lines[-1]["funnel"]
    for variant, report in summary["filter"].items():
        assert final["filter"][variant]["kept"] == report["kept"]
        assert final["filter"][variant]["dropped"] == report["reasons"]
    assert set(final["stages"]) == {"instructions", "texts", "open_instructions", "paraphrase", "tables", "tables_cot", "scored"}
    assert final["stages"]["tables"]["expected"] == 12 and 0 < final["stages"]["tables"]["done"] <= 12
    assert lines[-1]["done"] == summary["engine"]["succeeded"] + summary["engine"]["failed"]


def test_public_endpoint_drops_credentials_and_query():
    assert public_endpoint("https://u:secret@api.example.com:8443/v1?key=k") == "https://api.example.com:8443/v1"


# -- the server: only the given files, token beyond loopback ---------------------------------------

async def _get(url, **kw):
    async with aiohttp.ClientSession() as session, session.get(url, **kw) as response:
        return response.status, await response.read()


def test_server_refuses_traversal_and_serves_only_given_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _jsonl(run / "kept.jsonl", [{"id": 1, "reasons": []}])
    (tmp_path / "secret.jsonl").write_text('{"secret": 1}\n')

    async def main():
        runner, url = await serve(load_runs([str(run)]), "127.0.0.1", 0)
        try:
            assert (await _get(url + "api/runs/0/files/kept.jsonl/rows"))[0] == 200
            for bad in ("api/runs/0/files/..%2Fsecret.jsonl/rows", "api/runs/0/files/%2E%2E%2Fsecret.jsonl/record/0",
                        "static/..%2F..%2Fserver.py", "static/../runs.py", "api/runs/1/summary", "api/runs/-1/summary",
                        "api/runs/0/files/kept.jsonl/record/5", "api/runs/0/files/kept.jsonl/rows?offset=-3"):
                status, body = await _get(url + bad)
                assert status in (400, 404), bad
                assert b"secret" not in body
            status, _ = await _get(url + "api/runs", headers={"Host": "attacker.example:80"})
            assert status == 403
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_server_beyond_loopback_requires_its_token(tmp_path):
    _jsonl(tmp_path / "out.jsonl", [{"custom_id": "a", "response": None, "error": None}])

    async def main():
        runner, url = await serve(load_runs([str(tmp_path / "out.jsonl")]), "0.0.0.0", 0)
        try:
            base, token = url.split("?token=")
            local = base.replace("0.0.0.0", "127.0.0.1")
            assert len(token) >= 24
            assert (await _get(local + "api/runs"))[0] == 403
            assert (await _get(local + "api/runs?token=wrong"))[0] == 403
            assert (await _get(local + "api/runs?token=" + token))[0] == 200
            assert (await _get(local + "api/runs", cookies={"odie_view_token": token}))[0] == 200
        finally:
            await runner.cleanup()

    asyncio.run(main())
