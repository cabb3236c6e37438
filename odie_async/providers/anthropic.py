"""Anthropic's Message Batches: the requests inline in one create call, results streamed as JSONL.

Chat bodies are translated (system messages become ``system``; ``max_tokens``
is required, ``stop`` becomes ``stop_sequences``) and answers translated back
to the chat-completion shape, the original message kept under ``anthropic``.
Anthropic's custom_ids allow only ``[A-Za-z0-9_-]{1,64}``, so each request is
sent as ``o<run>_<chunk>_<line>`` and mapped back through the chunk file.

Message batches carry no metadata, so ``find_batch`` adopts the batch that
no other chunk holds, with the chunk's request count, created closest to the
intent; its results prove it (their ids name the run and chunk). One whose
results name none of the chunk's requests is reported as ``foreign``, and the
runner looks again without it before it creates anything. Without a journaled
intent there is nothing to look for: a listed message batch shows neither its
requests nor a label, so a lost journal cannot be matched by content here.
"""

from __future__ import annotations

from datetime import datetime
from typing import AsyncIterator

from ..engine.batchfile import BatchLine
from ..engine.checkpoint import Result
from ..engine.client import json_or_none
from .base import BatchProvider, BatchStatus, Chunk, Limits, answer_id, as_error, count, text

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
        return f"o{chunk.run or self.run_id}_{chunk.key}_{index}"

    async def create(self, chunk: Chunk, file_id: str | None) -> str:
        """POST the chunk's requests, translated, in one message batch."""
        requests = [{"custom_id": self.request_id(chunk, i), "params": to_params(line.body)}
                    for i, line in enumerate(chunk.lines())]
        return answer_id(await self.send("POST", "/messages/batches", json={"requests": requests}),
                         "a message batch create")

    async def find_batch(self, chunk: Chunk, since: float | None, taken: set[str]) -> str | None:
        """The untaken batch holding as many requests, created closest to ``since`` (within a minute)."""
        if since is None:
            return None
        best, best_gap = None, SKEW_S
        after = None
        while True:
            params = {"limit": "100"} | ({"after_id": after} if after else {})
            page = await self.reliably(self.send, "GET", "/messages/batches", params=params)
            items = [item for item in page.get("data") or [] if isinstance(item, dict)]
            for item in items:
                created, batch_id = _epoch(item.get("created_at")), item.get("id")
                if created is None or not isinstance(batch_id, str) or batch_id in taken:
                    continue
                if created < since - SKEW_S:
                    return best  # newest first: everything further is older
                gap = abs(created - since)
                counts = item.get("request_counts") if isinstance(item.get("request_counts"), dict) else {}
                if sum(map(count, counts.values())) == chunk.count and gap <= best_gap:
                    best, best_gap = batch_id, gap
            after = text(page.get("last_id")) or (text(items[-1].get("id")) if items else None)
            if page.get("has_more") is not True or not after:
                return best

    async def retrieve(self, batch_id: str) -> BatchStatus:
        """GET the batch; ``processing_status`` and its counts in our terms."""
        raw = await self.reliably(self.send, "GET", f"/messages/batches/{batch_id}")
        counts = raw.get("request_counts") if isinstance(raw.get("request_counts"), dict) else {}
        counts = {name: count(value) for name, value in counts.items()}
        total = sum(counts.values())
        phase = raw.get("processing_status")
        if phase == "ended":
            status = "cancelled" if raw.get("cancel_initiated_at") else ("expired" if counts.get("expired") else "completed")
            done = total
        elif phase in ("in_progress", "canceling"):
            status = "cancelling" if phase == "canceling" else "in_progress"
            done = total - counts.get("processing", 0)
        else:
            status, done = f"unknown:{text(phase, 40)}", 0
        return BatchStatus(batch_id, status, total, done, counts.get("errored", 0), "", raw)

    async def results(self, status: BatchStatus, chunk: Chunk) -> AsyncIterator[tuple[str, Result | None, str]]:
        """The results stream, mapped back to the input's custom_ids."""
        ids = [line.custom_id for line in chunk.lines()]
        prefix, ours, lines = self.request_id(chunk, 0)[:-1], 0, 0
        async for raw in self.stream_lines(f"/messages/batches/{status.id}/results"):
            lines += 1
            line = json_or_none(raw)
            sent = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(sent, str) or not sent:
                yield None, None, "unreadable"
                continue
            index = sent[len(prefix):] if sent.startswith(prefix) else ""
            if not index.isdigit() or int(index) >= len(ids):
                yield sent[:100], None, "invented"
                continue
            ours += 1
            result = line.get("result")
            yield _result(ids[int(index)], result if isinstance(result, dict) else {})
        if lines and not ours:
            yield None, None, "foreign"

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
        said = _text(content)
        if role in ("system", "developer"):
            system.append(said)
        elif role in ("user", "assistant"):
            messages.append({"role": role, "content": said})
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
    kind, message = result.get("type"), result.get("message")
    if kind == "succeeded" and isinstance(message, dict) and isinstance(message.get("content"), list):
        return custom_id, Result(custom_id, True, to_chat_completion(message), None, 200, text(message.get("id")),
                                 1), "ok"
    if kind == "succeeded":
        error = {"code": "malformed_result", "message": "the provider reported success without a message"}
    elif kind == "errored":
        error = as_error(result.get("error"), "errored")
    elif kind in ("expired", "canceled"):
        return custom_id, None, "batch_expired" if kind == "expired" else "batch_cancelled"
    else:
        error = {"code": "malformed_result", "message": f"the provider's result type {text(kind, 40)!r} is unknown"}
    return custom_id, Result(custom_id, False, error=error, attempts=1), "failed"


def to_chat_completion(message: dict) -> dict:
    """An Anthropic message in the chat-completion shape, the original under ``anthropic``."""
    blocks = [block for block in message.get("content") or [] if isinstance(block, dict)]
    answer = "".join(text(block.get("text"), 10**9) or "" for block in blocks if block.get("type") == "text")
    usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
    prompt = count(usage.get("input_tokens")) + count(usage.get("cache_read_input_tokens")) \
        + count(usage.get("cache_creation_input_tokens"))
    completion = count(usage.get("output_tokens"))
    return {
        "id": message.get("id"), "object": "chat.completion", "model": message.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                     "finish_reason": _FINISH.get(message.get("stop_reason"), message.get("stop_reason"))}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        "anthropic": message,
    }


def _epoch(stamp) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
