"""Append-only result files that double as the checkpoint.

The output and errors files are the only state: a record is done once its line
is in either file. Lines are appended with one ``os.write`` per batch on an
``O_APPEND`` descriptor, so a ``kill -9`` loses nothing that was written (the
kernel keeps it) and at worst tears the last line on power loss. On open, a
torn tail is cut back to the last newline and the done set is rebuilt, so a
rerun sends only what has no line yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import structlog

from ..exceptions import ConfigError, InputError, OutputError
from .lockfile import LockBusy, take_lock

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
    timing: dict | None = None  # streamed requests: ttft_ms, itl_ms, latency_ms, output_tokens
    raw: bytes | None = field(default=None, repr=False, compare=False)  # ``body`` as answered: written as is

    @property
    def content(self) -> str | None:
        """The first choice's text (chat ``message.content`` or completions ``text``)."""
        try:
            choice = self.body["choices"][0]
        except (TypeError, KeyError, IndexError):
            return None
        message = choice.get("message")
        return message.get("content") if message else choice.get("text")

    def to_line(self, line_id: str, digest: str | None = None) -> bytes:
        """One line of the OpenAI Batch API output (or errors) file format.

        ``digest`` (of the request as sent) lets a resumed run tell whether the
        record it would skip was asked the same way.
        """
        response = None
        if self.status is not None:
            body = self.body if self.raw is None else orjson.Fragment(self.raw)  # not decoded and re-encoded
            response = {"status_code": self.status, "request_id": self.request_id, "body": body}
            if self.timing is not None:
                response["timing"] = self.timing
        record = {"id": line_id, "custom_id": self.custom_id, "response": response, "error": self.error}
        if not self.ok:
            record["attempts"] = self.attempts
        if digest is not None:
            record["request_digest"] = digest
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
            timing=response.get("timing"),
        )


