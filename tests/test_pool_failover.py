"""A pool whose lanes fail as lanes: a refused key, a hung endpoint, one endpoint named twice.

The engine runs on the fake clock with fake transports (tests/fake_upstream.py), so minutes
of timeouts pass in milliseconds and each figure is exact.
"""

import asyncio
import contextlib
import dataclasses

import orjson

from odie_async.endpoints.mock_server import MockServer, MockSettings
from odie_async.engine.batch import run_engine_batch
from odie_async.engine.core import Engine
from odie_async.engine.pool import build_lanes
from odie_async.engine.progress import format_summary
from odie_async.engine.settings import EngineSettings, PoolEndpoint
from odie_async.engine.stats import RunStats
from odie_async.exceptions import RunAborted
from tests.fake_upstream import FakeServer
from tests.fakeclock import run_fake
from tests.helpers import ids_in, write_requests

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _settings(*names, **kw):
    specs = [PoolEndpoint.keyed(f"http://127.0.0.1:{9000 + i}", name=name) for i, name in enumerate(names)]
    kw = {"concurrency": 8, "learn_limits": False, "fsync_interval_s": 3600.0} | kw
    return EngineSettings(specs[0].base_url, endpoints=specs if len(specs) > 1 else [], **kw)


def _run(tmp_path, settings, servers, records=200):
    tmp_path.mkdir(exist_ok=True)

    async def go():
        engine = Engine(settings, tmp_path / "out.jsonl", client=list(servers))
        with contextlib.suppress(RunAborted):
            async with engine:
                for i in range(records):
                    await engine.submit(f"r{i}", BODY | {"n": i})
        return engine

    return run_fake(go())


def test_a_lane_whose_key_is_refused_leaves_the_pool_and_its_records_go_to_the_healthy_one(tmp_path):
    healthy, refusing = FakeServer(latency_s=0.05), FakeServer(refuse_key=True)
    engine, _ = _run(tmp_path, _settings("healthy", "refusing"), [healthy, refusing])
    assert engine.aborted is None, engine.aborted
    assert engine.ledger() == {"submitted": 200, "output": 200, "errors": 0, "unfinished": 0}
    counts = ids_in(tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl")
    assert len(counts) == 200 and set(counts.values()) == {1}
    assert healthy.answered == 200 and refusing.received >= 1
    lanes = {lane["endpoint"]: lane for lane in engine.pool_report()["endpoints"]}
    assert "refused the API key" in lanes["refusing"]["out_of_pool"] and lanes["healthy"]["out_of_pool"] is None
    assert engine.stats.retries_by_reason["rerouted"] == refusing.received


def test_the_refused_lane_is_named_in_the_printed_summary():
    summary = {"settings": {"base_url": "x"}, "endpoints": [
        {"endpoint": "healthy", "out_of_pool": None},
        {"endpoint": "refusing", "out_of_pool": "the endpoint refused the API key (HTTP 401: bad\x1b[2J key)"}]}
    text = format_summary(summary)
    assert "endpoint refusing left the pool" in text and "refused the API key" in text
    assert "\x1b" not in text, "the endpoint's words are shown escaped"


def test_records_stay_unfinished_for_a_rerun_when_every_lane_refuses_the_key(tmp_path):
    first, second = FakeServer(refuse_key=True), FakeServer(refuse_key=True)
    engine, _ = _run(tmp_path, _settings("a", "b"), [first, second], records=50)
    assert engine.aborted is not None and "refused the API key" in str(engine.aborted)
    ledger = engine.ledger()
    assert ledger["errors"] == 0 and ledger["output"] == 0, "no record is written off for the key's fault"
    assert ledger["unfinished"] == ledger["submitted"] > 0


def test_a_hung_lane_is_cut_at_the_straggler_deadline_and_its_records_rerouted(tmp_path):
    _, healthy_alone = _run(tmp_path / "alone", _settings("healthy"), [FakeServer(latency_s=0.2)])
    healthy, hung = FakeServer(latency_s=0.2), FakeServer(stuck=True)
    engine, pooled = _run(tmp_path / "pool", _settings("healthy", "hung"), [healthy, hung])
    assert engine.aborted is None and engine.ledger()["output"] == 200
    assert hung.received >= 1 and healthy.answered == 200
    assert pooled <= 2 * healthy_alone, (pooled, healthy_alone)


def test_the_same_endpoint_named_twice_is_one_lane_with_one_budget():
    same = PoolEndpoint.keyed("http://127.0.0.1:9000/v1", api_key="k", rpm=600)
    again = PoolEndpoint.keyed("http://127.0.0.1:9000/v1/", api_key="k", rpm=600, name="again")
    other_key = PoolEndpoint.keyed("http://127.0.0.1:9000/v1", api_key="k2", rpm=600)
    settings = EngineSettings(same.base_url, endpoints=[same, again])
    assert len(build_lanes(settings, RunStats())) == 1
    assert len(build_lanes(dataclasses.replace(settings, endpoints=[same, other_key]), RunStats())) == 2


def test_odie_batch_on_a_healthy_and_a_key_refusing_endpoint_exits_0_naming_the_refused_one(tmp_path):
    write_requests(tmp_path / "in.jsonl", 300)

    async def go():
        async with MockServer() as healthy, MockServer(settings=MockSettings(api_key="another")) as refusing:
            specs = [PoolEndpoint.keyed(healthy.base_url, "mine", name="healthy"),
                     PoolEndpoint.keyed(refusing.base_url, "mine", name="refusing")]
            settings = EngineSettings(healthy.base_url, api_key="mine", endpoints=specs, concurrency=16,
                                      timeout_s=5)
            return await run_engine_batch(tmp_path / "in.jsonl", tmp_path / "out.jsonl", settings, progress=False,
                                   handle_signals=False)

    report = asyncio.run(asyncio.wait_for(go(), 60))
    assert report.exit_code == 0, report.error
    assert report.ledger["output"] == 300 and report.ledger["errors"] == 0
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    lanes = {lane["endpoint"]: lane for lane in summary["endpoints"]}
    assert lanes["healthy"]["counts"]["ok"] == 300
    assert "refused the API key" in lanes["refusing"]["out_of_pool"]
    assert "endpoint refusing left the pool" in format_summary(summary)
