"""Append-only result files that double as the checkpoint.

The output and errors files are the only state: a record is done once its line
is in either file. Lines are appended with one ``os.write`` per batch on an
``O_APPEND`` descriptor, so a ``kill -9`` loses nothing that was written (the
kernel keeps it) and at worst tears the last line on power loss. On open, a
torn tail is cut back to the last newline and the done set is rebuilt, so a
rerun sends only what has no line yet.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import structlog

from ..exceptions import InputError

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Result:
    """The outcome of one record, as the engine hands it back and writes it."""

    custom_id: str
    ok: bool
    body: dict | None = None
    error: dict | None = None
    status: int | None = None
    request_id: str | None = None
    attempts: int = 0
    cached: bool = False

    @property
    def content(self) -> str | None:
        """The first choice's text (chat ``message.content`` or completions ``text``)."""
        try:
            choice = self.body["choices"][0]
        except (TypeError, KeyError, IndexError):
            return None
        message = choice.get("message")
        return message.get("content") if message else choice.get("text")

    def to_line(self, line_id: str) -> bytes:
        """One line of the OpenAI Batch API output (or errors) file format."""
        response = None
        if self.status is not None:
            response = {"status_code": self.status, "request_id": self.request_id, "body": self.body}
        record = {"id": line_id, "custom_id": self.custom_id, "response": response, "error": self.error}
        if not self.ok:
            record["attempts"] = self.attempts
        return orjson.dumps(record) + b"\n"

    @classmethod
    def from_record(cls, record: dict) -> "Result":
        """Rebuild a result from a line written by ``to_line``."""
        response = record.get("response") or {}
        error = record.get("error")
        return cls(
            custom_id=record["custom_id"],
            ok=error is None,
            body=response.get("body"),
            error=error,
            status=response.get("status_code"),
            request_id=response.get("request_id"),
            attempts=record.get("attempts", 0),
            cached=True,
        )


def repair_tail(path: Path) -> int:
    """Cut a torn last line (no trailing newline) off ``path``; return bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        keep = _last_newline_end(handle, size)
        handle.truncate(keep)
    log.warning("repaired torn last line", file=str(path), bytes_removed=size - keep)
    return size - keep


def _last_newline_end(handle, size: int) -> int:
    block = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - block)
        handle.seek(start)
        chunk = handle.read(end - start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            return start + index + 1
        end = start
    return 0


def iter_records(path: Path):
    """Yield ``(line_no, record)`` for each line of a results file; a bad line is an InputError."""
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            try:
                record = orjson.loads(raw)
                record["custom_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(path, line_no, f"unreadable result line ({exc}); fix or remove it") from exc
            yield line_no, record


class ResultStore:
    """The output and errors files of one run, and the set of records already done.

    ``keep_bodies=True`` keeps every stored result in memory so callers can be
    answered from the checkpoint (the pipeline); otherwise only hashes of the
    done ids are kept, which holds a million records in a few tens of MB.
    """

    def __init__(self, output: str | Path, errors: str | Path | None = None, keep_bodies: bool = False) -> None:
        self.output = Path(output)
        self.errors = Path(errors) if errors else self.output.with_name(self.output.stem + ".errors.jsonl")
        self.keep_bodies = keep_bodies
        self.resumed_ok = 0
        self.resumed_failed = 0
        self._done: set[int] = set()
        self._results: dict[str, Result] = {}
        self._fds: dict[str, int] = {}
        self._ids = itertools.count()
        self._run = os.urandom(4).hex()

    def open(self, retry_failed: bool = False) -> None:
        """Repair, scan and open both files for appending."""
        if retry_failed and self.errors.exists():
            backup = self.errors.with_name(f"{self.errors.name}.{int(time.time())}.bak")
            self.errors.rename(backup)
            log.info("previous failures will be retried", moved_to=str(backup))
        for path in (self.output, self.errors):
            path.parent.mkdir(parents=True, exist_ok=True)
            repair_tail(path)
        self.resumed_ok = self._scan(self.output)
        self.resumed_failed = self._scan(self.errors)
        for name, path in (("ok", self.output), ("err", self.errors)):
            self._fds[name] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _scan(self, path: Path) -> int:
        if not path.exists():
            return 0
        count = 0
        for _line_no, record in iter_records(path):
            self._done.add(hash(record["custom_id"]))
            if self.keep_bodies:
                self._results[record["custom_id"]] = Result.from_record(record)
            count += 1
        return count

    def done(self, custom_id: str) -> bool:
        """Whether ``custom_id`` had a line in the output or errors file when they were opened."""
        return hash(custom_id) in self._done

    def get(self, custom_id: str) -> Result | None:
        """The stored result of ``custom_id`` (only with ``keep_bodies``)."""
        return self._results.get(custom_id)

    def encode(self, result: Result) -> bytes:
        """Serialise ``result`` with a fresh line id (and keep it, with ``keep_bodies``)."""
        if self.keep_bodies:
            self._results[result.custom_id] = result
        return result.to_line(f"batch_req_{self._run}{next(self._ids):010x}")

    def append(self, ok_lines: list[bytes], error_lines: list[bytes]) -> None:
        """Append encoded lines, one write per file."""
        if ok_lines:
            _write_all(self._fds["ok"], b"".join(ok_lines))
        if error_lines:
            _write_all(self._fds["err"], b"".join(error_lines))

    def sync(self) -> None:
        """Force both files to disk (power-loss safety; a crash needs no sync)."""
        for fd in self._fds.values():
            os.fsync(fd)

    def close(self) -> None:
        """Sync and close both files."""
        if self._fds:
            self.sync()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
