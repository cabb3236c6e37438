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
import fcntl
import hashlib
import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import orjson
import structlog

from ..exceptions import ConfigError, OutputError
from . import compaction
from .compaction import iter_records, repair_tail  # noqa: F401  (re-exported: the result files' readers)
from .batchfile import count_lines
from .idtable import DONE, FAILED, IdTable, id_of
from .lockfile import LockBusy, take_lock
from .routes import answer_text

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
        """The answer's text: the first choice's (chat or completions), or a response's output text."""
        return answer_text(self.body)

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


@dataclass(slots=True)
class Accepted:
    """What ``ResultStore.accept`` wrote, and the results it refused (by ``custom_id``)."""

    ok: int = 0
    failed: int = 0
    unknown: list[str] = field(default_factory=list)  # never asked for by this run
    repeated: list[str] = field(default_factory=list)  # already has a line (this run's or an earlier one's)

    @property
    def refused(self) -> int:
        """How many results were not written."""
        return len(self.unknown) + len(self.repeated)


def request_digest(path: str, payload: bytes) -> str:
    """A short digest of one request as sent: its API path and body (model included)."""
    return hashlib.blake2b(payload, digest_size=8, person=path.encode()[-16:]).hexdigest()


class ResultStore:
    """The output and errors files of one run, and the records already done.

    ``keep_bodies=True`` keeps every stored result in memory so callers can be
    answered from the checkpoint (the pipeline); otherwise only the done ids
    are kept, in an ``IdTable`` (about 10 bytes an id), with the hash of the
    request digest of each id done before this run.

    ``open`` takes an exclusive lock on the real file: ``REAL.lock`` beside the
    output with every symlink resolved (holding the PID), and a ``flock`` on the
    output itself (its inode), so a second run on the same output, of any kind
    and under any name, refuses at once. It then finishes a compaction an
    earlier run left unfinished and folds in the shards of a sharded run
    (``OUT.shards/``), before it reads what is done. A write that fails (disk
    full, ...) is cut back to where it started, so no torn line is left, and
    raises ``OutputError`` naming the file.

    ``base`` (an output and errors file, read only) adds their records to the
    done ones: a shard of a sharded run skips what the run's output holds.
    """

    def __init__(self, output: str | Path, errors: str | Path | None = None, keep_bodies: bool = False,
                 base: tuple[Path, Path] | None = None) -> None:
        self.output = Path(output)
        named = Path(os.path.realpath(self.output)) if self.output.is_symlink() else self.output
        self.errors = Path(errors) if errors else named.with_name(named.stem + ".errors.jsonl")
        self.base = base
        self.keep_bodies = keep_bodies
        self.resumed_ok = 0
        self.resumed_failed = 0
        self.undigested = 0
        self.write = write_all  # the one place bytes reach a file; tests inject faults here
        self._table = IdTable()  # DONE / FAILED flags; the input reader's flag too once it is shared
        self._done_count = 0
        self._shared = False
        self._results: dict[str, Result] = {}
        self._fds: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._opened = False
        self._intent = False  # this run wrote a compaction intent: its lines supersede older ones
        self._asked: dict[int, str | None] = {}  # hash(custom_id) -> request digest, until accepted
        self._lock_fd: int | None = None
        self._lock_file: Path | None = None
        self.folded: dict = {}  # the shards folded in at open (counts)
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

    @property
    def lock_path(self) -> Path:
        """The lock file: beside the real output, symlinks resolved."""
        real = self.real(self.output)
        return real.with_name(real.name + ".lock")

    @staticmethod
    def real(path: Path) -> Path:
        """``path`` with every symlink resolved: the file every name of it reaches."""
        return Path(os.path.realpath(path))

    def open(self, retry_failed: bool = False, stop: threading.Event | None = None) -> None:
        """Lock, repair, finish what an earlier run left, scan and open both files for appending.

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
        for path in (self.output, self.errors):
            _writable(path)
            repair_tail(path)
        self._finish_earlier()
        if retry_failed and self.errors.exists():
            backup = self.errors.with_name(f"{self.errors.name}.{int(time.time())}.bak")
            self.errors.rename(backup)
            log.info("previous failures will be retried", moved_to=str(backup))
        for path, failed in zip(self.base or (), (False, True)):
            count = self._scan(path, failed)
            self.resumed_ok, self.resumed_failed = (self.resumed_ok, self.resumed_failed + count) if failed \
                else (self.resumed_ok + count, self.resumed_failed)
        self.resumed_ok += self._scan(self.output, failed=False)
        self.resumed_failed += self._scan(self.errors, failed=True)
        for name, path in (("ok", self.output), ("err", self.errors)):
            try:
                self._fds[name] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ConfigError(f"cannot open {path} for writing: {exc.strerror}") from exc
            self._sizes[name] = os.fstat(self._fds[name]).st_size
        self._lock_inode(self._fds["ok"])
        self._opened = True

    def _finish_earlier(self) -> None:
        """Finish the compaction of a run killed while resending, then fold in a sharded run's shards."""
        files = (self.real(self.output), self.real(self.errors))
        runs = compaction.read_intent(files[0])
        if runs is not None:
            log.warning("finishing the compaction an earlier run left unfinished", output=str(self.output))
            compaction.compact(files, runs)
            compaction.clear_intent(files[0])
        self.folded = compaction.fold_shards(*files, repair=repair_tail)

    def fold_shards(self) -> dict:
        """Fold the shards written meanwhile into the output (the lock stays held) and read it again.

        What ``done`` and ``failed_before`` say afterwards is the output's state
        after the fold; the store writes nothing more. Returns the lines folded.
        """
        self.sync()
        self._close_fds()
        counts = compaction.fold_shards(self.real(self.output), self.real(self.errors), repair=repair_tail)
        self._table, self._done_count, self._shared = IdTable(), 0, False
        self.resumed_ok = self._scan(self.output, failed=False)
        self.resumed_failed = self._scan(self.errors, failed=True)
        return counts

    def _lock_inode(self, fd: int) -> None:
        """``flock`` the output itself: another name of the same file (a hard link) is refused too."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{self.output} is in use by another run under another name; "
                              "wait for it to finish or stop it") from None

    def _lock(self) -> None:
        path = self.lock_path
        _writable(path)
        try:
            self._lock_fd = take_lock(path, str(os.getpid()))
        except LockBusy as busy:
            raise ConfigError(
                f"{self.output} is in use by another run (PID {busy.holder or 'unknown'}, lock {path}); "
                "wait for it to finish or stop it") from None
        self._lock_file = path

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._lock_file)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _scan(self, path: Path, failed: bool) -> int:
        if not path.exists():
            return 0
        count, ids = 0, self._table
        ids.reserve(max(0, count_lines(path, self._stop)))  # grown once, not doubled along the way
        for line_no, record in iter_records(path):
            if self._stop is not None and not line_no & 4095 and self._stop.is_set():
                return count
            key = id_of(record["custom_id"])
            digest = record.get("request_digest")
            before = ids.update(key, DONE | FAILED, 0) if failed else ids.update(key, DONE, FAILED)
            self._done_count += not before & DONE
            ids.set_value(key, hash(digest) if digest else 0)
            self.undigested += not digest
            if self.keep_bodies:
                self._results[record["custom_id"]] = Result.from_record(record)
            count += 1
        return count

    def done(self, custom_id: str) -> bool:
        """Whether ``custom_id`` has a line in the output or errors file (from before, or accepted since).

        Once ``share_ids`` was called, the ids accepted since are not added:
        the reader sharing the table lets no id through twice.
        """
        return bool(self._done_count) and bool(self._table.flags(id_of(custom_id)) & DONE)

    def failed_before(self, custom_id: str) -> bool:
        """Whether ``custom_id``'s stored line is in the errors file."""
        return bool(self._table.flags(id_of(custom_id)) & FAILED)

    def changed(self, custom_id: str, digest: str) -> bool:
        """Whether a record done before this run was asked differently (False when its line has no digest)."""
        stored = self._table.value(id_of(custom_id))
        return bool(stored) and stored != hash(digest)

    def share_ids(self, more: int = 0) -> IdTable:
        """The table of done ids, for the run's input reader to mark the ids it reads in (``BatchReader(ids=)``).

        One table then serves both, with room made for ``more`` ids: the
        reader refuses a second line of an id before it is sent, so the ids
        accepted since need not be added (``accept`` still takes each asked id
        once, and calls a result of an id read from the input ``repeated``).
        """
        self._shared = True
        self._table.reserve(more)
        return self._table

    def expect(self, custom_id: str, digest: str | None = None) -> None:
        """This run asks for ``custom_id`` (sent as ``digest``): ``accept`` takes its result once."""
        self._asked[hash(custom_id)] = digest

    def accept(self, results: Iterable[Result]) -> Accepted:
        """Write the results this run may write: one write per file, each id at most once, ever.

        A result is taken only if ``expect`` asked for its id and no result of
        that id was accepted since; it goes to the output if ``ok``, else to the
        errors file, with the digest given to ``expect``. The rest are returned
        as refused (``unknown``: never asked for; ``repeated``: already has a
        line). A failed write raises ``OutputError`` and takes nothing.
        """
        verdict, ok_lines, error_lines, taken = Accepted(), [], [], []
        for result in results:
            key = hash(result.custom_id)
            if key not in self._asked:
                seen = self._table.flags(id_of(result.custom_id)) or any(key == other for _r, other, _d in taken)
                (verdict.repeated if seen else verdict.unknown).append(result.custom_id)
                continue
            digest = self._asked.pop(key)
            taken.append((result, key, digest))
            (ok_lines if result.ok else error_lines).append(self.encode(result, digest))
        sizes = dict(self._sizes)
        try:
            self.append(ok_lines, error_lines)
        except OutputError:
            self._cut_back(sizes)  # the output's lines too, when the errors file failed after it
            self._asked.update((key, digest) for _result, key, digest in taken)
            raise
        if not self._shared:
            for result, _key, _digest in taken:
                self._mark_done(result, id_of(result.custom_id))
        verdict.ok, verdict.failed = len(ok_lines), len(error_lines)
        return verdict

    def _cut_back(self, sizes: dict[str, int]) -> None:
        for name, size in sizes.items():
            if self._sizes[name] != size:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fds[name], size)
                self._sizes[name] = size

    def _mark_done(self, result: Result, key: int) -> None:
        before = self._table.update(key, DONE, FAILED) if result.ok else self._table.update(key, DONE | FAILED)
        self._done_count += not before & DONE

    def get(self, custom_id: str) -> Result | None:
        """The stored result of ``custom_id`` (only with ``keep_bodies``)."""
        return self._results.get(custom_id)

    def encode(self, result: Result, digest: str | None = None) -> bytes:
        """Serialise ``result`` with a fresh line id (and keep it, with ``keep_bodies``)."""
        if self.keep_bodies:
            self._results[result.custom_id] = result
        return result.to_line(compaction.line_id(self._run, next(self._ids)), digest)

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
        return self._opened

    @property
    def is_open(self) -> bool:
        """Whether the files are open (and the lock held)."""
        return bool(self._fds)

    def resend(self, custom_ids: set[str]) -> None:
        """These done records are sent again: their old lines go once the new ones are written.

        The intent is on disk before anything is sent, so if this run is killed,
        the next run on the output (of any kind) drops the old lines the new ones replaced.
        """
        if custom_ids and not self._intent:
            compaction.write_intent(self.real(self.output), [self._run])
            self._intent = True

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
                if self._intent:
                    self._compact()
            finally:
                self._unlock()

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _compact(self) -> None:
        """Drop the old lines of re-sent records (each file rewritten and renamed atomically)."""
        output = self.real(self.output)
        compaction.compact((output, self.real(self.errors)), {self._run})
        compaction.clear_intent(output)
        self._intent = False


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


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than it is given)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
