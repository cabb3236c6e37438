"""OpenAI's Batch API: upload a JSONL file (``purpose=batch``), create a 24 h batch, read two files back.

Limits: 50,000 requests and 200 MB per input file, one model and one endpoint
per file. A chunk's file is named ``odie-HASH.jsonl`` and its batch carries
``metadata`` naming run, chunk and content hash. ``find_file`` and ``find_batch``
recognise them by the hash alone, so a file or batch of the same content is
found before any upload or create, whatever the journal remembers.
"""

from __future__ import annotations

import time
from typing import AsyncIterator

import aiohttp

from ..engine.checkpoint import Result
from ..engine.client import json_or_none
from ..engine.routes import check_shape
from ..exceptions import MalformedResponseError
from .base import ADOPT_WINDOW_S, STATES, BatchProvider, BatchStatus, Chunk, Limits, answer_id, as_error, count, text

_NOT_RUN = ("batch_expired", "batch_cancelled")
SKEW_S = 60.0  # how far our clock and the provider's may disagree


class OpenAIBatches(BatchProvider):
    """``/v1/files`` + ``/v1/batches``."""

    name = "openai"
    default_base_url = "https://api.openai.com/v1"
    key_env = "OPENAI_API_KEY"
    limits = Limits(50_000, 200 * 1024 * 1024)
    uploads = True

    def headers(self) -> dict[str, str]:
        """Bearer authentication."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def upload(self, chunk: Chunk) -> str:
        """POST the chunk's file as multipart/form-data with ``purpose=batch``."""
        with open(chunk.path, "rb") as handle:  # streamed: a file may hold 200 MB
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", handle, filename=self.file_name(chunk), content_type="application/jsonl")
            return answer_id(await self.send("POST", "/files", data=form), "an upload")

    async def find_file(self, chunk: Chunk) -> str | None:
        """The uploaded file whose name carries this chunk's content hash."""
        name = self.file_name(chunk)
        async for item in self._list("/files", {"purpose": "batch"}):
            if item.get("filename") == name and isinstance(item.get("id"), str):
                return item["id"]
        return None

    def metadata(self, chunk: Chunk) -> dict[str, str]:
        """What the batch carries to be recognised: run, chunk key, content hash."""
        return {"odie_run": self.run_id, "odie_chunk": chunk.key, "odie_sha256": chunk.sha256[:32]}

    async def create(self, chunk: Chunk, file_id: str | None) -> str:
        """POST ``/batches`` with a 24 h completion window and the chunk's metadata."""
        body = {"input_file_id": file_id, "endpoint": chunk.url, "completion_window": "24h",
                "metadata": self.metadata(chunk)}
        return answer_id(await self.send("POST", "/batches", json=body), "a batch create")

    async def find_batch(self, chunk: Chunk, since: float | None, taken: set[str]) -> str | None:
        """The newest batch of this content (by the hash in its metadata) that ran or runs its records;
        one that ended without running them only when there is no other."""
        oldest, spare = time.time() - ADOPT_WINDOW_S - SKEW_S, None
        async for item in self._list("/batches", {}):
            created = item.get("created_at")
            if isinstance(created, (int, float)) and created < oldest:
                break  # newest first: everything further is older still
            meta = item.get("metadata")
            batch_id = item.get("id")
            if not isinstance(meta, dict) or meta.get("odie_sha256") != chunk.sha256[:32]:
                continue
            if not isinstance(batch_id, str) or batch_id in taken:
                continue
            if item.get("status") not in ("failed", "expired", "cancelling", "cancelled"):
                return batch_id
            spare = spare or batch_id
        return spare

    async def _list(self, path: str, params: dict) -> AsyncIterator[dict]:
        after = None
        while True:
            query = params | {"limit": "100"} | ({"after": after} if after else {})
            page = await self.reliably(self.send, "GET", path, params=query)
            items = [item for item in page.get("data") or [] if isinstance(item, dict)]
            for item in items:
                yield item
            after = text(page.get("last_id")) or (text(items[-1].get("id")) if items else None)
            if page.get("has_more") is not True or not after:
                return

    async def retrieve(self, batch_id: str) -> BatchStatus:
        """GET the batch; OpenAI's states are already ours."""
        raw = await self.reliably(self.send, "GET", f"/batches/{batch_id}")
        counts = raw.get("request_counts") if isinstance(raw.get("request_counts"), dict) else {}
        done = count(counts.get("completed")) + count(counts.get("failed"))
        errors = raw.get("errors").get("data") if isinstance(raw.get("errors"), dict) else None
        errors = [as_error(e, "batch_error") for e in errors[:3]] if isinstance(errors, list) else []
        detail = "; ".join(f"{e['code']}: {e['message']}" for e in errors)
        status = raw.get("status") if raw.get("status") in STATES else f"unknown:{text(raw.get('status'), 40)}"
        return BatchStatus(batch_id, status, count(counts.get("total")), done, count(counts.get("failed")), detail, raw)

    async def results(self, status: BatchStatus, chunk: Chunk) -> AsyncIterator[tuple[str, Result | None, str]]:
        """Both result files, line by line, as our output and errors records."""
        for key in ("output_file_id", "error_file_id"):
            file_id = status.raw.get(key)
            if not isinstance(file_id, str) or not file_id or "/" in file_id:
                continue
            async for line in self.stream_lines(f"/files/{file_id}/content"):
                yield _result(line, chunk.url)

    async def cancel(self, batch_id: str) -> None:
        """POST ``/batches/ID/cancel``."""
        await self.reliably(self.send, "POST", f"/batches/{batch_id}/cancel", json={})


def _result(raw: bytes, url: str) -> tuple[str | None, Result | None, str]:
    """One result line, every field checked: a line that names no record is ``unreadable``."""
    line = json_or_none(raw)
    custom_id = line.get("custom_id") if isinstance(line, dict) else None
    if not isinstance(custom_id, str) or not custom_id:
        return None, None, "unreadable"
    response, error = line.get("response"), line.get("error")
    error = as_error(error, "batch_error") if error is not None else None
    if error and error["code"] in _NOT_RUN:
        return custom_id, None, error["code"]
    if not isinstance(response, dict):
        error = error or {"code": "batch_error", "message": "the result holds no response"}
        return custom_id, Result(custom_id, False, error=error, attempts=1), "failed"
    status, body, request_id = response.get("status_code"), response.get("body"), text(response.get("request_id"))
    status = status if type(status) is int else None
    if status == 200 and not error and isinstance(body, dict):
        try:
            check_shape(url, body)
            return custom_id, Result(custom_id, True, body, None, status, request_id, 1), "ok"
        except MalformedResponseError as exc:
            error = {"code": exc.code, "message": exc.message}
    detail = body.get("error") if isinstance(body, dict) else None
    error = error or as_error(detail if detail is not None else f"HTTP {status}", f"http_{status}")
    return custom_id, Result(custom_id, False, body if isinstance(body, dict) else None, error, status, request_id,
                             1), "failed"
