"""A scripted OpenAI-compatible upstream that lives on the event loop's clock: no socket.

``FakeServer`` answers ``post(path, payload)`` like ``ChatClient`` does, after a
latency drawn per request, from a fixed number of running slots with a FIFO
queue in front (as vLLM runs its batch), or never (``stuck``). Run it on the
fake-clock loop (tests/fakeclock.py) and minutes pass in milliseconds.
"""

from __future__ import annotations

import asyncio
import collections

from odie_async.engine.client import Reply
from odie_async.exceptions import AuthenticationError, ServerError, TransportError


class FakeServer:
    """One endpoint. ``slots`` requests run at once (None: unlimited); the rest wait in order."""

    def __init__(self, latency_s: float = 0.2, slots: int | None = None, per_token_s: float = 0.0,
                 fail: bool = False, stuck: bool = False, refuse_key: bool = False) -> None:
        self.latency_s = latency_s
        self.per_token_s = per_token_s
        self.slots = slots
        self.fail = fail
        self.stuck = stuck
        self.refuse_key = refuse_key  # every request answered 401
        self.running = 0
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.received = 0
        self.answered = 0
        self.cancelled = 0
        self.max_running = 0
        self.max_in_server = 0  # running + waiting, at its highest
        self.slow_next: list[float] = []  # extra seconds for the next requests, one each

    async def __aenter__(self) -> "FakeServer":
        return self

    async def __aexit__(self, *exc_info) -> None:
        return None

    def metrics_text(self) -> str:
        """vLLM's gauges for this server's current state."""
        return (f"vllm:num_requests_running {self.running}\n"
                f"vllm:num_requests_waiting {len(self.waiting)}\n")

    async def metrics(self) -> str:
        return self.metrics_text()

    async def post(self, path: str, payload: bytes) -> Reply:
        loop = asyncio.get_running_loop()
        self.received += 1
        if self.refuse_key:
            raise AuthenticationError("HTTP 401: invalid API key", status=401)
        start = loop.time()
        extra = self.slow_next.pop(0) if self.slow_next else 0.0
        try:
            await self._admit()
            try:
                await self._work(extra)
            finally:
                self._leave()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail:
            raise ServerError("HTTP 503: down", status=503)
        self.answered += 1
        body = {"choices": [{"message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        return Reply(200, body, None, loop.time() - start)

    async def _admit(self) -> None:
        self.max_in_server = max(self.max_in_server, self.running + len(self.waiting) + 1)
        if self.slots is None or (self.running < self.slots and not self.waiting):
            self.running += 1
        else:
            future = asyncio.get_running_loop().create_future()
            self.waiting.append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future in self.waiting:
                    self.waiting.remove(future)
                elif future.done():
                    self._leave()
                raise
        self.max_running = max(self.max_running, self.running)

    async def _work(self, extra: float) -> None:
        if self.stuck:
            await asyncio.Event().wait()
        if self.fail and not self.latency_s:
            raise TransportError("connection refused")
        await asyncio.sleep(self.latency_s + extra)

    def _leave(self) -> None:
        self.running -= 1
        while self.waiting and (self.slots is None or self.running < self.slots):
            future = self.waiting.popleft()
            if not future.done():
                self.running += 1
                future.set_result(None)
