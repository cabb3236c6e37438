"""The pool on fake lanes and the fake clock: routing, failover, hedging, outages, a queueing server."""

import asyncio

import pytest

from odie_async.engine.core import Job
from odie_async.engine.lane_control import FlowControl
from odie_async.engine.settings import EngineSettings, PoolEndpoint
from odie_async.engine.stats import RunStats
from odie_async.engine.lanes import OPEN, Lane
from odie_async.engine.pool import Pool, PoolSettings
from odie_async.exceptions import RequestError, RunAborted, TransportError
from tests.fake_upstream import FakeServer
from tests.fakeclock import run_fake


def _flow(concurrency=8):
    return FlowControl(EngineSettings("http://127.0.0.1", concurrency=concurrency, learn_limits=False), RunStats())


def _lanes(*servers, concurrency=8):
    return [Lane(PoolEndpoint.keyed(f"http://127.0.0.1:{i}", name=f"e{i}"), server, _flow(concurrency))
            for i, server in enumerate(servers)]


def _job(n=0, tokens=100.0):
    return Job(f"r{n}", b'{"model": "m"}', "/v1/chat/completions", tokens, "digest")


async def _send_all(pool, count, retries=5):
    async def one(n):
        job, avoid = _job(n), None
        for _ in range(retries):
            outcome = await pool.attempt(job, avoid)
            if outcome.reply is not None:
                return outcome.lane.label
            assert isinstance(outcome.error, TransportError)
            avoid = None
        raise AssertionError("not answered")

    return await asyncio.gather(*(one(n) for n in range(count)))


def test_traffic_follows_capacity():
    fast, slow = FakeServer(latency_s=0.1), FakeServer(latency_s=0.1)
    lanes = _lanes(fast, slow)
    lanes[0].gate.limit = lanes[0].gate.maximum = 24
    lanes[1].gate.limit = lanes[1].gate.maximum = 8
    for lane in lanes:
        lane.adaptive = lane.flow.settings.adaptive = False
    pool = Pool(lanes)
    labels, _ = run_fake(_send_all(pool, 400))
    share = labels.count("e0") / len(labels)
    assert 0.65 <= share <= 0.85, share


def test_a_stuck_lane_is_timed_out_opened_and_its_work_goes_elsewhere():
    good, stuck = FakeServer(latency_s=0.2), FakeServer(stuck=True)
    lanes = _lanes(good, stuck)
    for lane in lanes:  # both lanes have a latency model, as after the run's first minute
        for _ in range(30):
            lane.model.observe(0.2, 100)
    pool = Pool(lanes, PoolSettings(timeout_floor_s=1.0))
    labels, elapsed = run_fake(_send_all(pool, 200))
    assert set(labels) == {"e0"}, "every record was answered by the lane that works"
    assert lanes[1].breaker.state == OPEN or any(s == OPEN for _, s in lanes[1].breaker.transitions)
    assert stuck.cancelled >= 1
    assert elapsed < 30


def test_a_busy_lane_is_not_timed_out_while_it_answers_others():
    server = FakeServer(latency_s=1.0, slots=4)
    (lane,) = _lanes(server, concurrency=16)
    for _ in range(30):
        lane.model.observe(1.0, 100)
    pool = Pool([lane], PoolSettings(timeout_floor_s=1.0, timeout_factor=1.5))
    labels, _ = run_fake(_send_all(pool, 64, retries=1))
    assert len(labels) == 64
    assert server.received == 64, "no request was sent twice"
    assert lane.gate.limit < 16, "a growing queue shrank the lane's concurrency"


def test_hedging_at_the_tail_first_answer_wins_and_the_loser_is_cancelled():
    slow, other = FakeServer(latency_s=0.2), FakeServer(latency_s=0.2)
    lanes = _lanes(slow, other)
    for lane in lanes:
        for _ in range(30):
            lane.model.observe(0.2, 100)
    pool = Pool(lanes, PoolSettings(timeout_floor_s=0.5, hedge_share=0.5), intake_idle=lambda: True)
    pool.attempts = 100  # a run well under way: the share allows a hedge

    async def go():
        background = asyncio.ensure_future(_keep_busy(lanes[0]))
        slow.slow_next = [30.0]
        outcome = await pool.attempt(_job(), avoid=lanes[1])
        background.cancel()
        return outcome.lane, outcome.reply

    (lane, reply), elapsed = run_fake(go())
    assert reply.status == 200
    assert elapsed < 5, "the hedge answered long before the 30 s straggler"
    assert pool.hedges_sent == 1 and pool.hedges_won == 1
    assert slow.cancelled >= 1, "the losing attempt was cancelled"


