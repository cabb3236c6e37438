"""Who owns what in the engine: the pool's figures, one gate controller, outcomes, one breaker per mode.

On the fake clock with fake transports (tests/fake_upstream.py): no socket, exact figures.
"""

import asyncio
import contextlib

import orjson

from odie_async.engine.core import Engine
from odie_async.engine.lane_control import FlowControl
from odie_async.engine.lanes import Lane
from odie_async.engine.metrics_log import MetricsLog
from odie_async.engine.pool import Pool
from odie_async.engine.settings import EngineSettings, PoolEndpoint
from odie_async.engine.stats import RunStats
from odie_async.exceptions import AuthenticationError, RateLimitError, RunAborted, TransportError
from tests.fake_upstream import FakeServer
from tests.fakeclock import run_fake

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _pool_settings(count, **kw):
    specs = [PoolEndpoint.keyed(f"http://127.0.0.1:{9000 + i}", name=f"e{i}") for i in range(count)]
    kw = {"concurrency": 8, "learn_limits": False, "fsync_interval_s": 3600.0} | kw
    return EngineSettings(specs[0].base_url, endpoints=specs if count > 1 else [], **kw)


def test_metrics_lines_sum_every_lane_of_a_pool(tmp_path):
    servers = [FakeServer(latency_s=1.0), FakeServer(latency_s=1.0), FakeServer(latency_s=1.0)]
    settings = _pool_settings(3, adaptive=False)

    async def go():
        async with Engine(settings, tmp_path / "out.jsonl", client=servers) as engine:
            for i in range(24):
                await engine.submit(f"r{i}", BODY | {"n": i})
            await asyncio.sleep(0.5)  # every worker holds a request on some lane
            return MetricsLog(engine, tmp_path / "m.jsonl").sample()

    line, _ = run_fake(go())
    assert line["concurrency_limit"] == 24, "three lanes of 8, not the first lane's 8"
    assert line["in_flight"] == 8, "the engine's 8 workers, wherever they were routed"
    assert all(server.received > 0 for server in servers), "every lane took some of the work"


def _lane(concurrency=32):
    settings = EngineSettings("http://127.0.0.1", concurrency=concurrency, learn_limits=False)
    return Lane(PoolEndpoint.keyed("http://127.0.0.1"), FakeServer(latency_s=0.0), FlowControl(settings, RunStats()))


def test_aimd_moves_the_gate_until_the_server_load_steers_it_then_only_steering_does():
    async def go():
        lane = _lane()
        lane.gate.resize(10)
        reply = await lane.client.post("/v1/chat/completions", b"{}")
        for _ in range(40):
            lane.on_reply(1.0, reply, 0.0)
        grown = lane.gate.limit
        lane.flow.on_error(RateLimitError("HTTP 429", status=429))
        backed_off = lane.gate.limit
        lane.steer("vllm:num_requests_running 4\nvllm:num_requests_waiting 30\n")
        steered = lane.gate.limit
        for _ in range(200):
            lane.on_reply(1.0, reply, 0.0)
        lane.flow.on_error(RateLimitError("HTTP 429", status=429))
        return grown, backed_off, steered, lane.gate.limit

    (grown, backed_off, steered, after), _ = run_fake(go())
    assert grown > 10, "AIMD grows the gate on answers"
    assert backed_off < grown, "and backs off on a 429"
    assert steered != backed_off, "the server's queue figures set the gate"
    assert after == steered, "once steered, answers and 429s leave the gate to steering"


def test_an_attempt_outcome_classifies_the_failure_and_advises_where_to_go():
    async def go():
        lone = _lane()
        lone.client.refuse_key = True
        alone = await Pool([lone]).attempt(_job())
        a, b = _lane(), _lane()
        a.client.refuse_key = True
        pooled = await Pool([a, b]).attempt(_job(), lane=a)
        c, d = _lane(), _lane()
        c.client.fail = True
        failing = await Pool([c, d]).attempt(_job(), lane=c)
        return alone, pooled, failing, a

    (alone, pooled, failing, a), _ = run_fake(go())
    assert isinstance(alone.error, AuthenticationError) and "refused the API key" in alone.stop
    assert not alone.reroute, "alone, a refused key stops the run: no lane is left to take the record"
    assert pooled.reroute and pooled.stop is None and a.disabled, "in a pool the lane leaves; the record moves"
    assert isinstance(failing.error, TransportError) and not failing.reroute and failing.stop is None
    assert alone.reply is None and failing.lane is not None


