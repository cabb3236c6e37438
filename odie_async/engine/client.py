"""HTTP client for OpenAI-compatible endpoints, and the one boundary where aiohttp and
orjson errors become ``odie_async.exceptions``: ``transport_errors`` (timeouts, connection
errors), ``json_object``/``json_or_none`` (bodies and lines that must be JSON) and
``status_error`` (non-2xx answers). The streaming client, the provider batch backends and
the bench (through the streaming client) translate through these, never on their own.

The design names httpx; measured on this project's 2-core machine against a
zero-latency loopback server, httpx's ``AsyncClient`` managed 150–650 requests/s
(1.4–6.4 ms of client CPU per request) while aiohttp managed 3,300–3,500
(~270 µs). The engine's hot path therefore uses aiohttp; httpx remains for
one-off calls (health checks) where its ergonomics cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import aiohttp
import orjson

from ..exceptions import (
    AuthenticationError,
    ClientRequestError,
    MalformedResponseError,
    RateLimitError,
    RequestError,
    ServerError,
    TransportError,
)
from .keys import clean_api_key, redact
from .limits import parse_duration
from .routes import check_shape, usage_tokens
from .settings import AUTO_WORKERS, DEFAULTS


@dataclass(slots=True)
class Reply:
    """A successful answer: parsed body plus what flow control needs from headers."""

    status: int
    body: dict
    request_id: str | None
    latency: float
    remaining_requests: str | None = None
    remaining_tokens: str | None = None
    reset_requests: str | None = None
    reset_tokens: str | None = None
    limit_requests: str | None = None
    limit_tokens: str | None = None
    timing: dict | None = None  # streamed: time to first token, inter-token latency, latency (ms)
    raw: bytes | None = None  # the body as answered, when it can go into a JSONL line as is (one line)

    @property
    def total_tokens(self) -> int:
        """``usage.total_tokens`` (or the sum of its parts), -1 when absent."""
        usage = self.body.get("usage") or {}
        total = usage.get("total_tokens")
        if total is None:
            total = sum(usage_tokens(usage))
            return total or -1
        return total


@contextlib.contextmanager
def transport_errors(what: str = "", redact_text=str):
    """aiohttp's timeouts and connection errors (and its own bad-header ``ValueError``) as
    ``TransportError``; ``what`` (``GET /path``) leads the message, ``redact_text`` hides the key."""
    lead = f"{what}: " if what else ""
    try:
        yield
    except asyncio.TimeoutError as exc:
        raise TransportError(f"{lead}no answer within the timeout") from exc
    except (aiohttp.ClientError, ValueError) as exc:
        raise TransportError(redact_text(f"{lead}{type(exc).__name__}: {exc}")) from exc


def json_object(raw: bytes, what: str, status: int | None = None, body: bytes | None = None) -> dict:
    """``raw`` parsed as a JSON object, else ``MalformedResponseError`` (``what``: ``HTTP 200 body``)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponseError(f"{what} is not JSON: {exc}", status=status,
                                     body=raw if body is None else body) from exc
    if not isinstance(value, dict):
        raise MalformedResponseError(f"{what} is not a JSON object", status=status, body=raw if body is None else body)
    return value


def json_or_none(raw: bytes):
    """``raw`` parsed as JSON, or None where it is not (a line the caller counts as unreadable)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _error_message(status: int, raw: bytes) -> str:
    parsed = json_or_none(raw)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    text = message or raw[:200].decode("utf-8", "replace")
    return f"HTTP {status}: {text}".strip()


def _retry_after(headers) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms is not None:
        value = parse_duration(ms)
        return value / 1000.0 if value is not None else None
    return parse_duration(headers.get("retry-after"))


def status_error(status: int, raw: bytes, headers) -> RequestError:
    """Translate a non-2xx answer into the exception that says what to do next."""
    message = _error_message(status, raw)
    if status == 429:
        error = RateLimitError(message, retry_after=_retry_after(headers), status=status, body=raw)
        error.limit_requests = headers.get("x-ratelimit-limit-requests")
        error.limit_tokens = headers.get("x-ratelimit-limit-tokens")
        return error
    if status in (401, 403):
        return AuthenticationError(message, status=status, body=raw)
    if status >= 500 or status == 408:
        return ServerError(message, status=status, body=raw)
    return ClientRequestError(message, status=status, body=raw)


class ChatClient:
    """POSTs JSON bodies to an OpenAI-compatible API over one pooled aiohttp session."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        max_connections: int = AUTO_WORKERS,
        timeout_s: float = DEFAULTS["batch"]["timeout_s"],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        api_key = clean_api_key(api_key, "the engine's settings")
        self._secret = api_key.encode() if api_key else None
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # The rate-limit headers are read only for a lane that learns its limits (set by the pool).
        self.read_limits = True
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "ChatClient":
        connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=self._timeout
        )
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_for(self, path: str) -> str:
        """The absolute URL of an API path such as ``/v1/chat/completions``."""
        if path.startswith("/v1/") and self.base_url.endswith("/v1"):
            path = path[3:]
        return self.base_url + path

    async def metrics(self) -> str | None:
        """The server's Prometheus ``/metrics`` text (vLLM, SGLang), or None where it has none."""
        if self._session is None:  # a transport that is not HTTP (a test's script)
            return None
        root = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        try:
            with transport_errors():
                async with self._session.get(root + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    return await resp.text() if resp.status == 200 else None
        except (TransportError, UnicodeDecodeError):
            return None

    async def post(self, path: str, payload: bytes) -> Reply:
        """Send one request; raise a ``RequestError`` subclass on any failure."""
        start = time.perf_counter()
        status, headers, raw = await self._exchange(path, payload)
        return self.reply(path, status, headers, raw, start)

    async def _exchange(self, path: str, payload: bytes):
        """The HTTP round trip: ``(status, headers, raw body)``; transport failures become ``TransportError``."""
        with transport_errors(redact_text=self._redact_text):
            async with self._session.post(self.url_for(path), data=payload) as resp:
                return resp.status, resp.headers, await resp.read()

    def reply(self, path: str, status: int, headers, raw: bytes, start: float) -> Reply:
        """Judge one answer: a ``Reply``, or the ``RequestError`` that says what to do next."""
        raw = redact(raw, self._secret)  # a server that echoes the key back
        if status >= 300:
            raise status_error(status, raw, headers)
        body = json_object(raw, f"HTTP {status} body", status)
        try:
            check_shape(path, body)
        except MalformedResponseError as exc:
            exc.status, exc.body = status, raw
            raise
        one_line = raw if b"\n" not in raw and b"\r" not in raw else None
        if not self.read_limits:
            return Reply(status, body, headers.get("x-request-id"), time.perf_counter() - start, raw=one_line)
        return Reply(
            status,
            body,
            headers.get("x-request-id"),
            time.perf_counter() - start,
            headers.get("x-ratelimit-remaining-requests"),
            headers.get("x-ratelimit-remaining-tokens"),
            headers.get("x-ratelimit-reset-requests"),
            headers.get("x-ratelimit-reset-tokens"),
            headers.get("x-ratelimit-limit-requests"),
            headers.get("x-ratelimit-limit-tokens"),
            raw=one_line,
        )

    def _redact_text(self, text: str) -> str:
        if self._secret is not None:
            return text.replace(self._secret.decode(), "***")
        return text