async def _keep_busy(lane):
    while True:  # answers on the straggler's lane show that the lane itself works
        await lane.client.post("/v1/chat/completions", b"{}")
        lane.last_success = asyncio.get_running_loop().time()


def test_no_hedge_while_intake_still_has_work():
    slow, other = FakeServer(latency_s=0.2), FakeServer(latency_s=0.2)
    lanes = _lanes(slow, other)
    pool = Pool(lanes, PoolSettings(hedge_share=1.0), intake_idle=lambda: False)
    assert not pool.may_hedge()


def test_every_lane_down_waits_then_stops_after_max_outage():
    lanes = _lanes(FakeServer(latency_s=0.0, fail=True), FakeServer(latency_s=0.0, fail=True))
    pool = Pool(lanes, PoolSettings(max_outage_s=60.0))

    async def go():
        sent = 0
        with pytest.raises(RunAborted, match="max-outage"):
            while True:
                await pool.attempt(_job(sent))
                sent += 1
        return sent

    sent, elapsed = run_fake(go())
    assert 60 <= elapsed <= 62
    assert sent < 200, "an open pool waits for probes instead of spinning"


def test_a_recovered_lane_is_probed_and_gets_traffic_back():
    server = FakeServer(latency_s=0.0, fail=True)
    (lane,) = _lanes(server)
    pool = Pool([lane], PoolSettings(max_outage_s=600.0))

    async def go():
        for n in range(20):
            assert isinstance((await pool.attempt(_job(n))).error, RequestError)
        assert lane.breaker.state == OPEN
        server.fail = False
        return (await pool.attempt(_job(99))).reply

    reply, _ = run_fake(go())
    assert reply.status == 200 and lane.breaker.state == "closed"


def test_per_endpoint_model_rewrites_the_body():
    seen = []

    class Recorder(FakeServer):
        async def post(self, path, payload):
            seen.append(payload)
            return await super().post(path, payload)

    lane = Lane(PoolEndpoint.keyed("http://127.0.0.1:1", model="served-name"), Recorder(latency_s=0.0), _flow(4))
    run_fake(Pool([lane]).attempt(_job()))
    assert b'"model":"served-name"' in seen[0]


def test_a_queueing_server_is_kept_full_behind_a_short_queue_and_nothing_is_sent_twice():
    server = FakeServer(latency_s=2.0, slots=16)
    (lane,) = _lanes(server, concurrency=128)
    pool = Pool([lane], PoolSettings(timeout_ceiling_s=5.0))

    async def go():
        await pool.probe_servers(lambda lane: lane.client.metrics())
        watch = asyncio.ensure_future(pool.watch_servers(lambda lane: lane.client.metrics()))
        workers = asyncio.Semaphore(128)  # the engine's workers: far more than the server runs

        async def one(n):
            async with workers:
                return await pool.attempt(_job(n))

        await asyncio.gather(*(one(n) for n in range(400)))
        watch.cancel()

    _, elapsed = run_fake(go())
    assert server.received == 400, "no request was sent twice while the server's queue drained"
    assert server.max_running == 16, "the server's batch was full"
    assert server.max_in_server <= 16 + 2 + 8, "the queue in front of it stayed short"
    assert elapsed < 400 / 16 * 2.0 * 1.2, "throughput stayed near the server's capacity"


def test_a_straggler_is_cut_once_requests_sent_after_it_are_answered():
    server = FakeServer(latency_s=0.2)
    (lane,) = _lanes(server, concurrency=8)
    for _ in range(30):
        lane.model.observe(0.2, 100)
    pool = Pool([lane], PoolSettings(timeout_floor_s=1.0))

    async def go():
        server.slow_next = [30.0]  # the first request stalls; the server answers the others at once
        straggler = asyncio.ensure_future(pool.attempt(_job(0)))
        await asyncio.sleep(0.01)
        await asyncio.gather(*(pool.attempt(_job(n)) for n in range(1, 20)))
        outcome = await straggler
        assert isinstance(outcome.error, TransportError) and "sent after it" in str(outcome.error)

    _, elapsed = run_fake(go())
    assert elapsed < 5, "cut at its adaptive timeout, not after the 30 s stall"
    assert server.cancelled == 1
