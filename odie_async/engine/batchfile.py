"""Reading OpenAI Batch API input files, one line at a time, with exact error locations.

Each line is ``{"custom_id", "method", "url", "body"}``. The reader streams:
it never holds the file, only the ids read so far in an ``IdTable`` (about 10
bytes an id), which is what finding a duplicate ``custom_id`` needs; the first
line of a duplicate is looked up in the file again when one is found.
"""

from __future__ import annotations

import codecs
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import orjson
import structlog

from .idtable import READ, IdTable, id_of
from .routes import SUPPORTED_URLS
from ..exceptions import DuplicateIdError, InputError

log = structlog.get_logger(__name__)



@dataclass(slots=True)
class BatchLine:
    """One valid input line."""

    line_no: int
    custom_id: str
    url: str
    body: dict


def count_lines(path: str | Path, stop: threading.Event | None = None) -> int:
    """Number of lines in ``path``, counted in 1 MiB blocks (for progress and ETA); -1 once ``stop`` is set."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            if stop is not None and stop.is_set():
                return -1
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def parse_line(path: str, line_no: int, raw: bytes) -> BatchLine:
    """Validate one raw line; raise ``InputError`` naming ``path:line_no`` if it is wrong."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(path, line_no, _json_problem(raw, exc)) from None
    return check_record(path, line_no, record)


def check_record(path: str, line_no: int, record) -> BatchLine:
    """Validate one parsed record; raise ``InputError`` naming ``path:line_no`` if it is wrong."""
    if not isinstance(record, dict):
        raise InputError(path, line_no, "expected a JSON object")
    missing = [k for k in ("custom_id", "method", "url", "body") if k not in record]
    if missing:
        raise InputError(path, line_no, f"missing field(s): {', '.join(missing)}")
    custom_id, url, body = record["custom_id"], record["url"], record["body"]
    if not isinstance(custom_id, str) or not custom_id:
        raise InputError(path, line_no, "custom_id must be a non-empty string")
    if str(record["method"]).upper() != "POST":
        raise InputError(path, line_no, f"method must be POST, not {record['method']!r}")
    if url not in SUPPORTED_URLS:
        raise InputError(path, line_no, f"url {url!r} is not one of {', '.join(SUPPORTED_URLS)}")
    if not isinstance(body, dict):
        raise InputError(path, line_no, "body must be a JSON object")
    if body.get("stream"):
        raise InputError(path, line_no, '"stream": true in the body: each line\'s answer is stored whole; '
                         "drop it, or run odie batch --stream to stream and record each request's timings")
    return BatchLine(line_no, custom_id, url, body)


def _json_problem(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not valid UTF-8 (byte 0x{raw[bad.start]:02x} at column {bad.start + 1})"
    return f"not valid JSON ({exc})"


class BatchReader:
    """Iterates the valid lines of an input file, finding duplicates as it goes.

    With ``skip_invalid`` a bad line is logged and counted in ``invalid``
    instead of raised; a duplicate id is always an error. ``ids`` is the table
    the ids read are marked in (``ResultStore.share_ids``: one table for the
    store and the reader); without it the reader keeps its own, sized from the
    file's line count.
    """

    def __init__(self, path: str | Path, skip_invalid: bool = False, stop: threading.Event | None = None,
                 ids: IdTable | None = None) -> None:
        self.path = str(path)
        self.skip_invalid = skip_invalid
        self.invalid = 0
        self.stopped = False
        self._stop = stop
        self._own = ids is None
        self._ids = IdTable() if ids is None else ids

    def __iter__(self) -> Iterator[BatchLine]:
        if self._own and not len(self._ids):
            self._ids.reserve(max(0, count_lines(self.path, self._stop)))  # one allocation, never doubled
        with open(self.path, "rb") as handle:
            for line_no, raw in enumerate(handle, 1):
                if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]  # Windows editors write one; it is no content
                if not raw.strip():
                    continue
                if self._stop is not None and not line_no & 1023 and self._stop.is_set():
                    self.stopped = True
                    return
                line = self._valid(parse_line, line_no, raw)
                if line is not None:
                    self._check_unique(line)
                    yield line

    def _valid(self, check, line_no: int, raw) -> BatchLine | None:
        """``check(path, line_no, raw)``, or None (logged, counted) for a bad line under ``skip_invalid``."""
        try:
            return check(self.path, line_no, raw)
        except InputError as exc:
            if not self.skip_invalid:
                raise
            self.invalid += 1
            log.warning("skipped invalid line", file=self.path, line=line_no, problem=exc.message)
            return None

    def _check_unique(self, line: BatchLine) -> None:
        if not self._ids.update(id_of(line.custom_id), READ) & READ:
            return
        first = self._first_line_of(line.custom_id, line.line_no)
        if first is not None:
            raise DuplicateIdError(self.path, line.custom_id, first, line.line_no)

    def _first_line_of(self, custom_id: str, before: int) -> int | None:
        """The earlier line holding ``custom_id``; None when the hash match was a collision."""
        with open(self.path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if number >= before:
                    return None
                try:
                    if orjson.loads(raw).get("custom_id") == custom_id:
                        return number
                except (orjson.JSONDecodeError, AttributeError):
                    continue  # a line skipped as invalid earlier
        return None


class RecordReader(BatchReader):
    """Iterates records given as Python dicts (a library caller's input), checked like file lines."""

    def __init__(self, records: Iterable[dict], skip_invalid: bool = False, label: str = "<records>",
                 ids: IdTable | None = None) -> None:
        super().__init__(label, skip_invalid, ids=ids)
        self._records = records

    def __iter__(self) -> Iterator[BatchLine]:
        for line_no, record in enumerate(self._records, 1):
            line = self._valid(check_record, line_no, record)
            if line is None:
                continue
            if self._ids.update(id_of(line.custom_id), READ) & READ:
                raise InputError(self.path, line_no, f"duplicate custom_id {line.custom_id!r}")
            yield line