def _job():
    from odie_async.engine.core import Job

    return Job("r0", b'{"model": "m"}', "/v1/chat/completions", 10.0, "digest")


def test_one_breaker_per_mode(tmp_path):
    alone = Engine(_pool_settings(1), tmp_path / "a.jsonl")
    pooled = Engine(_pool_settings(3), tmp_path / "b.jsonl")
    assert alone.policy.breaker is not None and alone.pool.lanes[0].breaker is None, "alone: the run's breaker"
    assert pooled.policy.breaker is None and all(lane.breaker is not None for lane in pooled.pool.lanes)


def test_a_lane_alone_that_keeps_failing_stops_the_run_through_the_run_breaker(tmp_path):
    server = FakeServer(latency_s=0.01, fail=True)
    settings = _pool_settings(1, max_attempts=1, breaker_window=20)

    async def go():
        engine = Engine(settings, tmp_path / "out.jsonl", client=[server])
        with contextlib.suppress(RunAborted):
            async with engine:
                for i in range(500):
                    await engine.submit(f"r{i}", BODY | {"n": i})
        return engine

    engine, _ = run_fake(go())
    assert engine.aborted is not None and "keeps failing" in str(engine.aborted)
    assert server.received < 100, "stopped within a window or so, not after every record"
    lines = (tmp_path / "out.errors.jsonl").read_bytes().splitlines()
    assert all(orjson.loads(line)["error"]["code"] == "server_error" for line in lines)


def test_the_latency_histogram_reads_percentiles_within_one_percent_in_fixed_memory():
    from odie_async.engine.stats import LogHistogram, percentile

    values = [0.001 * 1.37 ** (i % 40) for i in range(20_000)]
    histogram = LogHistogram()
    size = len(histogram.counts)
    for value in values:
        histogram.add(value)
    exact = sorted(values)
    for q in (50, 95, 99):
        assert percentile(exact, q) <= histogram.percentile(q) <= 1.01 * percentile(exact, q)
    assert len(histogram.counts) == size and histogram.max == exact[-1]
    before = histogram.snapshot()
    for _ in range(100):
        histogram.add(5.0)
    assert 5.0 <= histogram.percentile(50, since=before) <= 5.05, "an interval's own percentiles"
    again = LogHistogram.frombytes(histogram.tobytes())
    assert again.total == histogram.total and again.percentile(95) == histogram.percentile(95)


def test_the_bench_the_run_summary_and_a_lane_summarise_a_distribution_one_way():
    from odie_async.bench.points import distribution
    from odie_async.engine.stats import LogHistogram, RunStats, Samples, nearest_rank, percentile, summary

    # nearest rank: the smallest value at or above q % of them (p50 of five is the third)
    assert [nearest_rank(q, 5) for q in (0, 20, 50, 90, 100)] == [1, 1, 3, 5, 5]
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0 and percentile([], 50) is None
    values = [0.010 * (1 + i % 97) for i in range(5_000)]
    stats = RunStats()
    for value in values:
        stats.latencies.add(value)
    exact, engine = distribution(values), stats.as_dict()["latency_ms"]
    assert list(exact) == list(engine) == ["p50", "p90", "p95", "p99", "mean", "max"]
    assert exact == summary(Samples(values), 1000)
    for key in exact:  # the histogram reads at most 1 % high, never low
        assert exact[key] * 0.9999 <= engine[key] <= exact[key] * 1.01 + 0.01, key
    assert summary(LogHistogram()) == dict.fromkeys(exact) and distribution([]) is None


def test_the_answer_is_written_as_it_came_and_a_multi_line_one_is_re_encoded(tmp_path):
    from odie_async.engine.checkpoint import Result
    from odie_async.engine.client import ChatClient

    client = ChatClient("http://127.0.0.1:1")
    raw = b'{"choices":[{"message":{"content":"x"}}],"usage":{"total_tokens":2},"extra":1.50}'
    reply = client.reply("/v1/chat/completions", 200, {}, raw, 0.0)
    assert reply.raw == raw
    line = Result("a", True, reply.body, None, 200, raw=reply.raw).to_line("id1")
    assert raw in line, "the body's own bytes, not a re-encoding (1.50 stays 1.50)"
    assert orjson.loads(line)["response"]["body"] == orjson.loads(raw)
    pretty = b'{\n "choices": [{"message": {"content": "x"}}]\n}'
    assert client.reply("/v1/chat/completions", 200, {}, pretty, 0.0).raw is None, "one line per record"
