"""OpenAI's Batch API: upload a JSONL file (``purpose=batch``), create a 24 h batch, read two files back.

Limits: 50,000 requests and 200 MB per input file, one model and one endpoint
per file. A chunk's file is named ``odie-RUN-KEY-HASH.jsonl`` and its batch
carries ``metadata`` naming run, chunk and hash, which is how ``find_file`` and
``find_batch`` recognise them after a call whose answer was lost.
"""

from __future__ import annotations

from typing import AsyncIterator

import aiohttp
import orjson

from ..engine.checkpoint import Result
from .base import BatchProvider, BatchStatus, Chunk, Limits

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
            return (await self.send("POST", "/files", data=form))["id"]

    async def find_file(self, chunk: Chunk) -> str | None:
        """The uploaded file whose name carries this run, chunk and hash."""
        name = self.file_name(chunk)
        async for item in self._list("/files", {"purpose": "batch"}):
            if item.get("filename") == name:
                return item["id"]
        return None

    def metadata(self, chunk: Chunk) -> dict[str, str]:
        """What the batch carries to be recognised: run, chunk key, content hash."""
        return {"odie_run": self.run_id, "odie_chunk": chunk.key, "odie_sha256": chunk.sha256[:32]}

    async def create(self, chunk: Chunk, file_id: str | None) -> str:
        """POST ``/batches`` with a 24 h completion window and the chunk's metadata."""
        body = {"input_file_id": file_id, "endpoint": chunk.url, "completion_window": "24h",
                "metadata": self.metadata(chunk)}
        return (await self.send("POST", "/batches", json=body))["id"]

    async def find_batch(self, chunk: Chunk, since: float, taken: set[str]) -> str | None:
        """A batch whose metadata names this run and chunk (the provider lists newest first)."""
        wanted = self.metadata(chunk)
        async for item in self._list("/batches", {}):
            if (item.get("created_at") or since) < since - SKEW_S:
                return None  # newest first: everything further is older than the intent
            meta = item.get("metadata") or {}
            if all(meta.get(k) == v for k, v in wanted.items()) and item["id"] not in taken:
                return item["id"]
        return None

    async def _list(self, path: str, params: dict) -> AsyncIterator[dict]:
        after = None
        while True:
            query = params | {"limit": "100"} | ({"after": after} if after else {})
            page = await self.reliably(self.send, "GET", path, params=query)
            for item in page.get("data") or []:
                yield item
            if not page.get("has_more") or not page.get("data"):
                return
            after = page.get("last_id") or page["data"][-1]["id"]

    async def retrieve(self, batch_id: str) -> BatchStatus:
        """GET the batch; OpenAI's states are already ours."""
        raw = await self.reliably(self.send, "GET", f"/batches/{batch_id}")
        counts = raw.get("request_counts") or {}
        done = (counts.get("completed") or 0) + (counts.get("failed") or 0)
        errors = (raw.get("errors") or {}).get("data") or []
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors[:3])
        return BatchStatus(batch_id, raw.get("status", "validating"), counts.get("total") or 0, done,
                           counts.get("failed") or 0, detail, raw)

    async def results(self, status: BatchStatus, chunk: Chunk) -> AsyncIterator[tuple[str, Result | None, str]]:
        """Both result files, line by line, as our output and errors records."""
        for key in ("output_file_id", "error_file_id"):
            file_id = status.raw.get(key)
            if not file_id:
                continue
            async for line in self.stream_lines(f"/files/{file_id}/content"):
                yield _result(orjson.loads(line))

    async def cancel(self, batch_id: str) -> None:
        """POST ``/batches/ID/cancel``."""
        await self.reliably(self.send, "POST", f"/batches/{batch_id}/cancel", json={})


def _result(line: dict) -> tuple[str, Result | None, str]:
    custom_id, response, error = line["custom_id"], line.get("response"), line.get("error")
    if error and error.get("code") in _NOT_RUN:
        return custom_id, None, error["code"]
    if response is None:
        return custom_id, Result(custom_id, False, error=error or {"code": "batch_error", "message": "no response"},
                                 attempts=1), "failed"
    status, body = response.get("status_code"), response.get("body")
    if status == 200 and not error:
        return custom_id, Result(custom_id, True, body, None, status, response.get("request_id"), 1), "ok"
    detail = (body or {}).get("error") if isinstance(body, dict) else None
    detail = detail if isinstance(detail, dict) else {}
    error = error or {"code": detail.get("code") or f"http_{status}", "message": detail.get("message") or f"HTTP {status}"}
    return custom_id, Result(custom_id, False, body, error, status, response.get("request_id"), 1), "failed"