def request_digest(path: str, payload: bytes) -> str:
    """A short digest of one request as sent: its API path and body (model included)."""
    return hashlib.blake2b(payload, digest_size=8, person=path.encode()[-16:]).hexdigest()


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
    """The output and errors files of one run, and the records already done.

    ``keep_bodies=True`` keeps every stored result in memory so callers can be
    answered from the checkpoint (the pipeline); otherwise only hashes of the
    done ids and of their request digests are kept.

    ``open`` takes an exclusive lock beside the output (``OUTPUT.lock``, holding
    the PID), so a second run on the same output refuses at once. A write that
    fails (disk full, ...) is cut back to where it started, so no torn line is
    left, and raises ``OutputError`` naming the file.
    """

    def __init__(self, output: str | Path, errors: str | Path | None = None, keep_bodies: bool = False) -> None:
        self.output = Path(output)
        self.errors = Path(errors) if errors else self.output.with_name(self.output.stem + ".errors.jsonl")
        self.lock_path = self.output.with_name(self.output.name + ".lock")
        self.keep_bodies = keep_bodies
        self.resumed_ok = 0
        self.resumed_failed = 0
        self.undigested = 0
        self.write = _write_all  # the one place bytes reach a file; tests inject faults here
        self._done: dict[int, int] = {}
        self._failed: set[int] = set()
        self._results: dict[str, Result] = {}
        self._fds: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._opened_sizes: dict[str, int] = {}
        self._superseded: set[str] = set()
        self._resend: set[str] = set()
        self._lock_fd: int | None = None
        self._stop: threading.Event | None = None
        self._ids = itertools.count()
        self._run = os.urandom(4).hex()

    def check_paths(self, *inputs: str | Path) -> None:
        """Refuse an output that is a folder, or output, errors and inputs that are not distinct files."""
        for label, path in (("output", self.output), ("errors file", self.errors)):
            if path.is_dir():
                raise ConfigError(f"the {label} {path} is a folder; name a file")
        named = [("output", self.output), ("errors file", self.errors)] + [("input", Path(p)) for p in inputs]
        for i, (label_a, a) in enumerate(named):
            for label_b, b in named[i + 1:]:
                if _same_file(a, b):
                    raise ConfigError(f"the {label_a} and the {label_b} are the same file ({a}); name different files")

    def open(self, retry_failed: bool = False, stop: threading.Event | None = None) -> None:
        """Lock, repair, scan and open both files for appending.

        ``stop`` (set by a signal while a thread runs this) cuts the scan short;
        the caller then stops without sending anything.
        """
        self.check_paths()
        self._lock()
        self._stop = stop
        try:
            self._open_files(retry_failed)
        except BaseException:
            self._close_fds()
            self._unlock()
            raise

    def _open_files(self, retry_failed: bool) -> None:
        if retry_failed and self.errors.exists():
            backup = self.errors.with_name(f"{self.errors.name}.{int(time.time())}.bak")
            self.errors.rename(backup)
            log.info("previous failures will be retried", moved_to=str(backup))
        for path in (self.output, self.errors):
            _writable(path)
            repair_tail(path)
        self.resumed_ok = self._scan(self.output, failed=False)
        self.resumed_failed = self._scan(self.errors, failed=True)
        for name, path in (("ok", self.output), ("err", self.errors)):
            try:
                self._fds[name] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ConfigError(f"cannot open {path} for writing: {exc.strerror}") from exc
            self._sizes[name] = self._opened_sizes[name] = os.fstat(self._fds[name]).st_size

    def _lock(self) -> None:
        _writable(self.lock_path)
        try:
            self._lock_fd = take_lock(self.lock_path, str(os.getpid()))
        except LockBusy as busy:
            raise ConfigError(
                f"{self.output} is in use by another run (PID {busy.holder or 'unknown'}, lock {self.lock_path}); "
                "wait for it to finish or stop it") from None

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _scan(self, path: Path, failed: bool) -> int:
        if not path.exists():
            return 0
        count = 0
        for line_no, record in iter_records(path):
            if self._stop is not None and not line_no & 4095 and self._stop.is_set():
                return count
            key = hash(record["custom_id"])
            digest = record.get("request_digest")
            self._done[key] = hash(digest) if digest else 0
            self.undigested += not digest
            if failed:
                self._failed.add(key)
            else:
                self._failed.discard(key)
            if self.keep_bodies:
                self._results[record["custom_id"]] = Result.from_record(record)
            count += 1
        return count

    def done(self, custom_id: str) -> bool:
        """Whether ``custom_id`` had a line in the output or errors file when they were opened."""
        return hash(custom_id) in self._done

    def failed_before(self, custom_id: str) -> bool:
        """Whether ``custom_id``'s stored line is in the errors file."""
        return hash(custom_id) in self._failed

    def changed(self, custom_id: str, digest: str) -> bool:
        """Whether a done record was asked differently (False when its line has no digest)."""
        stored = self._done.get(hash(custom_id))
        return bool(stored) and stored != hash(digest)

    def get(self, custom_id: str) -> Result | None:
        """The stored result of ``custom_id`` (only with ``keep_bodies``)."""
        return self._results.get(custom_id)

    def encode(self, result: Result, digest: str | None = None) -> bytes:
        """Serialise ``result`` with a fresh line id (and keep it, with ``keep_bodies``)."""
        if self.keep_bodies:
            self._results[result.custom_id] = result
        return result.to_line(f"batch_req_{self._run}{next(self._ids):010x}", digest)

    def append(self, ok_lines: list[bytes], error_lines: list[bytes]) -> None:
        """Append encoded lines, one write per file."""
        if ok_lines:
            self._append("ok", b"".join(ok_lines))
        if error_lines:
            self._append("err", b"".join(error_lines))

    def _append(self, name: str, data: bytes) -> None:
        fd = self._fds[name]
        try:
            self.write(fd, data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._sizes[name])  # no torn line of ours stays behind
            raise OutputError(self._path(name), exc) from exc
        self._sizes[name] += len(data)

    def _path(self, name: str) -> Path:
        return self.output if name == "ok" else self.errors

    @property
    def was_opened(self) -> bool:
        """Whether ``open`` got as far as opening the files."""
        return bool(self._opened_sizes)

    @property
    def is_open(self) -> bool:
        """Whether the files are open (and the lock held)."""
        return bool(self._fds)

    @property
    def resending(self) -> bool:
        """Whether done records are being sent again (their requests changed)."""
        return bool(self._resend)

    def resend(self, custom_ids: set[str]) -> None:
        """These done records are sent again; their old lines go once the new ones are written."""
        self._resend = custom_ids

    def rewritten(self, custom_ids) -> None:
        """New lines of these ids are on disk: lines stored before this run for them are dropped on close."""
        self._superseded.update(cid for cid in custom_ids if cid in self._resend)

    def sync(self) -> None:
        """Force both files to disk (power-loss safety; a crash needs no sync)."""
        for name, fd in self._fds.items():
            try:
                os.fsync(fd)
            except OSError as exc:
                raise OutputError(self._path(name), exc) from exc

    def close(self) -> None:
        """Sync and close both files, compact superseded lines, release the lock."""
        try:
            if self._fds:
                self.sync()
        finally:
            self._close_fds()
            try:
                if self._superseded:
                    self._compact()
            finally:
                self._unlock()

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _compact(self) -> None:
        """Drop the old lines of re-sent records, each file rewritten and renamed atomically."""
        for name, path in (("ok", self.output), ("err", self.errors)):
            compact_file(path, self._opened_sizes.get(name, 0), self._superseded)
        self._superseded.clear()


def compact_file(path: Path, old_end: int, superseded: set[str]) -> int:
    """Rewrite ``path`` without lines before byte ``old_end`` whose id is in ``superseded``."""
    if not path.exists() or not old_end:
        return 0
    dropped = 0
    temp = path.with_name(path.name + ".compact")
    with open(path, "rb") as source, open(temp, "wb") as target:
        offset = 0
        for raw in source:
            start, offset = offset, offset + len(raw)
            if start < old_end and orjson.loads(raw)["custom_id"] in superseded:
                dropped += 1
                continue
            target.write(raw)
        target.flush()
        os.fsync(target.fileno())
    os.replace(temp, path)
    log.info("compacted superseded lines", file=str(path), dropped=dropped)
    return dropped


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _writable(path: Path) -> None:
    """Refuse, before anything is sent, a result file that cannot be created or written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder {path.parent}: {exc.strerror}") from exc
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; name a file")
    target = path if path.exists() else path.parent
    if not os.access(target, os.W_OK):
        raise ConfigError(f"cannot write {path}: permission denied")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
