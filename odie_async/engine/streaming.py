"""Streamed (server-sent events) completions with per-request timings.

``StreamingClient`` shares ``ChatClient``'s pooled aiohttp session and its error
translation (``status_error``); it sends ``"stream": true`` and reads the answer
chunk by chunk, so each request yields its time to first token, the mean time
between the tokens that followed, its end-to-end latency and its output tokens.
An endpoint that ignores ``stream`` and answers one JSON body still counts: its
first token arrives with the whole answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from ..exceptions import MalformedResponseError, ServerError, TransportError
from .client import ChatClient, Reply, json_object, status_error, transport_errors


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

    def timing(self) -> dict:
        """The timings an output line carries under ``odie batch --stream`` (milliseconds)."""
        itl = self.itl
        return {"ttft_ms": None if self.ttft is None else round(self.ttft * 1000, 2),
                "itl_ms": None if itl is None else round(itl * 1000, 3),
                "latency_ms": round(self.latency * 1000, 2), "output_tokens": self.output_tokens}


def stream_body(body: dict) -> bytes:
    """``body`` as a streaming request that asks for usage in the last chunk."""
    options = dict(body.get("stream_options") or {}) | {"include_usage": True}
    return orjson.dumps(body | {"stream": True, "stream_options": options})


class _Choice:
    """The pieces of one choice, as its deltas arrive."""

    __slots__ = ("parts", "reasoning", "tools", "finish_reason", "role")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.reasoning: list[str] = []
        self.tools: dict[int, dict] = {}
        self.finish_reason: str | None = None
        self.role = "assistant"

    def add(self, choice: dict) -> bool:
        """Take one delta; True when it carried generated text."""
        finish = choice.get("finish_reason")
        if finish:
            self.finish_reason = finish
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            text = choice.get("text")
            if text:
                self.parts.append(text)
            return bool(text)
        content = delta.get("content")
        if content:
            self.parts.append(content)
        if len(delta) == 1 and content is not None:
            return bool(content)  # the common event: one piece of content
        self.role = delta.get("role") or self.role
        reasoning = delta.get("reasoning_content")
        if reasoning:
            self.reasoning.append(reasoning)
        for call in delta.get("tool_calls") or ():
            self._tool(call)
        return bool(content or reasoning or delta.get("tool_calls"))

    def _tool(self, call: dict) -> None:
        """Tool calls come as pieces: an id and a name first, then the arguments a few characters at a time."""
        tool = self.tools.setdefault(call.get("index", len(self.tools)),
                                     {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        tool["id"] = call.get("id") or tool["id"]
        function = call.get("function") or {}
        tool["function"]["name"] += function.get("name") or ""
        tool["function"]["arguments"] += function.get("arguments") or ""

    def message(self, index: int, chat: bool) -> dict:
        """This choice as a non-streamed answer has it."""
        text = "".join(self.parts)
        if not chat:
            return {"index": index, "text": text, "finish_reason": self.finish_reason}
        message: dict = {"role": self.role, "content": text or None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tools:
            message["tool_calls"] = [self.tools[i] for i in sorted(self.tools)]
        return {"index": index, "message": message, "finish_reason": self.finish_reason}


class _Reader:
    """Accumulates the events of one stream."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.first: float | None = None
        self.last: float | None = None
        self.chunks = 0
        self.head: dict = {}
        self.choices: dict[int, _Choice] = {}
        self.usage: dict | None = None
        self.done = False  # [DONE] seen

    def event(self, data: bytes, now: float) -> None:
        chunk = json_object(data, "stream event", body=data[:200])
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise ServerError(f"error in stream: {message}", body=data[:200])
        if not self.head:
            self.head = {k: chunk[k] for k in ("id", "created", "model", "system_fingerprint") if k in chunk}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        generated = False
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                index = choice.get("index") or 0
                state = self.choices.get(index)
                if state is None:
                    state = self.choices[index] = _Choice()
                generated |= state.add(choice)
        if generated:
            self.first = self.first if self.first is not None else now
            self.last = now
            self.chunks += 1

    @property
    def text(self) -> str:
        first = self.choices.get(0)
        return "".join(first.parts) if first else ""

    @property
    def complete(self) -> bool:
        """Whether the stream said it was over: ``[DONE]``, or a finish reason on every choice."""
        return self.done or bool(self.choices) and all(c.finish_reason for c in self.choices.values())

    def body(self, path: str) -> dict:
        """The answer as the endpoint would have sent it without streaming."""
        chat = path.endswith("chat/completions")
        body = {"id": self.head.get("id"), "object": "chat.completion" if chat else "text_completion"}
        body |= {k: v for k, v in self.head.items() if k != "id"}
        body["choices"] = [self.choices[i].message(i, chat) for i in sorted(self.choices)]
        if self.usage is not None:
            body["usage"] = self.usage
        return body

    def reply(self, status: int, end: float) -> StreamReply:
        usage = self.usage or {}
        tokens = usage.get("completion_tokens") or self.chunks
        ttft = None if self.first is None else self.first - self.start
        last = None if self.last is None else self.last - self.start
        return StreamReply(status, ttft, last, end - self.start, tokens, usage.get("prompt_tokens"),
                           self.chunks, self.text)


