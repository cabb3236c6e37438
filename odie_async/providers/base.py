"""What every provider batch backend does, and the one HTTP boundary they share.

A backend turns a chunk (a file of OpenAI Batch API input lines, planned by
``chunks.py``) into one provider batch and back: ``upload`` (where the
provider takes files), ``create``, ``retrieve``, ``results`` and ``cancel``,
plus ``find_file``/``find_batch``, which look among what the provider already
holds for a chunk's file or batch, so that a call whose answer was lost is
adopted instead of repeated. aiohttp errors become ``odie_async.exceptions``
here, through the engine client's ``status_error``, and every body is passed
through the client's ``redact`` first, so a key the provider echoes is never
written or shown. Every field a provider answers is checked before use
(``text``, ``count``, ``as_error``): a wrong one is an error on its record or
batch, never an exception of ours.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import orjson
import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from ..engine.batchfile import BatchLine, BatchReader
from ..engine.checkpoint import Result
from ..engine.client import json_object, status_error, transport_errors
from ..engine.keys import redact
from ..exceptions import MalformedResponseError, RequestError

log = structlog.get_logger(__name__)

# Our names for a batch's state; each provider's own are mapped onto these.
STATES = ("validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
ADOPT_WINDOW_S = 14 * 86400.0  # how far back a batch of the same content is looked for before a create


def text(value, limit: int = 2000) -> str | None:
    """A provider-given scalar as a string (None when absent or not a scalar)."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)[:limit]
    return None


def count(value) -> int:
    """A provider-given count: a non-negative int, else 0."""
    return value if type(value) is int and value >= 0 else 0


def as_error(value, default_code: str) -> dict:
    """A provider's error field, whatever shape it came in, as ``{"code", "message"}`` strings."""
    if isinstance(value, dict):
        inner = value.get("error") if isinstance(value.get("error"), dict) else value
        code = text(inner.get("code")) or text(inner.get("type")) or default_code
        return {"code": code[:100], "message": text(inner.get("message")) or code}
    return {"code": default_code, "message": text(value) or default_code}


def answer_id(answer: dict, what: str) -> str:
    """The ``id`` of a create or upload answer; ``MalformedResponseError`` (retryable: the runner looks
    for what the call made before calling again) when there is none."""
    value = answer.get("id")
    if not isinstance(value, str) or not value or len(value) > 200:
        raise MalformedResponseError(f"the provider's answer to {what} has no id")
    return value


@dataclass(frozen=True)
class Limits:
    """How much one provider batch may hold."""

    max_requests: int
    max_bytes: int


@dataclass
class Chunk:
    """One planned provider batch: a file of input lines, named by run and key."""

    key: str
    path: Path
    sha256: str
    count: int
    url: str
    model: str | None
    attempt: int = 0
    run: str = ""  # the run that planned it (its file is named RUN-KEY.jsonl)

    def lines(self) -> list[BatchLine]:
        """The chunk's input lines, in order."""
        return list(BatchReader(self.path))


@dataclass
class BatchStatus:
    """A provider batch as last retrieved, in our terms."""

    id: str
    status: str
    total: int
    done: int
    failed: int = 0
    detail: str = ""
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def terminal(self) -> bool:
        """Whether the batch has ended (its results can be read)."""
        return self.status in TERMINAL


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, RequestError) and exc.retryable


