"""The mock endpoint's streamed answers and its server-like request queue.

``--stream`` answers requests that ask for ``"stream": true`` with server-sent
events: the first token after ``--ttft-ms`` (else the ``--latency-ms`` draw),
then one token every ``--itl-ms``, a usage chunk when ``stream_options.include_usage``
asks for one, and ``data: [DONE]``. Each token is due at a fixed offset from the
start, so timer jitter never accumulates.

``--max-concurrency N`` serves N requests at a time and queues the rest in
arrival order, the way a real server's batch is full: throughput then tops out
at N over the service time while latency grows with the queue, which gives load
tests a known knee.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import orjson

_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")


class Slots:
    """Requests served at once (a FIFO queue behind ``limit`` slots; 0: unlimited) and their tasks."""

    def __init__(self, limit: int) -> None:
        self.gate = asyncio.Semaphore(limit) if limit > 0 else contextlib.nullcontext()
        self.tasks: set[asyncio.Task] = set()  # held until done: the loop keeps only weak references
        self.running = 0
        self.waiting = 0

    def metrics(self) -> str:
        """vLLM's load gauges for this queue, as its ``/metrics`` shows them."""
        return (f"vllm:num_requests_running{{model_name=\"mock\"}} {self.running}\n"
                f"vllm:num_requests_waiting{{model_name=\"mock\"}} {self.waiting}\n")


def takes(state, body: dict) -> bool:
    """Whether this module answers the request (queueing is on, or a stream was asked for and allowed)."""
    settings = state.settings
    return settings.max_concurrency > 0 or (settings.stream and bool(body.get("stream")))


def answer(protocol, path: str, body: dict, prompt_tokens: int) -> None:
    """Answer one completion request from a task: wait for a slot, then reply or stream."""
    task = asyncio.get_running_loop().create_task(_serve(protocol, path, body, prompt_tokens))
    slots = protocol.state.slots
    slots.tasks.add(task)
    task.add_done_callback(slots.tasks.discard)


async def _serve(protocol, path: str, body: dict, prompt_tokens: int) -> None:
    state = protocol.state
    slots = state.slots
    slots.waiting += 1
    async with slots.gate:
        slots.waiting -= 1
        slots.running += 1
        try:
            if state.settings.stream and body.get("stream"):
                await _stream(protocol, path, body, prompt_tokens)
            else:
                await asyncio.sleep(state.delay())
                protocol._send(protocol._completion(path, body, prompt_tokens))
        finally:
            slots.running -= 1


async def _stream(protocol, path: str, body: dict, prompt_tokens: int) -> None:
    state = protocol.state
    loop = asyncio.get_running_loop()
    start = loop.time()
    settings = state.settings
    ttft = settings.ttft_ms / 1000.0 if settings.ttft_ms else state.delay()
    pieces = _PIECE.findall(state.responder(body)) or [""]
    chat = path.endswith("chat/completions")
    head = {"id": f"cmpl-{state.requests['200']:x}", "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": body.get("model") or settings.model}
    protocol._send(_headers(state))
    for i, piece in enumerate(pieces):
        await _until(loop, start + ttft + i * settings.itl_ms / 1000.0)
        if protocol.closed:
            return
        protocol._send(_event(head | {"choices": [_choice(chat, piece, None, first=i == 0)]}))
    tail = [head | {"choices": [_choice(chat, "", "stop")]}]
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                 "total_tokens": prompt_tokens + len(pieces)}
        tail.append(head | {"choices": [], "usage": usage})
    protocol._send(b"".join(_event(chunk) for chunk in tail) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def _until(loop, deadline: float) -> None:
    delay = deadline - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _choice(chat: bool, piece: str, finish: str | None, first: bool = False) -> dict:
    if not chat:
        return {"index": 0, "text": piece, "finish_reason": finish}
    delta = {"role": "assistant", "content": piece} if first else ({"content": piece} if piece else {})
    return {"index": 0, "delta": delta, "finish_reason": finish}


def _headers(state) -> bytes:
    head = ["HTTP/1.1 200 OK", "content-type: text/event-stream", "transfer-encoding: chunked",
            f"x-request-id: req-{state.requests['total']:x}"]
    head += [f"{k}: {v}" for k, v in state.limit_headers()]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def _event(chunk: dict) -> bytes:
    return _chunk(b"data: " + orjson.dumps(chunk) + b"\n\n")


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"
