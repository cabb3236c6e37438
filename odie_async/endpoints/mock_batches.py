"""Provider batch APIs on the mock endpoint: OpenAI files + batches, Anthropic message batches.

Plugged into ``MockState.routes``. Lists come newest first, as the real APIs
list them. A batch's life is driven by the clock: it
validates for the first tenth of ``processing_s``, runs, and completes at
``processing_s``; with ``expire_after_s`` (shorter) it expires there with the
share done so far, and a cancel ends it shortly after with the share done at
the cancel. ``fail_rate`` answers a fixed share of requests with an error
(chosen by a hash of the custom_id, so reruns agree). ``drop_after_create``
creates the batch and then drops the connection before answering, for the
first N create calls: the response a client waits for never arrives. The
log (one JSON object per line, flushed at once) records every file and batch
created, with the custom_ids it carries, so tests can count what was billed.
``faults`` makes the answers wrong in the ways a provider can (``BATCH_FAULTS``),
each applied to the first record of every batch.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO
from urllib.parse import parse_qs

import orjson

from ..exceptions import ConfigError
from .mock_server import MockState, _error, _prompt_text, _response, answer_data, count_tokens

TERMINAL = ("completed", "failed", "expired", "cancelled")
# invent_id: a result for an id never sent; repeat_id: the first id answered ok and failed; non_json_line,
# no_custom_id, error_string: broken result lines; no_message: Anthropic ``succeeded`` without its message;
# create_no_id: the create answer has no id; echo_key: the answer holds the caller's key;
# unknown_status: the batch reports a state neither API defines.
BATCH_FAULTS = ("invent_id", "repeat_id", "non_json_line", "no_custom_id", "error_string", "no_message",
                "create_no_id", "echo_key", "unknown_status")


@dataclass
class BatchMockSettings:
    """Behaviour of the mock's batch APIs."""

    processing_s: float = 1.0
    fail_rate: float = 0.0
    expire_after_s: float = 0.0
    drop_after_create: int = 0
    log_path: str | None = None
    faults: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(BATCH_FAULTS)
        if unknown:
            raise ConfigError(f"unknown --batch-faults {', '.join(sorted(unknown))}; choose from {', '.join(BATCH_FAULTS)}")


@dataclass
class _Batch:
    """One batch of either API; ``requests`` holds (custom_id, OpenAI-shaped chat body)."""

    id: str
    api: str
    requests: list[tuple[str, dict]]
    created: float
    created_wall: float
    meta: dict = field(default_factory=dict)
    cancel_at: float | None = None
    status: str = "validating"
    done_share: float = 0.0
    outcomes: list | None = None  # per request: ("ok", body) | ("failed", message) | ("unfinished", why)
    output_file_id: str | None = None
    error_file_id: str | None = None
    key: str = ""  # the credential it was created with (``echo_key`` writes it into an answer)