class BatchProvider(ABC):
    """A provider's batch API over one aiohttp session."""

    name = "provider"
    default_base_url = ""
    key_env = ""
    limits = Limits(50_000, 200 * 1024 * 1024)
    uploads = False

    def __init__(self, base_url: str, api_key: str | None, run_id: str, timeout_s: float = 600.0,
                 max_attempts: int = 5) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.secret = api_key.encode() if api_key else None
        self.run_id = run_id
        self.max_attempts = max_attempts
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "BatchProvider":
        self._session = aiohttp.ClientSession(headers=self.headers(), timeout=self._timeout)
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._session is not None:
            await self._session.close()

    @abstractmethod
    def headers(self) -> dict[str, str]:
        """Authentication and version headers of every call."""

    def url(self, path: str) -> str:
        """The absolute URL of an API path written without the ``/v1`` prefix."""
        return f"{self.base_url}{path}"

    async def send(self, method: str, path: str, *, json: dict | None = None, data=None,
                   params: dict | None = None) -> dict:
        """One call, answered with a JSON object; any failure is a ``RequestError``."""
        raw = await self._send_raw(method, path, json=json, data=data, params=params)
        return json_object(raw, f"{method} {path}: body", body=raw[:500])

    async def _send_raw(self, method, path, *, json=None, data=None, params=None) -> bytes:
        payload = orjson.dumps(json) if json is not None else data
        headers = {"Content-Type": "application/json"} if json is not None else None
        with transport_errors(f"{method} {path}", self.redacted):
            async with self._session.request(method, self.url(path), data=payload, params=params,
                                             headers=headers) as resp:
                raw = await resp.read()
                status, resp_headers = resp.status, resp.headers
        raw = redact(raw, self.secret)
        if status >= 300:
            raise status_error(status, raw, resp_headers)
        return raw

    def redacted(self, message: str) -> str:
        """``message`` with the key replaced by ``***``."""
        return redact(message.encode(), self.secret).decode("utf-8", "replace")

    async def reliably(self, call, *args, **kwargs):
        """A call that is safe to repeat (GET, list, cancel), retried on what can pass."""
        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_attempts), reraise=True,
                                 wait=wait_random_exponential(multiplier=0.5, max=30),
                                 retry=retry_if_exception(_retryable))
        async for attempt in retrying:
            with attempt:
                return await call(*args, **kwargs)

    async def stream_lines(self, path: str) -> AsyncIterator[bytes]:
        """The lines of a JSONL download, as they arrive (a line may exceed any buffer)."""
        with transport_errors(f"GET {path}", self.redacted):
            async with self._session.get(self.url(path)) as resp:
                if resp.status >= 300:
                    raise status_error(resp.status, redact(await resp.read(), self.secret), resp.headers)
                tail = b""
                async for block in resp.content.iter_chunked(1 << 16):
                    lines = (tail + block).split(b"\n")
                    tail = lines.pop()
                    for line in lines:
                        if line.strip():
                            yield redact(line, self.secret)
                if tail.strip():
                    yield redact(tail, self.secret)

    def file_name(self, chunk: Chunk) -> str:
        """The uploaded file's name: the content hash, so that any run can find it again."""
        return f"odie-{chunk.sha256[:32]}.jsonl"

    async def upload(self, chunk: Chunk) -> str | None:
        """Upload the chunk's file; its id (None where the provider takes requests inline)."""
        return None

    async def find_file(self, chunk: Chunk) -> str | None:
        """The id of this chunk's file if the provider already holds it."""
        return None

    @abstractmethod
    async def create(self, chunk: Chunk, file_id: str | None) -> str:
        """Create the chunk's batch; its id."""

    @abstractmethod
    async def find_batch(self, chunk: Chunk, since: float | None, taken: set[str]) -> str | None:
        """The id of a batch holding this chunk's content, not in ``taken``; ``since`` (epoch s) is when a
        create was announced (None: no create is known to have been tried)."""

    @abstractmethod
    async def retrieve(self, batch_id: str) -> BatchStatus:
        """The batch's current state."""

    @abstractmethod
    def results(self, status: BatchStatus, chunk: Chunk) -> AsyncIterator[tuple[str | None, Result | None, str]]:
        """``(custom_id, result, why)`` per result line; result None for one never run (why says so),
        custom_id None for a line that names no record (why ``unreadable``), and, with why ``foreign``,
        for a batch whose results show it is not this chunk's."""

    @abstractmethod
    async def cancel(self, batch_id: str) -> None:
        """Ask the provider to cancel the batch."""

    @staticmethod
    def problem(line: BatchLine) -> str | None:
        """Why this input line cannot go into this provider's batches (None when it can)."""
        return None
