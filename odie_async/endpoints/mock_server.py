"""A fast OpenAI-compatible mock endpoint for tests and benchmarks, on loopback.

A bare asyncio ``Protocol`` (uvloop when installed) with a minimal HTTP/1.1
keep-alive parser, so one core answers thousands of requests per second and the
mock is never the bottleneck of a benchmark. It serves ``POST
/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``, ``/v1/embeddings``,
``/v1/moderations`` (every route of OpenAI's Batch API) and ``GET /v1/models`` with
content derived deterministically from the request (``responder`` overrides
it), real ``usage`` counts, latency drawn from a normal distribution, RPM/TPM
limits enforced with 429 + ``Retry-After`` and ``x-ratelimit-*`` headers, and
injected faults (500/503, connection resets, stalls, malformed JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Callable

import orjson

from ..engine.routes import input_texts
from ..exceptions import ConfigError
from ..runtime import StopSignals
from . import mock_answers, mock_stream
from .schema_fill import instance_for_schema

_WORD = re.compile(r"\w+|[^\w\s]")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 411: "Length Required",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
FAULTS = ("500", "503", "reset", "stall", "malformed")
# Opt-in faults (``MockSettings.faults``): usage of the wrong type, an error body echoing the Authorization header.
EXTRA_FAULTS = ("bad_usage", "echo_auth")


def count_tokens(text: str) -> int:
    """The mock's tokenizer: words and punctuation marks."""
    return len(_WORD.findall(text))


def default_responder(body: dict) -> str:
    """Deterministic content: schema-shaped JSON when asked for, else a digest sentence."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        return orjson.dumps(instance_for_schema(schema, _seed(body))).decode()
    if fmt.get("type") == "json_object":
        return '{"answer": "mock"}'
    digest = _seed(body)
    words = max(1, min(int(body.get("max_tokens") or body.get("max_completion_tokens") or 16), 64))
    return " ".join(f"w{(digest >> (i % 60)) & 0xFFF:x}" for i in range(words))


def _seed(body: dict) -> int:
    key = orjson.dumps(body.get("messages") or body.get("prompt") or "", option=orjson.OPT_SORT_KEYS)
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def prompt_digest(body: dict) -> str:
    """A short hex digest of a request's prompt text (the message contents, or the prompt)."""
    return hashlib.blake2b(_prompt_text(body).encode(), digest_size=8).hexdigest()


# The POST routes answered (a path ending in one of these, with or without ``/v1``).
ANSWERED = ("completions", "/responses", "/embeddings", "/moderations")


def _prompt_text(body: dict) -> str:
    if "input" in body:  # responses, embeddings, moderations
        return "\n".join(input_texts(body["input"]))
    if "messages" in body:
        parts = []
        for message in body["messages"]:
            content = message.get("content") or ""
            parts.append(content if isinstance(content, str) else orjson.dumps(content).decode())
        return "\n".join(parts)
    prompt = body.get("prompt") or ""
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))


class TokenBucket:
    """A refilling budget enforced over one second: ``per_minute / 60`` per second, burst of one second."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, amount: float) -> float:
        """Take ``amount`` if available and return 0, else return seconds until it would be."""
        self._refill()
        amount = min(amount, self.capacity)
        if self.level >= amount:
            self.level -= amount
            return 0.0
        return (amount - self.level) / self.rate

    def reset_after(self) -> float:
        """Seconds until the bucket is full again."""
        self._refill()
        return (self.capacity - self.level) / self.rate


@dataclass
class MockSettings:
    """Behaviour of the mock endpoint."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rpm: float = 0
    tpm: float = 0
    fault_rate: float = 0.0
    seed: int = 0
    stall_s: float = 30.0
    api_key: str | None = field(default=None, repr=False)
    model: str = "mock-model"
    limit_headers: bool = True
    faults: tuple[str, ...] = FAULTS
    stream: bool = False
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    max_concurrency: int = 0


