"""``odie batch --stream``: streamed requests, whole answers stored, each with its timings."""

import asyncio
import subprocess
import sys

import orjson
import pytest
from aiohttp import web

import odie_async
from odie_async.endpoints.mock_server import MockServer, MockSettings
from odie_async.engine.streaming import _Reader
from tests.helpers import write_requests

ODIE = [sys.executable, "-m", "odie_async"]


def _lines(path):
    return {line["custom_id"]: line for line in map(orjson.loads, path.read_bytes().splitlines())}


def _batch(tmp_path, settings: MockSettings, stream: bool, n: int = 12, name: str = "out"):
    requests = write_requests(tmp_path / "in.jsonl", n)

    async def go():
        async with MockServer(settings=settings) as server:
            summary = await odie_async.arun_batch(requests, tmp_path / f"{name}.jsonl", base_url=server.base_url,
                                                  progress=False, stream=stream)
            return summary, server.request_count

    summary, sent = asyncio.run(go())
    return summary, _lines(tmp_path / f"{name}.jsonl"), sent


def test_streamed_answers_are_stored_whole_with_their_timings(tmp_path):
    settings = MockSettings(stream=True, ttft_ms=40, itl_ms=5)
    summary, streamed, sent = _batch(tmp_path, settings, stream=True)
    _, plain, _ = _batch(tmp_path, MockSettings(latency_ms=5), stream=False, name="plain")
    assert sent == 12 and summary["succeeded"] == 12
    for custom_id, line in streamed.items():
        body, timing = line["response"]["body"], line["response"]["timing"]
        same = plain[custom_id]["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "stop"
        assert body["choices"][0]["message"] == same["choices"][0]["message"], "the same answer, put together"
        assert body["usage"] == same["usage"]
        assert timing["ttft_ms"] >= 40 and timing["itl_ms"] > 0  # no token before it was due
        assert timing["output_tokens"] == body["usage"]["completion_tokens"]
        assert timing["latency_ms"] >= 40 + (timing["output_tokens"] - 1) * 5  # tokens due at fixed offsets
        assert "timing" not in plain[custom_id]["response"], "plain runs keep the Batch API's lines"
    # One late token moves one request's figures; the medians must match the mock's truth (40 ms, 5 ms).
    assert 40 <= summary["ttft_ms"]["p50"] < 80 and 4.5 <= summary["itl_ms"]["p50"] < 8


def test_an_endpoint_that_does_not_stream_still_gives_a_timing(tmp_path):
    summary, lines, _ = _batch(tmp_path, MockSettings(latency_ms=30), stream=True, n=3)
    for line in lines.values():
        timing = line["response"]["timing"]
        assert timing["ttft_ms"] == timing["latency_ms"] >= 30, "the first token came with the whole answer"
        assert timing["itl_ms"] is None
        assert line["response"]["body"]["choices"][0]["message"]["content"]


async def _cut_once_server(cut: list[int]):
    """Streams its first answer halfway and ends it cleanly (no finish reason, no [DONE]); then whole ones."""
    async def handle(request):
        body = await request.json()
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        words = ["alpha ", "beta ", "gamma"]
        for i, word in enumerate(words):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
            await response.write(b"data: " + orjson.dumps({"id": "x", "choices": [{"index": 0, "delta": delta}]}) + b"\n\n")
            if not cut:
                cut.append(1)
                await response.write_eof()
                return response
        await response.write(b'data: {"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n')
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"


def test_a_stream_cut_short_is_retried_never_stored_truncated(tmp_path):
    requests = write_requests(tmp_path / "in.jsonl", 1)

    async def go():
        cut: list[int] = []
        runner, url = await _cut_once_server(cut)
        try:
            return await odie_async.arun_batch(requests, tmp_path / "out.jsonl", base_url=url, progress=False,
                                               stream=True), cut
        finally:
            await runner.cleanup()

    summary, cut = asyncio.run(go())
    (line,) = _lines(tmp_path / "out.jsonl").values()
    assert cut == [1] and summary["retries"] == 1 and summary["retries_by_reason"] == {"transport_error": 1}
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "alpha beta gamma"


def test_tool_calls_and_several_choices_are_put_together():
    reader = _Reader(0.0)
    events = [
        {"id": "c1", "model": "m", "created": 7, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_1", "function": {"name": "lookup", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]}}]},
        {"choices": [{"index": 1, "delta": {"content": "second"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]},
                      "finish_reason": "tool_calls"}]},
        {"choices": [{"index": 1, "delta": {}, "finish_reason": "length"}], "usage": {"completion_tokens": 4}},
    ]
    for i, event in enumerate(events):
        reader.event(orjson.dumps(event), 0.1 * (i + 1))
    assert reader.complete
    body = reader.body("/v1/chat/completions")
    first, second = body["choices"]
    assert body["id"] == "c1" and body["model"] == "m" and body["usage"] == {"completion_tokens": 4}
    assert first["message"]["tool_calls"] == [{"id": "call_1", "type": "function",
                                               "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]
    assert first["finish_reason"] == "tool_calls" and first["message"]["content"] is None
    assert second == {"index": 1, "message": {"role": "assistant", "content": "second"}, "finish_reason": "length"}


def test_stream_in_a_body_is_refused_before_anything_is_sent(tmp_path):
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}}
    (tmp_path / "in.jsonl").write_bytes(orjson.dumps(line) + b"\n")
    done = subprocess.run(ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                                  "--base-url", "http://127.0.0.1:9/v1", "--no-progress"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{tmp_path / 'in.jsonl'}:1" in done.stderr and "--stream" in done.stderr


@pytest.mark.parametrize("how", ["flag", "config"])
def test_odie_batch_stream_from_the_command_line_or_a_config(tmp_path, how):
    write_requests(tmp_path / "in.jsonl", 4)
    (tmp_path / "run.yaml").write_text("engine:\n  stream: true\n")
    option = ["--stream"] if how == "flag" else ["--config", str(tmp_path / "run.yaml")]

    async def go():
        async with MockServer(settings=MockSettings(stream=True, ttft_ms=20, itl_ms=2)) as server:
            proc = await asyncio.create_subprocess_exec(
                *ODIE, "batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                "--base-url", server.base_url, "--no-progress", *option)
            return await asyncio.wait_for(proc.wait(), 60)

    assert asyncio.run(go()) == 0
    lines = _lines(tmp_path / "out.jsonl")
    assert len(lines) == 4 and all(line["response"]["timing"]["ttft_ms"] >= 20 for line in lines.values())
    summary = orjson.loads((tmp_path / "out.summary.json").read_bytes())
    assert summary["ttft_ms"]["p50"] >= 20


def test_provider_batch_mode_refuses_stream(tmp_path):
    write_requests(tmp_path / "in.jsonl", 1)
    done = subprocess.run(ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                                  "--mode", "provider-batch", "--provider", "openai", "--stream",
                                  "--base-url", "http://127.0.0.1:9/v1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--stream" in done.stderr
