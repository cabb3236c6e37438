import asyncio

import pytest

from odie_async.engine.limits import AdaptiveConcurrency, LatencyWatch, RateLimits, parse_duration
from tests.fakeclock import run_fake


@pytest.mark.parametrize(
    "text,seconds",
    [("1", 1.0), ("0.25", 0.25), ("20ms", 0.02), ("1s", 1.0), ("6m0s", 360.0), ("1m30.5s", 90.5), ("", None), ("soon", None)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_rpm_budget_paces_requests_at_the_limit():
    async def go():
        limits = RateLimits(rpm=6000)
        for _ in range(1050):
            await limits.acquire()

    _, elapsed = run_fake(go())
    # 100 requests/s with a half-second (50 request) burst: 1000 more take 10 s
    assert 9.9 <= elapsed <= 10.1


def test_tpm_budget_is_corrected_by_reported_usage():
    async def go(actual):
        limits = RateLimits(tpm=60_000)  # 1,000 tokens/s, 500-token burst
        for _ in range(20):
            await limits.acquire(500)
            limits.settle_tokens(500, actual)

    _, overestimated = run_fake(go(500))
    _, refunded = run_fake(go(100))
    assert overestimated >= 9.0
    assert refunded <= 2.5


def test_request_larger_than_the_burst_still_passes_and_is_charged_in_full():
    async def go():
        limits = RateLimits(tpm=6_000)  # 100 tokens/s, burst 50
        await limits.acquire(500)
        await limits.acquire(10)

    _, elapsed = run_fake(go())
    assert elapsed >= 4.5  # the 450-token debt had to drain first


def test_pause_holds_every_sender():
    async def go():
        limits = RateLimits()
        limits.pause_for(3.0)
        assert limits.active
        await asyncio.gather(*(limits.acquire() for _ in range(5)))

    _, elapsed = run_fake(go())
    assert 3.0 <= elapsed < 3.1


def test_unlimited_budget_is_inactive():
    assert not RateLimits().active


def test_aimd_shrinks_on_congestion_and_grows_back():
    gate = AdaptiveConcurrency(100)
    gate.on_congestion(now=0.0)
    assert gate.limit == 70
    gate.on_congestion(now=0.5)  # within the cool-down: ignored
    assert gate.limit == 70
    gate.on_congestion(now=2.0)
    assert gate.limit == 49
    for _ in range(49):
        gate.on_success()
    assert gate.limit == 50
    for _ in range(10_000):
        gate.on_success()
    assert gate.limit == 100


def test_gate_blocks_beyond_its_limit_and_wakes_in_order():
    async def go():
        gate = AdaptiveConcurrency(2)
        await gate.acquire()
        await gate.acquire()
        waiter = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        gate.release()
        await asyncio.sleep(0)
        assert waiter.done() and gate.active == 2

    run_fake(go())


def test_latency_watch_flags_a_sustained_climb_only():
    watch = LatencyWatch()
    assert not any(watch.observe(0.1) for _ in range(200))
    assert not watch.observe(0.4)  # one slow reply is noise
    assert any(watch.observe(2.0) for _ in range(100))


def test_a_learned_rate_resizes_the_bucket_in_place_and_waiters_keep_their_turn():
    async def go():
        limits = RateLimits(rpm=600)  # 10/s, burst 5
        for _ in range(5):
            await limits.acquire()
        loop = asyncio.get_running_loop()
        start = loop.time()
        waiters = [asyncio.ensure_future(limits.acquire()) for _ in range(20)]
        await asyncio.sleep(0.05)
        limits.set_rpm(6000)  # 100/s, burst 50: the 20 waiting go within a fraction of a second
        await asyncio.gather(*waiters)
        return loop.time() - start

    waited, _ = run_fake(go())
    assert waited < 0.5, waited


def test_a_limit_set_where_there_was_none_starts_spent_with_no_burst():
    async def go():
        limits = RateLimits()
        limits.set_rpm(600)  # 10/s: 10 requests take about a second, not an instant burst of 5
        for _ in range(10):
            await limits.acquire()

    _, elapsed = run_fake(go())
    assert 0.9 <= elapsed <= 1.1


def test_the_gate_fast_path_takes_a_free_slot_without_waiting():
    gate = AdaptiveConcurrency(2)
    assert gate.try_acquire() and gate.try_acquire()
    assert not gate.try_acquire(), "no slot free: the caller waits in acquire()"
    gate.release()
    assert gate.try_acquire() and gate.active == 2
