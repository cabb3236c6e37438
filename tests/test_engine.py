import asyncio
import socket

import pytest
from structlog.testing import capture_logs

from odie_async.engine.breaker import FailureBreaker
from odie_async.engine.core import Engine, EngineSettings
from odie_async.exceptions import RunAborted
from odie_async.endpoints.mock_server import MockServer, MockSettings
from tests.helpers import ids_in, run
from tests.scripted_server import ScriptedServer

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _settings(url, **kw):
    kw = {"concurrency": 8, "max_attempts": 4, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5} | kw
    return EngineSettings(base_url=url, **kw)


async def _submit_all(engine, n, prefix="r"):
    for i in range(n):
        await engine.submit(f"{prefix}{i}", BODY | {"messages": [{"role": "user", "content": f"q{i}"}]})


def test_every_record_ends_once_in_output_or_errors_under_faults(tmp_path):
    out, err = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"

    async def go():
        settings = MockSettings(fault_rate=0.2, seed=7, stall_s=0.5)
        async with MockServer(settings=settings) as server:
            async with Engine(_settings(server.base_url, timeout_s=0.3, max_attempts=3), out) as engine:
                await _submit_all(engine, 400)
            return engine.stats, server.state.requests

    stats, requests = run(go())
    counts = ids_in(out, err)
    assert len(counts) == 400 and set(counts.values()) == {1}
    assert stats.retries > 0 and stats.succeeded > 300
    assert requests["fault_stall"] and requests["fault_reset"] and requests["fault_malformed"]


def test_client_errors_are_final_at_once_and_kept_with_their_reason(tmp_path):
    out = tmp_path / "out.jsonl"

    async def go():
        async with ScriptedServer([(400, {})]) as server:
            async with Engine(_settings(server.base_url, concurrency=1), out) as engine:
                first = await engine.call("a", BODY)
                second = await engine.call("b", BODY)
            return first, second, len(server.seen)

    first, second, sent = run(go())
    assert not first.ok and first.attempts == 1 and first.error["code"] == "invalid_request"
    assert "scripted 400" in first.error["message"]
    assert second.ok and sent == 2


def test_retry_after_is_honoured(tmp_path):
    async def go():
        async with ScriptedServer([(429, {"retry-after-ms": "400"}), (503, {})]) as server:
            async with Engine(_settings(server.base_url, concurrency=1), tmp_path / "o.jsonl") as engine:
                result = await engine.call("a", BODY)
            return result, server.times, engine.stats

    result, times, stats = run(go())
    assert result.ok and result.attempts == 3
    assert times[1] - times[0] >= 0.39
    assert stats.rate_limited == 1 and stats.retries == 2


def test_call_is_answered_from_the_checkpoint_on_a_rerun(tmp_path):
    out = tmp_path / "out.jsonl"

    async def go():
        async with MockServer() as server:
            for _ in range(2):
                async with Engine(_settings(server.base_url), out) as engine:
                    results = await asyncio.gather(*(engine.call(f"s:{i}", BODY | {"n": i}) for i in range(20)))
            return results, server.request_count

    results, sent = run(go())
    assert sent == 20
    assert all(r.ok and r.cached and r.content for r in results)


def test_wrong_key_stops_the_run_and_the_key_is_never_written(tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    secret = "sk-test-0123456789abcdef"

    async def go():
        async with MockServer(settings=MockSettings(api_key="the-right-key")) as server:
            with capture_logs() as logs:
                with pytest.raises(RunAborted) as info:
                    async with Engine(_settings(server.base_url, api_key=secret), out) as engine:
                        await _submit_all(engine, 200)
            return info.value, logs, engine

    error, logs, engine = run(go())
    assert "refused the API key" in str(error)
    assert not ids_in(out, engine.store.errors)  # nothing marked done: a rerun with the right key sends all
    written = out.read_text() + engine.store.errors.read_text() + repr(logs) + str(error) + repr(engine.settings)
    assert secret not in written


def test_endpoint_down_stops_within_seconds(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once we leave: nothing listens there

    async def go():
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(RunAborted) as info:
            async with Engine(_settings(f"http://127.0.0.1:{port}/v1", max_attempts=100), tmp_path / "o.jsonl") as engine:
                await _submit_all(engine, 1000)
        return info.value, loop.time() - start

    error, elapsed = run(go())
    assert "keeps failing" in str(error) and "transport_error" in str(error)
    assert elapsed < 10


def test_breaker_needs_a_sustained_failure_rate():
    breaker = FailureBreaker(window=50, threshold=0.8, min_samples=20)
    for i in range(200):  # 20 % failures never trip
        assert not breaker.record(i % 5 != 0, "x")
    tripped = [breaker.record(False, "down") for _ in range(50)]
    assert any(tripped) and "down" in breaker.describe()


def test_shutdown_drops_queued_records_and_reports_counts(tmp_path):
    out = tmp_path / "out.jsonl"

    async def go():
        async with MockServer(settings=MockSettings(latency_ms=300)) as server:
            engine = Engine(_settings(server.base_url, concurrency=4, queue_size=50), out)
            async with engine:
                producer = asyncio.ensure_future(_submit_all(engine, 1000))
                await asyncio.sleep(0.1)
                engine.request_stop()
                await asyncio.wait([producer])
            return engine.shutdown_report, server.request_count

    report, sent = run(go())
    assert report["in_flight_at_stop"] == 4 and report["cancelled_in_flight"] == 0
    assert report["not_started"] >= 40
    assert len(ids_in(out)) == sent == 4  # drained, not cancelled: every sent request was kept


def test_a_stop_tells_callers_of_records_never_sent_at_once(tmp_path):
    """``call`` awaiters of queued records learn at the stop, not at shutdown: a caller that outlives its
    cancellation (the pipeline's tasks, under a swallowed cancel) must not wait forever on a dropped record."""
    async def go():
        async with MockServer(settings=MockSettings(latency_ms=300)) as server:
            engine = Engine(_settings(server.base_url, concurrency=2, adaptive=False), tmp_path / "out.jsonl",
                            keep_bodies=True)
            async with engine:
                calls = [asyncio.ensure_future(engine.call(f"r{i}", BODY | {"n": i})) for i in range(6)]
                await asyncio.sleep(0.1)
                engine.request_stop()
                done, pending = await asyncio.wait(calls[2:], timeout=0.2)  # long before the 300 ms answers
                outcomes = [type(task.exception()).__name__ for task in done]
                sent = await asyncio.gather(*calls[:2])
            return outcomes, len(pending), [r.ok for r in sent]

    outcomes, pending, sent = run(go())
    assert outcomes == ["RunAborted"] * 4 and pending == 0
    assert sent == [True, True]  # the two in flight were drained, as before


def test_rpm_limit_is_held_against_an_enforcing_server(tmp_path):
    async def go():
        async with MockServer(settings=MockSettings(rpm=1200)) as server:
            async with Engine(_settings(server.base_url, concurrency=32, rpm=1200), tmp_path / "o.jsonl") as engine:
                start = asyncio.get_running_loop().time()
                await _submit_all(engine, 70)
                await engine.join()
                elapsed = asyncio.get_running_loop().time() - start
            return elapsed, server.state.requests

    elapsed, requests = run(go())
    assert requests["429"] == 0
    assert 2.5 <= elapsed <= 4.0  # 60 beyond a 10-request burst at 20 requests/s