class MockState:
    """Counters, limits and the request log shared by all connections."""

    def __init__(self, settings: MockSettings, responder: Callable[[dict], str]) -> None:
        self.settings = settings
        self.responder = responder
        self.rng = random.Random(settings.seed)
        self.requests = Counter()
        self.bodies: list[bytes] | None = None
        self.log: IO[str] | None = None  # opt-in: "monotonic_s prompt_digest outcome" per completion request
        self.rpm = TokenBucket(settings.rpm) if settings.rpm else None
        self.tpm = TokenBucket(settings.tpm) if settings.tpm else None
        self.started = time.monotonic()
        # Extra APIs (provider batches, ...) plug in here: each route gets
        # (protocol, method, path, headers, body) and returns True when it answered.
        self.routes: list[Callable[..., bool]] = []
        self.slots = mock_stream.Slots(settings.max_concurrency)

    def delay(self) -> float:
        """One latency draw, in seconds."""
        s = self.settings
        if not s.latency_jitter_ms:
            return s.latency_ms / 1000.0
        return max(0.0, self.rng.gauss(s.latency_ms, s.latency_jitter_ms)) / 1000.0

    def fault(self) -> str | None:
        """The fault to inject into this request, if any."""
        if self.settings.fault_rate and self.rng.random() < self.settings.fault_rate:
            return self.rng.choice(self.settings.faults)
        return None

    def admit(self, tokens: int) -> float:
        """0 when within limits, else the seconds a client should wait."""
        waits = [b.take(n) for b, n in ((self.rpm, 1), (self.tpm, tokens)) if b is not None]
        return max(waits, default=0.0)

    def record(self, body: dict, outcome: str) -> None:
        """Log one completion request when a request log is open."""
        if self.log is not None:
            self.log.write(f"{time.monotonic():.6f} {prompt_digest(body)} {outcome}\n")

    def limit_headers(self) -> list[tuple[str, str]]:
        """``x-ratelimit-*`` headers describing the remaining budgets."""
        headers = []
        if not self.settings.limit_headers:
            return headers
        for name, bucket in (("requests", self.rpm), ("tokens", self.tpm)):
            if bucket is not None:
                headers += [
                    (f"x-ratelimit-limit-{name}", str(int(bucket.rate * 60))),
                    (f"x-ratelimit-remaining-{name}", str(int(bucket.level))),
                    (f"x-ratelimit-reset-{name}", f"{bucket.reset_after() * 1000:.0f}ms"),
                ]
        return headers


def _response(status: int, payload: bytes, extra: list[tuple[str, str]] = (),
              content_type: str = "application/json") -> bytes:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"content-type: {content_type}",
            f"content-length: {len(payload)}"]
    head += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def _error(status: int, message: str, kind: str, extra=()) -> bytes:
    return _response(status, orjson.dumps({"error": {"message": message, "type": kind}}), extra)


class MockProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: parse requests, answer in order."""

    def __init__(self, state: MockState) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.closed:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            length = _content_length(head)
            if length is None:
                self._send(_error(411, "content-length required", "invalid_request_error"))
                self.transport.close()
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self._handle(head, body)

    def _send(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def _later(self, delay: float, data: bytes) -> None:
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send, data)
        else:
            self._send(data)

    def _handle(self, head: str, body: bytes) -> None:
        state = self.state
        request_line, _, headers = head.partition("\r\n")
        method, path = (request_line.split(" ") + ["", ""])[:2]
        if method == "GET" and path == "/metrics":  # load gauges, as vLLM shows them, where a queue is modelled
            if state.settings.max_concurrency > 0:
                return self._send(_response(200, state.slots.metrics().encode(), content_type="text/plain"))
            return self._send(_error(404, "no metrics", "invalid_request_error"))
        state.requests["total"] += 1
        if state.settings.api_key and not _key_matches(headers, state.settings.api_key):
            return self._send(_error(401, "Incorrect API key provided", "invalid_request_error"))
        if method == "GET" and path.rstrip("/") in ("/v1/models", "/models"):
            data = {"object": "list", "data": [{"id": state.settings.model, "object": "model"}]}
            return self._send(_response(200, orjson.dumps(data)))
        if method == "GET" and path in ("/health", "/v1/health"):
            return self._send(_response(200, b"{}"))
        for route in state.routes:
            if route(self, method, path, headers, body):
                return None
        if method != "POST" or not path.endswith(ANSWERED):
            return self._send(_error(404, f"no route {method} {path}", "invalid_request_error"))
        self._complete(path, body, headers)

    def _complete(self, path: str, raw: bytes, headers: str = "") -> None:
        state = self.state
        try:
            body = orjson.loads(raw)
            assert isinstance(body, dict)
        except (orjson.JSONDecodeError, AssertionError):
            return self._send(_error(400, "body is not a JSON object", "invalid_request_error"))
        prompt_tokens = count_tokens(_prompt_text(body))
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
                         or (0 if path.endswith(("/embeddings", "/moderations")) else 256))
        wait = state.admit(prompt_tokens + max_tokens)
        if wait > 0:
            state.requests["429"] += 1
            state.record(body, "429")
            extra = [("retry-after", str(max(1, round(wait + 0.5)))), ("retry-after-ms", f"{wait * 1000:.0f}")]
            return self._send(_error(429, "Rate limit reached", "rate_limit_error", extra + state.limit_headers()))
        if state.bodies is not None:
            state.bodies.append(raw)
        fault = state.fault()
        state.record(body, "200" if fault is None else f"fault_{fault}")
        if fault is not None:
            return self._inject(fault, headers)
        state.requests["200"] += 1
        if mock_stream.takes(state, body):
            return mock_stream.answer(self, path, body, prompt_tokens)
        self._later(state.delay(), self._completion(path, body, prompt_tokens))

    def _completion(self, path: str, body: dict, prompt_tokens: int) -> bytes:
        state = self.state
        data = answer_data(state, path, body, prompt_tokens, f"cmpl-{state.requests['200']:x}")
        extra = [("x-request-id", f"req-{state.requests['total']:x}")] + state.limit_headers()
        return _response(200, orjson.dumps(data), extra)

    def _inject(self, fault: str, headers: str = "") -> None:
        state = self.state
        state.requests[f"fault_{fault}"] += 1
        if fault == "bad_usage":
            data = {"id": "cmpl-x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}],
                    "usage": "n/a"}
            self._later(state.delay(), _response(200, orjson.dumps(data)))
        elif fault == "echo_auth":
            self._later(state.delay(), _error(400, f"bad request; you sent: {headers}", "invalid_request_error"))
        elif fault in ("500", "503"):
            self._later(state.delay(), _error(int(fault), "injected fault", "server_error"))
        elif fault == "reset":
            self.transport.abort()
            self.closed = True
        elif fault == "stall":
            asyncio.get_running_loop().call_later(state.settings.stall_s, self.transport.close)
            self.closed = True  # answer nothing more on this connection
        else:
            self._later(state.delay(), _response(200, b'{"id": "cmpl-broken", "choices": [{"mess'))


def answer_data(state: MockState, path: str, body: dict, prompt_tokens: int, answer_id: str) -> dict:
    """The body of a successful answer to ``body`` on API ``path``, as OpenAI's API shapes it."""
    if path.endswith("/embeddings"):
        return mock_answers.embeddings_data(body, prompt_tokens)
    if path.endswith("/moderations"):
        return mock_answers.moderations_data(body, answer_id)
    if path.endswith("/responses"):
        content = state.responder(body)
        return mock_answers.responses_data(body, content, prompt_tokens, count_tokens(content), answer_id)
    return completion_data(state, path, body, prompt_tokens, answer_id)


