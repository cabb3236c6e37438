"""Line-offset indexes of JSONL files: open a million lines at once, page without reading the file whole.

``LineIndex`` keeps the byte offset of every complete line, saved in the per-user
cache folder (built once, extended when the file grows, rebuilt when it was
replaced or rewritten). The index knows its file: device, inode, size, mtime and
a CRC-32 of the last indexed block. A page is one seek and one read, through a
file object (never mmap: a file that shrinks under a read is an error for that
request, not a crash); a search reads the file in bounded chunks.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import time
import zlib
from array import array
from bisect import bisect_right
from pathlib import Path

import orjson
import structlog

from ..files import write_atomic
from .access import FileChanged, Scope, cache_path, everything

log = structlog.get_logger(__name__)

INDEX_SUFFIX = ".odie-idx"
_HEAD = struct.Struct("<8sQQQqQI")  # magic, device, inode, indexed bytes, mtime ns, lines, crc32 of the last block
_MAGIC = b"ODIEIDX2"
PROBE = 65536
CHUNK = 1 << 23
SAVE_EVERY_S = 5.0
TAIL_QUIET_S = 2.0  # a last line without its newline, unchanged this long, is a finished line
MAX_TAIL = 1 << 22


def index_path(path: Path) -> Path | None:
    """Where the index of ``path`` is saved (the per-user cache folder), or None."""
    return cache_path(path, INDEX_SUFFIX)


def block_crc(handle, end: int) -> int:
    """CRC-32 of the last ``PROBE`` bytes before ``end``: tells a grown file from a rewritten one."""
    start = max(0, end - PROBE)
    data = os.pread(handle.fileno(), end - start, start)
    if len(data) != end - start:
        raise FileChanged("the file shrank while it was read")
    return zlib.crc32(data)


class LineIndex:
    """Offsets of the lines of one JSONL file; safe to share between threads."""

    def __init__(self, path: str | Path, scope: Scope | None = None) -> None:
        self.path = Path(path)
        self.scope = scope or everything()
        self.offsets = array("Q", [0])  # offsets[i]: start of line i; offsets[-1]: end of the last complete line
        self.tail_end = 0  # end of a last line without its newline, shown once finished; 0 when none
        self.generation = 0  # changes whenever the index is rebuilt (the file replaced or rewritten)
        self._identity = (0, 0)  # device and inode the offsets belong to
        self._crc = 0
        self._seen: tuple = ()
        self._saved_at = 0.0
        self._saved_count = -1
        self._lock = threading.Lock()

    @property
    def complete(self) -> int:
        """Lines that end in a newline."""
        return len(self.offsets) - 1

    @property
    def count(self) -> int:
        """Lines shown: the complete ones, and a finished last line without its newline."""
        return self.complete + (1 if self.tail_end else 0)

    @property
    def indexed_bytes(self) -> int:
        """Bytes of the file the complete lines cover."""
        return self.offsets[-1]

    def span(self, number: int) -> tuple[int, int]:
        """``(start, end)`` in bytes of line ``number`` (below ``count``), without its newline."""
        end = self.offsets[number + 1] if number < self.complete else self.tail_end
        return self.offsets[number], end

    def size_of(self, number: int) -> int:
        """Bytes of line ``number``."""
        start, end = self.span(number)
        return end - start

    def open(self):
        """The file, opened through the scope."""
        return self.scope.open(self.path)

    def refresh(self) -> int:
        """Bring the index up to the file (load, extend or rebuild); return the line count."""
        with self._lock:
            try:
                handle = self.open()
            except FileNotFoundError:  # not written yet (a run just starting)
                self._rebuild_if(self.complete > 0 or self.tail_end, "file gone")
                return 0
            with handle:
                self._refresh(handle, os.fstat(handle.fileno()))
            return self.count

    def _refresh(self, handle, info: os.stat_result) -> None:
        seen = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if seen == self._seen:
            return
        if self._saved_count < 0:
            self._load(handle, info)
        identity, size = (info.st_dev, info.st_ino), info.st_size
        if self.complete and (identity != self._identity or size < self.indexed_bytes
                              or block_crc(handle, self.indexed_bytes) != self._crc):
            self._rebuild_if(True, "file replaced or rewritten")
        self._identity = identity
        if size > self.indexed_bytes:
            self._scan(handle, size)
            self._save()
        if self._tail(handle, size, info.st_mtime_ns):
            self._seen = seen

    def _rebuild_if(self, changed, why: str) -> None:
        if changed:
            log.info("index rebuilt", path=str(self.path), why=why)
            self.offsets, self.tail_end, self._seen = array("Q", [0]), 0, ()
            self.generation += 1

    def _scan(self, handle, size: int) -> None:
        base = self.indexed_bytes
        handle.seek(base)
        while base < size:
            chunk = handle.read(min(CHUNK, size - base))
            if not chunk:
                break
            self.offsets.extend(m.end() + base for m in re.finditer(b"\n", chunk))
            base += len(chunk)
        self._crc = block_crc(handle, self.indexed_bytes) if self.indexed_bytes else 0

    def _tail(self, handle, size: int, mtime_ns: int) -> bool:
        """Show a last line without its newline once it is JSON or quiet; False: look again next time."""
        self.tail_end = 0
        length = size - self.indexed_bytes
        if not 0 < length <= MAX_TAIL:
            return True
        quiet = time.time() - mtime_ns / 1e9 >= TAIL_QUIET_S
        raw = os.pread(handle.fileno(), length, self.indexed_bytes)
        if raw.strip() and (quiet or _is_json(raw)):
            self.tail_end = self.indexed_bytes + len(raw.rstrip(b"\r"))
        return quiet or bool(self.tail_end)

    def _load(self, handle, info: os.stat_result) -> None:
        self._saved_count = 0
        where = index_path(self.path)
        try:
            raw = where.read_bytes() if where else b""
            magic, dev, ino, indexed, _mtime, lines, crc = _HEAD.unpack_from(raw)
        except (OSError, struct.error):
            return
        offsets = array("Q")
        offsets.frombytes(raw[_HEAD.size:_HEAD.size + 8 * (lines + 1)])
        if magic != _MAGIC or len(offsets) != lines + 1 or offsets[-1] != indexed:
            return
        if (dev, ino) != (info.st_dev, info.st_ino) or indexed > info.st_size:
            return
        if indexed and block_crc(handle, indexed) != crc:
            return
        self.offsets, self._crc, self._saved_count, self._identity = offsets, crc, lines, (dev, ino)

    def _save(self) -> None:
        now = time.monotonic()
        if self.complete == self._saved_count or (now - self._saved_at < SAVE_EVERY_S and self._saved_count > 0):
            return
        where = index_path(self.path)
        if where is None:
            return
        head = _HEAD.pack(_MAGIC, *self._identity, self.indexed_bytes, self._seen_mtime(), self.complete, self._crc)
        try:
            write_atomic(where, head + self.offsets.tobytes(), mode=0o600, durable=False)
        except OSError as exc:  # a full disk: the index lives in memory only
            log.info("index kept in memory only", path=str(where), error=str(exc))
        self._saved_at, self._saved_count = now, self.complete

    def _seen_mtime(self) -> int:
        return self._seen[3] if self._seen else 0

    def read_span(self, handle, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` of the open file; ``FileChanged`` when the file no longer holds them."""
        data = os.pread(handle.fileno(), end - start, start)
        if len(data) != end - start:
            raise FileChanged(f"{self.path.name} shrank while it was read; reload the page")
        return data

    def lines(self, start: int, stop: int, cap: int | None = None) -> list[bytes]:
        """The raw lines ``start`` up to ``stop`` (clamped), without their newlines; each cut at ``cap`` bytes."""
        start, stop = max(0, start), min(stop, self.count)
        if start >= stop:
            return []
        with self.open() as handle:
            first, last = self.offsets[start], self.span(stop - 1)[1]
            if cap is None or last - first <= CHUNK:
                data = self.read_span(handle, first, last)
                return [_cut(data[a - first:b - first], cap) for a, b in map(self.span, range(start, stop))]
            return [self._capped(handle, i, cap) for i in range(start, stop)]

    def _capped(self, handle, number: int, cap: int | None) -> bytes:
        begin, end = self.span(number)
        return self.read_span(handle, begin, end if cap is None else min(end, begin + cap)).rstrip(b"\r\n")

    def pick(self, numbers, cap: int | None = None) -> list[bytes]:
        """The raw lines with the given numbers (each below ``count``), each cut at ``cap`` bytes."""
        if not len(numbers):
            return []
        with self.open() as handle:
            return [self._capped(handle, i, cap) for i in numbers]

    def line(self, number: int) -> bytes:
        """One raw line; ``IndexError`` past the end."""
        if not 0 <= number < self.count:
            raise IndexError(number)
        return self.lines(number, number + 1)[0]

    def line_of(self, offset: int) -> int:
        """The line holding byte ``offset``."""
        return bisect_right(self.offsets, offset) - 1

    def search(self, needle: bytes) -> array:
        """Numbers of the complete lines holding ``needle`` (ASCII case-insensitive), in order."""
        hits = array("I")
        end = self.indexed_bytes
        if not needle or end == 0:
            return hits
        pattern = re.compile(re.escape(needle), re.IGNORECASE)
        overlap = len(needle) - 1
        with self.open() as handle:
            base = 0
            while base < end:
                chunk = self.read_span(handle, base, min(end, base + CHUNK + overlap))
                for found in pattern.finditer(chunk):
                    number = self.line_of(base + found.start())
                    if not hits or hits[-1] != number:
                        hits.append(number)
                base += CHUNK
        return hits


def _cut(data: bytes, cap: int | None) -> bytes:
    data = data.rstrip(b"\r\n")
    return data if cap is None else data[:cap]


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True
