"""The filters' index: for each field and value, the lines that hold it.

Built once by reading the file a page at a time (the first filter on a big
file waits for it; paging does not), extended as the file grows, and kept in
the per-user cache folder: a JSON header line (the file's device, inode, bytes
covered and a CRC of the last block), then the line numbers as little-endian
uint32 arrays. A line above ``records.LIMIT`` is not parsed: it is ``too large``.
"""

from __future__ import annotations

import os
import threading
from array import array

import orjson

from ..files import write_atomic
from .access import FileChanged, cache_path
from .index import LineIndex, block_crc
from .record_view import FACETS, LIMIT, facets

FACETS_SUFFIX = ".odie-facets"
PAGE = 20000
_VERSION = 2
PAGE_BYTES = 1 << 23


class FacetIndex:
    """Inverted lists ``field -> value -> line numbers`` over a ``LineIndex``."""

    def __init__(self, index: LineIndex, default_status: str = "kept") -> None:
        self.index = index
        self.default_status = default_status
        self._lock = threading.Lock()
        self._reset()
        self._loaded = False

    def _reset(self) -> None:
        self.lines = 0
        self.bytes = 0
        self.generation = self.index.generation
        self.values: dict[str, dict[str, array]] = {name: {} for name in FACETS}

    def refresh(self) -> None:
        """Index the lines added since the last call (all of them the first time)."""
        with self._lock:
            count = self.index.refresh() and self.index.complete
            if not self._loaded:
                self._loaded = True
                self._load()
            if self.lines > count or self.generation != self.index.generation:
                self._reset()
            if self.lines == count:
                return
            start = self.lines
            while start < count:
                stop = self._page_end(start, count)
                big = {n for n in range(start, stop) if self.index.size_of(n) > LIMIT}
                for number, raw in enumerate(self.index.lines(start, stop, cap=LIMIT), start):
                    self._add(number, None if number in big else raw)
                start = stop
            self.lines, self.bytes = count, self.index.offsets[count]
            self._save()

    def _page_end(self, start: int, count: int) -> int:
        """The end of a page from ``start``: ``PAGE`` lines, fewer when they hold more than ``PAGE_BYTES``."""
        stop = min(start + PAGE, count)
        limit = self.index.offsets[start] + PAGE_BYTES
        if self.index.offsets[stop] > limit:
            stop = max(start + 1, self.index.line_of(limit))
        return stop

    def _add(self, number: int, raw: bytes | None) -> None:
        if raw is None:
            values = {"status": ["too large"]}
        else:
            values = self._values(raw)
        for name, found in values.items():
            lists = self.values[name]
            for value in found:
                lists.setdefault(value, array("I")).append(number)

    def _values(self, raw: bytes) -> dict:
        try:
            record = orjson.loads(raw)
            values = facets(record, self.default_status) if isinstance(record, dict) else {"status": ["invalid"]}
        except orjson.JSONDecodeError:
            values = {"status": ["invalid"]}
        return values

    def counts(self) -> dict[str, dict[str, int]]:
        """How many lines hold each value, most common first."""
        return {name: dict(sorted(((v, len(a)) for v, a in lists.items()), key=lambda kv: (-kv[1], kv[0])))
                for name, lists in self.values.items() if lists}

    def select(self, wanted: dict[str, str]) -> list[int] | None:
        """Lines holding every ``field=value`` asked for, in order; None when nothing is asked."""
        chosen = None
        for name, value in wanted.items():
            lines = self.values.get(name, {}).get(value, array("I"))
            chosen = set(lines) if chosen is None else chosen.intersection(lines)
        return None if chosen is None else sorted(chosen)

    def _identity(self, end: int) -> dict:
        with self.index.open() as handle:
            info = os.fstat(handle.fileno())
            return {"dev": info.st_dev, "ino": info.st_ino, "crc": block_crc(handle, end) if end else 0}

    def _save(self) -> None:
        where = cache_path(self.index.path, FACETS_SUFFIX)
        if where is None:
            return
        fields = {name: [[v, len(a)] for v, a in lists.items()] for name, lists in self.values.items()}
        try:
            head = {"version": _VERSION, "lines": self.lines, "bytes": self.bytes, **self._identity(self.bytes),
                    "fields": fields}
            body = b"".join(a.tobytes() for lists in self.values.values() for a in lists.values())
            write_atomic(where, orjson.dumps(head) + b"\n" + body, mode=0o600, durable=False)
        except (OSError, FileChanged):
            pass  # a full disk or a file changing under us: the filters live in memory only

    def _load(self) -> None:
        where = cache_path(self.index.path, FACETS_SUFFIX)
        try:
            raw = where.read_bytes() if where else b""
            newline = raw.index(b"\n")
            head = orjson.loads(raw[:newline])
            if head.get("version") != _VERSION or head["lines"] > self.index.complete:
                return
            if self.index.offsets[head["lines"]] != head["bytes"]:
                return
            identity = self._identity(head["bytes"])
            if any(head[k] != v for k, v in identity.items()):
                return
        except (OSError, ValueError, KeyError, FileChanged, orjson.JSONDecodeError):
            return
        pos, values = newline + 1, {name: {} for name in FACETS}
        for name, pairs in head["fields"].items():
            for value, length in pairs:
                lines = array("I")
                lines.frombytes(raw[pos:pos + 4 * length])
                pos += 4 * length
                values.setdefault(name, {})[value] = lines
        self.values, self.lines, self.bytes = values, head["lines"], head["bytes"]
        self.generation = self.index.generation
