"""What every provider batch backend does, and the one HTTP boundary they share.

A backend turns a chunk (a file of OpenAI Batch API input lines, planned by
``chunks.py``) into one provider batch and back: ``upload`` (where the
provider takes files), ``create``, ``retrieve``, ``results`` and ``cancel``,
plus ``find_file``/``find_batch``, which look among what the provider already
holds for a chunk's file or batch, so that a call whose answer was lost is
adopted instead of repeated. aiohttp errors become ``odie_async.exceptions``
here, through the engine client's ``status_error``.
"""

from __future__ import annotations

import asyncio
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
from ..engine.client import status_error
from ..exceptions import MalformedResponseError, RequestError, TransportError

log = structlog.get_logger(__name__)

# Our names for a batch's state; each provider's own are mapped onto these.
STATES = ("validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


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
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedResponseError(f"{method} {path}: body is not JSON", body=raw[:500]) from exc
        if not isinstance(body, dict):
            raise MalformedResponseError(f"{method} {path}: body is not a JSON object", body=raw[:500])
        return body

    async def _send_raw(self, method, path, *, json=None, data=None, params=None) -> bytes:
        payload = orjson.dumps(json) if json is not None else data
        headers = {"Content-Type": "application/json"} if json is not None else None
        try:
            async with self._session.request(method, self.url(path), data=payload, params=params,
                                             headers=headers) as resp:
                raw = await resp.read()
                status, resp_headers = resp.status, resp.headers
        except asyncio.TimeoutError as exc:
            raise TransportError(f"{method} {path}: no answer within the timeout") from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if status >= 300:
            raise status_error(status, raw, resp_headers)
        return raw

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
        try:
            async with self._session.get(self.url(path)) as resp:
                if resp.status >= 300:
                    raise status_error(resp.status, await resp.read(), resp.headers)
                tail = b""
                async for block in resp.content.iter_chunked(1 << 16):
                    lines = (tail + block).split(b"\n")
                    tail = lines.pop()
                    for line in lines:
                        if line.strip():
                            yield line
                if tail.strip():
                    yield tail
        except asyncio.TimeoutError as exc:
            raise TransportError(f"GET {path}: no answer within the timeout") from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"GET {path}: {type(exc).__name__}: {exc}") from exc

    def file_name(self, chunk: Chunk) -> str:
        """The uploaded file's name: run, chunk and content hash, so it can be found again."""
        return f"odie-{self.run_id}-{chunk.key}-{chunk.sha256[:16]}.jsonl"

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
    async def find_batch(self, chunk: Chunk, since: float, taken: set[str]) -> str | None:
        """The id of a batch created for this chunk at or after ``since`` (epoch s), not in ``taken``."""

    @abstractmethod
    async def retrieve(self, batch_id: str) -> BatchStatus:
        """The batch's current state."""

    @abstractmethod
    def results(self, status: BatchStatus, chunk: Chunk) -> AsyncIterator[tuple[str, Result | None, str]]:
        """``(custom_id, result, why)`` per record; result None for one never run (why says so)
        or, with why ``foreign``, for a batch whose results show it is not this chunk's."""

    @abstractmethod
    async def cancel(self, batch_id: str) -> None:
        """Ask the provider to cancel the batch."""

    @staticmethod
    def problem(line: BatchLine) -> str | None:
        """Why this input line cannot go into this provider's batches (None when it can)."""
        return None