class BatchMock:
    """The state of both batch APIs and the route that serves them."""

    def __init__(self, state: MockState, settings: BatchMockSettings) -> None:
        self.state = state
        self.settings = settings
        self.files: dict[str, dict] = {}
        self.batches: dict[str, _Batch] = {}
        self.drops_left = settings.drop_after_create
        self._ids = itertools.count(1)
        self.log: IO[str] | None = open(settings.log_path, "a", encoding="utf-8") if settings.log_path else None
        self._caller_key = ""

    # -- the route ---------------------------------------------------------------------

    def route(self, proto, method: str, path: str, headers: str, body: bytes) -> bool:
        """Answer a batch API request; False when ``path`` is not one."""
        path, _, query = path.partition("?")
        path = path[3:] if path.startswith("/v1/") else path
        parts = [p for p in path.split("/") if p]
        args = {k: v[0] for k, v in parse_qs(query).items()}
        self._caller_key = _credential(headers)
        if parts[:1] not in (["files"], ["batches"]) and parts[:2] != ["messages", "batches"]:
            return False
        if method == "POST" and "multipart/form-data" not in headers.lower() and not _is_json(body):
            answer = _error(400, "body is not a JSON object", "invalid_request_error")
        elif parts[:1] == ["files"]:
            answer = self._files(proto, method, parts[1:], args, headers, body)
        elif parts[:1] == ["batches"]:
            answer = self._openai_batches(proto, method, parts[1:], args, body)
        else:
            answer = self._message_batches(proto, method, parts[2:], args, body)
        if answer is not None:
            proto._send(answer)
        return True

    # -- OpenAI files ------------------------------------------------------------------

    def _files(self, proto, method, rest, args, headers, body) -> bytes | None:
        if method == "POST" and not rest:
            form = parse_multipart(headers, body)
            if "file" not in form or form.get("purpose", ("", b""))[1] != b"batch":
                return _error(400, "multipart form needs 'file' and purpose=batch", "invalid_request_error")
            filename, content = form["file"]
            return _json(_public(self._new_file(filename or "upload.jsonl", content, "batch")))
        if method == "GET" and not rest:
            items = [f for f in reversed(self.files.values()) if f["purpose"] == args.get("purpose", f["purpose"])]
            return _json(_page([_public(f) for f in items], args, "after"))
        file = self.files.get(rest[0]) if rest else None
        if file is None:
            return _error(404, f"no such file: {rest[0] if rest else ''}", "invalid_request_error")
        if method == "GET" and rest[1:] == ["content"]:
            return _response(200, file["content"])
        return _json(_public(file)) if method == "GET" else _error(404, "no route", "invalid_request_error")

    def _new_file(self, filename: str, content: bytes, purpose: str) -> dict:
        file = {"id": f"file-{next(self._ids):06d}", "object": "file", "bytes": len(content),
                "created_at": int(time.time()), "filename": filename, "purpose": purpose, "content": content}
        self.files[file["id"]] = file
        if purpose == "batch":
            self._log({"event": "file_created", "id": file["id"], "filename": filename, "bytes": len(content)})
        return file

    # -- OpenAI batches ----------------------------------------------------------------

    def _openai_batches(self, proto, method, rest, args, body) -> bytes | None:
        if method == "POST" and not rest:
            return self._create_openai(proto, body)
        if method == "GET" and not rest:
            items = [self._openai_view(b) for b in reversed(self.batches.values()) if b.api == "openai"]
            return _json(_page(items, args, "after"))
        batch = self.batches.get(rest[0]) if rest else None
        if batch is None or batch.api != "openai":
            return _error(404, "no such batch", "invalid_request_error")
        if method == "POST" and rest[1:] == ["cancel"]:
            self._cancel(batch)
        return _json(self._openai_view(batch))

    def _create_openai(self, proto, raw: bytes) -> bytes | None:
        request = orjson.loads(raw)
        file = self.files.get(request.get("input_file_id"))
        if file is None:
            return _error(400, "input_file_id does not name an uploaded file", "invalid_request_error")
        lines = [orjson.loads(line) for line in file["content"].splitlines() if line.strip()]
        batch = self._new_batch("openai", [(r["custom_id"], r["body"]) for r in lines], request.get("metadata") or {})
        batch.meta.update(input_file_id=file["id"], endpoint=request.get("endpoint"))
        return self._answer_create(proto, self._openai_view(batch))

    def _openai_view(self, batch: _Batch) -> dict:
        self._advance(batch)
        total = len(batch.requests)
        done = int(total * batch.done_share)
        failed = sum(1 for o in (batch.outcomes or [])[:done] if o[0] == "failed")
        return {
            "id": batch.id, "object": "batch", "endpoint": batch.meta.get("endpoint"), "errors": None,
            "input_file_id": batch.meta.get("input_file_id"), "completion_window": "24h",
            "status": self._shown_status(batch), "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
            "created_at": int(batch.created_wall), "expires_at": int(batch.created_wall) + 86400,
            "request_counts": {"total": total, "completed": done - failed, "failed": failed},
            "metadata": {k: v for k, v in batch.meta.items() if k not in ("input_file_id", "endpoint")},
        }

    # -- Anthropic message batches -----------------------------------------------------

    def _message_batches(self, proto, method, rest, args, body) -> bytes | None:
        if method == "POST" and not rest:
            request = orjson.loads(body)
            chats = [(r["custom_id"], _chat_body(r["params"])) for r in request.get("requests") or []]
            if not chats:
                return _error(400, "requests must not be empty", "invalid_request_error")
            return self._answer_create(proto, self._anthropic_view(self._new_batch("anthropic", chats, {})))
        if method == "GET" and not rest:
            items = [self._anthropic_view(b) for b in reversed(list(self.batches.values())) if b.api == "anthropic"]
            return _json(_page(items, args, "after_id"))
        batch = self.batches.get(rest[0]) if rest else None
        if batch is None or batch.api != "anthropic":
            return _error(404, "no such message batch", "not_found_error")
        if method == "POST" and rest[1:] == ["cancel"]:
            self._cancel(batch)
        if method == "GET" and rest[1:] == ["results"]:
            self._advance(batch)
            if batch.status not in TERMINAL:
                return _error(400, "batch is still processing", "invalid_request_error")
            return _response(200, self._anthropic_results(batch))
        return _json(self._anthropic_view(batch))

    def _anthropic_view(self, batch: _Batch) -> dict:
        self._advance(batch)
        total = len(batch.requests)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if batch.status in TERMINAL:
            unfinished = "canceled" if batch.status == "cancelled" else "expired"
            for kind, *_ in batch.outcomes:
                counts[{"ok": "succeeded", "failed": "errored"}.get(kind, unfinished)] += 1
        else:
            counts["processing"] = total
        ended = batch.status in TERMINAL
        return {
            "id": batch.id, "type": "message_batch",
            "processing_status": "in_limbo" if "unknown_status" in self.settings.faults else "ended" if ended else ("canceling" if batch.status == "cancelling" else "in_progress"),
            "request_counts": counts, "created_at": _iso(batch.created_wall), "expires_at": _iso(batch.created_wall + 86400),
            "ended_at": _iso(time.time()) if ended else None, "archived_at": None,
            "cancel_initiated_at": _iso(batch.created_wall) if batch.cancel_at is not None else None,
            "results_url": f"/v1/messages/batches/{batch.id}/results" if ended else None,
        }

    # -- shared life cycle -------------------------------------------------------------

    def _new_batch(self, api: str, requests: list[tuple[str, dict]], metadata: dict) -> _Batch:
        prefix = "batch" if api == "openai" else "msgbatch"
        batch = _Batch(f"{prefix}_{next(self._ids):06d}", api, requests, time.monotonic(), time.time(), dict(metadata))
        batch.key = self._caller_key
        self.batches[batch.id] = batch
        self._log({"event": "batch_created", "api": api, "id": batch.id, "metadata": metadata,
                   "custom_ids": [cid for cid, _ in requests]})
        return batch

    def _answer_create(self, proto, view: dict) -> bytes | None:
        if "create_no_id" in self.settings.faults and not getattr(self, "_created_without_id", False):
            self._created_without_id = True  # once: a retry finds the batch by its content
            return _json({k: v for k, v in view.items() if k != "id"})
        if self.drops_left > 0:
            self.drops_left -= 1
            self._log({"event": "response_dropped", "id": view["id"]})
            proto.transport.abort()
            proto.closed = True
            return None
        return _json(view)

    def _cancel(self, batch: _Batch) -> None:
        self._advance(batch)
        if batch.status not in TERMINAL and batch.cancel_at is None:
            batch.cancel_at = time.monotonic()
            self._log({"event": "batch_cancel", "id": batch.id})

    def _advance(self, batch: _Batch) -> None:
        """Move ``batch`` along by the clock; on reaching an end, answer its requests."""
        if batch.status in TERMINAL:
            return
        s, now = self.settings, time.monotonic()
        age, span = now - batch.created, max(s.processing_s, 1e-6)
        if batch.cancel_at is not None:
            if now - batch.cancel_at >= min(0.2, span / 10):
                return self._finish(batch, "cancelled", (batch.cancel_at - batch.created) / span)
            batch.status = "cancelling"
        elif s.expire_after_s and s.expire_after_s < span and age >= s.expire_after_s:
            self._finish(batch, "expired", s.expire_after_s / span)
        elif age >= span:
            self._finish(batch, "completed", 1.0)
        else:
            batch.status = "validating" if age < span / 10 else ("in_progress" if age < 0.9 * span else "finalizing")
            batch.done_share = age / span

    def _finish(self, batch: _Batch, status: str, share: float) -> None:
        batch.status, batch.done_share = status, min(1.0, max(0.0, share))
        done = int(len(batch.requests) * batch.done_share)
        why = "batch_expired" if status == "expired" else "batch_cancelled"
        batch.outcomes = [self._answer(batch, i, cid, body) if i < done else ("unfinished", why)
                          for i, (cid, body) in enumerate(batch.requests)]
        self._log({"event": "batch_ended", "id": batch.id, "status": status, "answered": done})
        if batch.api == "openai":
            self._openai_files(batch)

    def _answer(self, batch: _Batch, index: int, custom_id: str, body: dict) -> tuple:
        digest = hashlib.blake2b(f"{self.state.settings.seed}:{custom_id}".encode(), digest_size=8).digest()
        if int.from_bytes(digest, "big") / 2**64 < self.settings.fail_rate:
            return ("failed", "injected batch request failure")
        tokens = count_tokens(_prompt_text(body))
        path = batch.meta.get("endpoint") or "/v1/chat/completions"  # Anthropic's batches answer as chat
        return ("ok", answer_data(self.state, path, body, tokens, f"{batch.id}-{index}"))

    def _shown_status(self, batch: _Batch) -> str:
        return "paused_for_review" if "unknown_status" in self.settings.faults else batch.status

    def _openai_files(self, batch: _Batch) -> None:
        ok, bad = [], []
        for i, ((cid, _), (kind, value)) in enumerate(zip(batch.requests, batch.outcomes)):
            line = {"id": f"{batch.id}_req_{i}", "custom_id": cid, "response": None, "error": None}
            if kind == "ok":
                line["response"] = {"status_code": 200, "request_id": f"req_{batch.id}_{i}", "body": value}
            elif kind == "failed":
                error = {"error": {"message": value, "type": "server_error", "code": "server_error"}}
                line["response"] = {"status_code": 500, "request_id": f"req_{batch.id}_{i}", "body": error}
            else:
                line["error"] = {"code": value, "message": f"request not run: {value}"}
            (ok if kind == "ok" else bad).append(line)
        ok, bad = self._faulty(batch, ok, bad, "openai")
        if ok:
            batch.output_file_id = self._new_file(f"{batch.id}_output.jsonl", _lines(ok), "batch_output")["id"]
        if bad:
            batch.error_file_id = self._new_file(f"{batch.id}_error.jsonl", _lines(bad), "batch_output")["id"]

    def _anthropic_results(self, batch: _Batch) -> bytes:
        lines = [_anthropic_line(cid, o) for (cid, _), o in zip(batch.requests, batch.outcomes)]
        lines, extra = self._faulty(batch, lines, [], "anthropic")
        return _lines(lines + extra)

    def _faulty(self, batch: _Batch, ok: list, bad: list, api: str) -> tuple[list, list]:
        """The result lines with this mock's faults applied to the first record (a line may become bytes)."""
        faults, lines = self.settings.faults, ok or bad
        if not faults or not lines:
            return ok, bad
        first = lines[0]
        if "echo_key" in faults:
            holder = (first.get("result") or {}).get("message") or (first.get("response") or {}).get("body") or first
            holder["echo"] = f"you called with the key {batch.key}"
        if "repeat_id" in faults:
            twin = orjson.loads(orjson.dumps(first))
            twin["response"], twin["error"] = None, {"code": "server_error", "message": "answered twice"}
            if api == "anthropic":
                twin = {"custom_id": first["custom_id"], "result": {"type": "errored", "error": {
                    "type": "error", "error": {"type": "api_error", "message": "answered twice"}}}}
            bad = bad + [twin]
        if "invent_id" in faults:
            invented = orjson.loads(orjson.dumps(first))
            invented["custom_id"] = (first["custom_id"][:-1] + "9999") if api == "anthropic" else "invented-" + batch.id
            lines.append(invented)
        if "no_message" in faults and api == "anthropic" and first.get("result", {}).get("type") == "succeeded":
            del first["result"]["message"]
        if "error_string" in faults:
            if api == "anthropic":
                first["result"] = {"type": "errored", "error": "the provider had a bad day"}
            else:
                first["response"], first["error"] = None, "the provider had a bad day"
        if "no_custom_id" in faults:
            del first["custom_id"]
        if "non_json_line" in faults:
            lines.insert(0, b"<html>not json</html>")
        return ok, bad

    def _log(self, event: dict) -> None:
        if self.log is not None:
            self.log.write(orjson.dumps({"t": round(time.time(), 3)} | event).decode() + "\n")
            self.log.flush()