def completion_data(state: MockState, path: str, body: dict, prompt_tokens: int, answer_id: str) -> dict:
    """The body of a successful (chat) completion answer to ``body``."""
    n = body.get("n") if isinstance(body.get("n"), int) and 1 < body["n"] <= 16 else 1
    contents = [state.responder(body if not i else body | {"choice_index": i}) for i in range(n)]  # n samples
    completion_tokens = sum(count_tokens(content) for content in contents)
    chat = path.endswith("chat/completions")
    choices = [{"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"} if chat
               else {"index": i, "text": c, "finish_reason": "stop"} for i, c in enumerate(contents)]
    return {
        "id": answer_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or state.settings.model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def _key_matches(headers: str, key: str) -> bool:
    """Whether the request carries exactly ``Authorization: Bearer KEY`` (the scheme in any case)
    or Anthropic's ``x-api-key: KEY``."""
    for line in headers.split("\r\n"):
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token == key:
                return True
        elif name == "x-api-key" and value.strip() == key:
            return True
    return False


def _content_length(head: str) -> int | None:
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return int(value.strip())
    return 0 if head.startswith("GET") else None


class MockServer:
    """Async context manager running the mock on ``host``:``port`` (0 picks a free port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, settings: MockSettings | None = None,
                 responder: Callable[[dict], str] | None = None, record_bodies: bool = False,
                 log_requests: str | None = None) -> None:
        self.host = host
        self.port = port
        self.state = MockState(settings or MockSettings(), responder or default_responder)
        if record_bodies:
            self.state.bodies = []
        self._log_path = log_requests
        self._server: asyncio.base_events.Server | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def request_count(self) -> int:
        """Completion requests received (every attempt, faults and 429s included)."""
        return self.state.requests["total"]

    async def __aenter__(self) -> "MockServer":
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: MockProtocol(self.state), self.host, self.port,
                                                    backlog=4096)
        except OSError as exc:  # a busy port, an address not on this machine
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        if self._log_path:
            self.state.log = open(self._log_path, "a", encoding="ascii")
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._server.close()
        await self._server.wait_closed()
        if self.state.log is not None:
            self.state.log.close()


async def serve_forever(server: MockServer, ready: Callable[[str], None]) -> dict:
    """Run until SIGINT/SIGTERM (``ready(base_url)`` once listening); return the request counts."""
    stop = asyncio.Event()
    async with server:
        with StopSignals(lambda _sig: stop.set()):
            ready(server.base_url)
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)
                if server.state.log is not None:
                    server.state.log.flush()  # readable while the server runs
    return dict(server.state.requests)
