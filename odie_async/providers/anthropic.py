"""Anthropic's Message Batches: the requests inline in one create call, results streamed as JSONL.

Chat bodies are translated (system messages become ``system``; ``max_tokens``
is required, ``stop`` becomes ``stop_sequences``) and answers translated back
to the chat-completion shape, the original message kept under ``anthropic``.
Anthropic's custom_ids allow only ``[A-Za-z0-9_-]{1,64}``, so each request is
sent as ``o<run>_<chunk>_<line>`` and mapped back through the chunk file.

Message batches carry no metadata, so ``find_batch`` adopts the batch that
no other chunk holds, with the chunk's request count, created closest to the
intent; its results prove it (their ids name the run and chunk). One that
turns out not to be ours is reported as ``foreign``, and the runner looks
again without it before it creates anything.
"""

from __future__ import annotations

from datetime import datetime
from typing import AsyncIterator

import orjson

from ..engine.batchfile import BatchLine
from ..engine.checkpoint import Result
from .base import BatchProvider, BatchStatus, Chunk, Limits

VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
SKEW_S = 60.0  # how far our clock and the provider's may disagree
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
_PASSED = ("temperature", "top_p", "top_k")


class AnthropicBatches(BatchProvider):
    """``/v1/messages/batches``."""

    name = "anthropic"
    default_base_url = "https://api.anthropic.com/v1"
    key_env = "ANTHROPIC_API_KEY"
    limits = Limits(100_000, 256 * 1024 * 1024)

    def headers(self) -> dict[str, str]:
        """``x-api-key`` and ``anthropic-version``."""
        headers = {"anthropic-version": VERSION}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    @staticmethod
    def problem(line: BatchLine) -> str | None:
        """Why this input line cannot go into a message batch (None when it can)."""
        if line.url != "/v1/chat/completions":
            return f"url {line.url!r}: message batches take only /v1/chat/completions requests"
        try:
            to_params(line.body)
        except ValueError as exc:
            return str(exc)
        return None

    def request_id(self, chunk: Chunk, index: int) -> str:
        """The custom_id a chunk's ``index``-th line is sent under."""
        return f"o{self.run_id}_{chunk.key}_{index}"

    async def create(self, chunk: Chunk, file_id: str | None) -> str:
        """POST the chunk's requests, translated, in one message batch."""
        requests = [{"custom_id": self.request_id(chunk, i), "params": to_params(line.body)}
                    for i, line in enumerate(chunk.lines())]
        return (await self.send("POST", "/messages/batches", json={"requests": requests}))["id"]

    async def find_batch(self, chunk: Chunk, since: float, taken: set[str]) -> str | None:
        """The untaken batch holding as many requests, created closest to ``since`` (within a minute)."""
        best, best_gap = None, SKEW_S
        after = None
        while True:
            params = {"limit": "100"} | ({"after_id": after} if after else {})
            page = await self.reliably(self.send, "GET", "/messages/batches", params=params)
            for item in page.get("data") or []:
                created = _epoch(item.get("created_at"))
                if created is None or item["id"] in taken:
                    continue
                if created < since - SKEW_S:
                    return best  # newest first: everything further is older
                gap = abs(created - since)
                if sum((item.get("request_counts") or {}).values()) == chunk.count and gap <= best_gap:
                    best, best_gap = item["id"], gap
            if not page.get("has_more") or not page.get("data"):
                return best
            after = page.get("last_id") or page["data"][-1]["id"]

    async def retrieve(self, batch_id: str) -> BatchStatus:
        """GET the batch; ``processing_status`` and its counts in our terms."""
        raw = await self.reliably(self.send, "GET", f"/messages/batches/{batch_id}")
        counts = raw.get("request_counts") or {}
        total = sum(counts.values())
        phase = raw.get("processing_status")
        if phase == "ended":
            status = "cancelled" if raw.get("cancel_initiated_at") else ("expired" if counts.get("expired") else "completed")
            done = total
        else:
            status = "cancelling" if phase == "canceling" else "in_progress"
            done = total - (counts.get("processing") or 0)
        return BatchStatus(batch_id, status, total, done, counts.get("errored") or 0, "", raw)

    async def results(self, status: BatchStatus, chunk: Chunk) -> AsyncIterator[tuple[str, Result | None, str]]:
        """The results stream, mapped back to the input's custom_ids."""
        ids = [line.custom_id for line in chunk.lines()]
        prefix = f"o{self.run_id}_{chunk.key}_"
        async for raw in self.stream_lines(f"/messages/batches/{status.id}/results"):
            line = orjson.loads(raw)
            sent = line.get("custom_id") or ""
            index = sent[len(prefix):] if sent.startswith(prefix) else ""
            if not index.isdigit() or int(index) >= len(ids):
                yield sent, None, "foreign"
                return
            yield _result(ids[int(index)], line.get("result") or {})

    async def cancel(self, batch_id: str) -> None:
        """POST ``/messages/batches/ID/cancel``."""
        await self.reliably(self.send, "POST", f"/messages/batches/{batch_id}/cancel", json={})


def to_params(body: dict) -> dict:
    """A chat-completions body as Message Batches ``params``; ValueError names what cannot be sent."""
    if not body.get("model"):
        raise ValueError("body has no model")
    system, messages = [], []
    for message in body.get("messages") or []:
        role, content = message.get("role"), message.get("content")
        text = _text(content)
        if role in ("system", "developer"):
            system.append(text)
        elif role in ("user", "assistant"):
            messages.append({"role": role, "content": text})
        else:
            raise ValueError(f"message role {role!r} has no Anthropic equivalent")
    if not messages:
        raise ValueError("body has no user or assistant message")
    params = {"model": body["model"], "messages": messages,
              "max_tokens": int(body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_MAX_TOKENS)}
    if system:
        params["system"] = "\n\n".join(system)
    params |= {key: body[key] for key in _PASSED if body.get(key) is not None}
    stop = body.get("stop")
    if stop:
        params["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    return params


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(p.get("text") or "" for p in content)
    raise ValueError("only text message content can be translated")


def _result(custom_id: str, result: dict) -> tuple[str, Result | None, str]:
    kind = result.get("type")
    if kind == "succeeded":
        return custom_id, Result(custom_id, True, to_chat_completion(result["message"]), None, 200,
                                 result["message"].get("id"), 1), "ok"
    if kind == "errored":
        error = (result.get("error") or {}).get("error") or {}
        return custom_id, Result(custom_id, False, error={"code": error.get("type") or "errored",
                                                          "message": error.get("message") or "errored"}, attempts=1), "failed"
    return custom_id, None, "batch_expired" if kind == "expired" else "batch_cancelled"


def to_chat_completion(message: dict) -> dict:
    """An Anthropic message in the chat-completion shape, the original under ``anthropic``."""
    text = "".join(block.get("text") or "" for block in message.get("content") or [] if block.get("type") == "text")
    usage = message.get("usage") or {}
    prompt = (usage.get("input_tokens") or 0) + (usage.get("cache_read_input_tokens") or 0) \
        + (usage.get("cache_creation_input_tokens") or 0)
    completion = usage.get("output_tokens") or 0
    return {
        "id": message.get("id"), "object": "chat.completion", "model": message.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": _FINISH.get(message.get("stop_reason"), message.get("stop_reason"))}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        "anthropic": message,
    }


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