def _chat_body(params: dict) -> dict:
    """An Anthropic request's params as the OpenAI-shaped body the responder reads."""
    messages = [{"role": "system", "content": params["system"]}] if params.get("system") else []
    return {"model": params.get("model"), "max_tokens": params.get("max_tokens"),
            "messages": messages + list(params.get("messages") or [])}


def _lines(items: list) -> bytes:
    return b"".join((item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n" for item in items)


def _credential(headers: str) -> str:
    """The key a request carries (``Authorization: Bearer KEY`` or ``x-api-key``), or ""."""
    for line in headers.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() in ("authorization", "x-api-key"):
            return value.strip().rpartition(" ")[2]
    return ""


def _anthropic_line(custom_id: str, outcome: tuple) -> dict:
    kind, value = outcome
    if kind == "ok":
        usage = value["usage"]
        message = {"id": value["id"], "type": "message", "role": "assistant", "model": value["model"],
                   "content": [{"type": "text", "text": value["choices"][0]["message"]["content"]}],
                   "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]}}
        result = {"type": "succeeded", "message": message}
    elif kind == "failed":
        result = {"type": "errored", "error": {"type": "error", "error": {"type": "api_error", "message": value}}}
    else:
        result = {"type": "expired" if value == "batch_expired" else "canceled"}
    return {"custom_id": custom_id, "result": result}


def parse_multipart(headers: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, content)`` of a multipart/form-data body."""
    boundary = None
    for line in headers.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type" and "boundary=" in value:
            boundary = value.split("boundary=", 1)[1].split(";")[0].strip().strip('"')
    if not boundary:
        return {}
    form = {}
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.partition(b"\r\n\r\n")
        disposition = {}
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-disposition"):
                for item in line.split(";")[1:]:
                    key, _, value = item.strip().partition("=")
                    disposition[key] = value.strip('"')
        if "name" in disposition:
            form[disposition["name"]] = (disposition.get("filename"), content[:-2] if content.endswith(b"\r\n") else content)
    return form


def _page(items: list[dict], args: dict, cursor: str) -> dict:
    limit = int(args.get("limit", 20))
    start = 0
    if args.get(cursor):
        ids = [item["id"] for item in items]
        start = ids.index(args[cursor]) + 1 if args[cursor] in ids else len(ids)
    page = items[start : start + limit]
    return {"object": "list", "data": page, "has_more": start + limit < len(items),
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}


def _is_json(body: bytes) -> bool:
    try:
        return isinstance(orjson.loads(body or b"{}"), dict)
    except orjson.JSONDecodeError:
        return False


def _public(file: dict) -> dict:
    return {k: v for k, v in file.items() if k != "content"}


def _json(data: dict) -> bytes:
    return _response(200, orjson.dumps(data))


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def install(state: MockState, settings: BatchMockSettings | None = None) -> BatchMock:
    """Add the batch APIs to a mock server's routes (``odie mock-server`` builds ``settings`` from its options)."""
    mock = BatchMock(state, settings or BatchMockSettings())
    state.routes.append(mock.route)
    return mock