class StreamingClient(ChatClient):
    """``ChatClient`` plus ``stream()``: one request, read as server-sent events."""

    async def stream(self, path: str, body: dict) -> StreamReply:
        """Send ``body`` with streaming on; raise a ``RequestError`` subclass on any failure."""
        start = time.perf_counter()
        status, _, answer = await self._streamed(path, stream_body(body), start)
        if isinstance(answer, bytes):
            return _whole(status, answer, start)
        return answer.reply(status, time.perf_counter())

    async def _streamed(self, path: str, data: bytes, start: float):
        """``(status, headers, a _Reader)``; ``(status, headers, raw body)`` where the endpoint did not stream."""
        with transport_errors(redact_text=self._redact_text):
            async with self._session.post(self.url_for(path), data=data) as resp:
                if resp.status >= 300:
                    raise status_error(resp.status, await resp.read(), resp.headers)
                if "text/event-stream" not in resp.headers.get("content-type", ""):
                    return resp.status, resp.headers, await resp.read()
                reader = _Reader(start)
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        reader.done = True
                        break
                    reader.event(data, time.perf_counter())
                return resp.status, resp.headers, reader

    async def models(self) -> list[str]:
        """The model ids ``GET /v1/models`` lists."""
        with transport_errors(redact_text=self._redact_text):
            async with self._session.get(self.url_for("/v1/models")) as resp:
                raw = await resp.read()
                if resp.status >= 300:
                    raise status_error(resp.status, raw, resp.headers)
        listing = json_object(raw, "/v1/models answer", resp.status, raw[:200])
        try:
            return [m["id"] for m in listing["data"]]
        except (KeyError, TypeError) as exc:
            raise MalformedResponseError(f"/v1/models answer is not a model list: {exc}", body=raw[:200]) from exc


class StreamingChatClient(StreamingClient):
    """The engine's transport under ``--stream``: ``post`` streams, then hands back the whole answer.

    The answer is put together into the body a request without streaming gets, so output files
    read the same either way, and the reply carries the request's timings (``Reply.timing``). A
    stream that ends before it says it is over (``[DONE]`` or a finish reason on every choice) is
    a ``TransportError``, retried like a reset connection, never a truncated answer kept.
    """

    async def post(self, path: str, payload: bytes) -> Reply:
        """Send one request, streamed; raise a ``RequestError`` subclass on any failure."""
        if not path.endswith("completions"):  # embeddings: nothing to stream
            return await super().post(path, payload)
        start = time.perf_counter()
        status, headers, answer = await self._streamed(path, stream_body(orjson.loads(payload)), start)
        if isinstance(answer, bytes):  # the endpoint answered in one piece
            reply = self.reply(path, status, headers, answer, start)
            reply.timing = _whole(status, answer, start).timing() | {"itl_ms": None}  # no tokens apart to time
            return reply
        if not answer.complete:
            raise TransportError("the stream ended before the answer was complete (no [DONE], no finish reason)")
        end = time.perf_counter()
        reply = self.reply(path, status, headers, orjson.dumps(answer.body(path)), start)
        reply.timing = answer.reply(status, end).timing()
        return reply


def _whole(status: int, raw: bytes, start: float) -> StreamReply:
    """An endpoint that answered without streaming: the first token came with everything."""
    end = time.perf_counter()
    body = json_object(raw, f"HTTP {status} body", status)
    try:
        choice = body["choices"][0]
        text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise MalformedResponseError(f"HTTP {status} body is not a completion: {exc}", status=status, body=raw) from exc
    usage = body.get("usage") or {}
    latency = end - start
    first = latency if text else None
    return StreamReply(status, first, first, latency, usage.get("completion_tokens") or 0,
                       usage.get("prompt_tokens"), 1 if text else 0, text)
