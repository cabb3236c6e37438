"""The streamed request path against the mock's streams, queue and faults."""

import asyncio
import time

import pytest

from odie_async.endpoints.mock_server import MockServer, MockSettings, count_tokens
from odie_async.engine.streaming import StreamingClient, _Reader
from odie_async.exceptions import MalformedResponseError, RateLimitError, ServerError, TransportError
from tests.helpers import run

BODY = {"model": "m", "messages": [{"role": "user", "content": "Extract the names, please."}], "max_tokens": 24}


async def _streams(settings: MockSettings, n: int = 1, path: str = "/v1/chat/completions", body=BODY):
    async with MockServer(settings=settings) as server, StreamingClient(server.base_url) as client:
        return await asyncio.gather(*(client.stream(path, body) for _ in range(n)))


def test_stream_times_first_token_and_the_tokens_after_it():
    (reply,) = run(_streams(MockSettings(stream=True, ttft_ms=40, itl_ms=5)))
    assert reply.status == 200 and reply.chunks == reply.output_tokens == 24
    assert reply.prompt_tokens == count_tokens(BODY["messages"][0]["content"])  # from the usage chunk
    assert 0.040 <= reply.ttft < 0.060
    assert 0.0045 <= reply.itl < 0.0060
    assert reply.latency >= 0.040 + 23 * 0.005  # tokens are due at fixed offsets from the start
    assert len(reply.text.split()) == 24


def test_completions_path_streams_text_chunks():
    body = {"model": "m", "prompt": "one two", "max_tokens": 6}
    (reply,) = run(_streams(MockSettings(stream=True, ttft_ms=5, itl_ms=1), path="/v1/completions", body=body))
    assert reply.output_tokens == 6 and reply.ttft is not None


def test_endpoint_that_ignores_stream_still_yields_timings():
    (reply,) = run(_streams(MockSettings(latency_ms=30)))  # no --stream: one JSON answer
    assert reply.output_tokens == 24 and reply.ttft == reply.latency >= 0.03 and reply.itl == 0.0


def test_queue_serves_max_concurrency_at_a_time():
    settings = MockSettings(latency_ms=100, max_concurrency=2)
    start = time.perf_counter()
    replies = run(_streams(settings, n=6))
    latencies = sorted(round(r.latency, 1) for r in replies)
    assert latencies == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]
    assert time.perf_counter() - start < 1.0


def test_errors_are_translated():
    async def go():
        async with MockServer(settings=MockSettings(rpm=60, stream=True)) as server, \
                StreamingClient(server.base_url) as client:
            await client.stream("/v1/chat/completions", BODY)
            with pytest.raises(RateLimitError) as caught:
                await client.stream("/v1/chat/completions", BODY)
            return caught.value

    assert run(go()).retry_after is not None
    reader = _Reader(0.0)
    with pytest.raises(MalformedResponseError):
        reader.event(b'{"choices": [{"delta": {"content": "a"', 1.0)
    with pytest.raises(ServerError):
        reader.event(b'{"error": {"message": "overloaded"}}', 1.0)

    async def refused():
        async with StreamingClient("http://127.0.0.1:9/v1") as client:
            await client.stream("/v1/chat/completions", BODY)

    with pytest.raises(TransportError):
        run(refused())
