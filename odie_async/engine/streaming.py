"""Streamed (server-sent events) completions with per-request timings.

``StreamingClient`` shares ``ChatClient``'s pooled aiohttp session and its error
translation (``status_error``); it sends ``"stream": true`` and reads the answer
chunk by chunk, so each request yields its time to first token, the mean time
between the tokens that followed, its end-to-end latency and its output tokens.
An endpoint that ignores ``stream`` and answers one JSON body still counts: its
first token arrives with the whole answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import aiohttp
import orjson

from ..exceptions import MalformedResponseError, ServerError, TransportError
from .client import ChatClient, status_error


@dataclass(slots=True)
class StreamReply:
    """One streamed answer and its timings (seconds, from the moment the request was sent)."""

    status: int
    ttft: float | None  # first content token; None when the answer held no content
    last_token: float | None  # last content token
    latency: float  # until the stream ended
    output_tokens: int
    prompt_tokens: int | None
    chunks: int  # content chunks received
    text: str

    @property
    def itl(self) -> float | None:
        """Mean inter-token latency: time after the first token over the tokens that followed it."""
        if self.ttft is None or self.last_token is None or self.output_tokens < 2:
            return None
        return (self.last_token - self.ttft) / (self.output_tokens - 1)


def stream_body(body: dict) -> bytes:
    """``body`` as a streaming request that asks for usage in the last chunk."""
    options = dict(body.get("stream_options") or {}) | {"include_usage": True}
    return orjson.dumps(body | {"stream": True, "stream_options": options})


def _delta_text(chunk: dict) -> str:
    choices = chunk.get("choices") or ()
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or delta.get("reasoning_content") or ""
    return choice.get("text") or ""


class _Reader:
    """Accumulates the events of one stream."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.first: float | None = None
        self.last: float | None = None
        self.chunks = 0
        self.parts: list[str] = []
        self.usage: dict | None = None

    def event(self, data: bytes, now: float) -> None:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise MalformedResponseError(f"stream event is not JSON: {exc}", body=data[:200]) from exc
        if not isinstance(chunk, dict):
            raise MalformedResponseError("stream event is not a JSON object", body=data[:200])
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise ServerError(f"error in stream: {message}", body=data[:200])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        text = _delta_text(chunk)
        if text:
            self.first = self.first if self.first is not None else now
            self.last = now
            self.chunks += 1
            self.parts.append(text)

    def reply(self, status: int, end: float) -> StreamReply:
        usage = self.usage or {}
        tokens = usage.get("completion_tokens") or self.chunks
        ttft = None if self.first is None else self.first - self.start
        last = None if self.last is None else self.last - self.start
        return StreamReply(status, ttft, last, end - self.start, tokens, usage.get("prompt_tokens"),
                           self.chunks, "".join(self.parts))


class StreamingClient(ChatClient):
    """``ChatClient`` plus ``stream()``: one request, read as server-sent events."""

    async def stream(self, path: str, body: dict) -> StreamReply:
        """Send ``body`` with streaming on; raise a ``RequestError`` subclass on any failure."""
        start = time.perf_counter()
        with _transport_errors():
            async with self._session.post(self.url_for(path), data=stream_body(body)) as resp:
                if resp.status >= 300:
                    raise status_error(resp.status, await resp.read(), resp.headers)
                if "text/event-stream" not in resp.headers.get("content-type", ""):
                    return _whole(resp.status, await resp.read(), start)
                reader = _Reader(start)
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    reader.event(data, time.perf_counter())
                return reader.reply(resp.status, time.perf_counter())

    async def models(self) -> list[str]:
        """The model ids ``GET /v1/models`` lists."""
        with _transport_errors():
            async with self._session.get(self.url_for("/v1/models")) as resp:
                raw = await resp.read()
                if resp.status >= 300:
                    raise status_error(resp.status, raw, resp.headers)
        try:
            return [m["id"] for m in orjson.loads(raw)["data"]]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise MalformedResponseError(f"/v1/models answer is not a model list: {exc}", body=raw[:200]) from exc


@contextlib.contextmanager
def _transport_errors():
    """aiohttp's timeouts and connection errors as ``TransportError``."""
    try:
        yield
    except asyncio.TimeoutError as exc:
        raise TransportError("no answer within the timeout") from exc
    except aiohttp.ClientError as exc:
        raise TransportError(f"{type(exc).__name__}: {exc}") from exc


def _whole(status: int, raw: bytes, start: float) -> StreamReply:
    """An endpoint that answered without streaming: the first token came with everything."""
    end = time.perf_counter()
    try:
        body = orjson.loads(raw)
        choice = body["choices"][0]
        text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise MalformedResponseError(f"HTTP {status} body is not a completion: {exc}", status=status, body=raw) from exc
    usage = body.get("usage") or {}
    latency = end - start
    first = latency if text else None
    return StreamReply(status, first, first, latency, usage.get("completion_tokens") or 0,
                       usage.get("prompt_tokens"), 1 if text else 0, text)
