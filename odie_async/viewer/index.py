"""Line-offset indexes of JSONL files: open a million lines at once, page without reading the file whole.

``LineIndex`` keeps the byte offset of every complete line in ``FILE.odie-idx``
beside the file (built once, extended when the file grows, rebuilt when it was
replaced). A page is one seek and one read. ``search`` scans the file through
``mmap`` (the operating system pages it in, Python never holds it) and maps each
hit to its line.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import threading
import time
import zlib
from array import array
from bisect import bisect_right
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

INDEX_SUFFIX = ".odie-idx"
_HEAD = struct.Struct("<8sQQI")  # magic, indexed bytes, lines, crc32 of the first PROBE bytes
_MAGIC = b"ODIEIDX1"
PROBE = 65536
CHUNK = 1 << 23
SAVE_EVERY_S = 5.0


def index_path(path: Path) -> Path:
    """Where the index of ``path`` lives: beside it."""
    return path.with_name(path.name + INDEX_SUFFIX)


def probe(path: Path, size: int) -> int:
    """CRC-32 of the first bytes of ``path`` (up to ``size``): tells a replaced file from a grown one."""
    with open(path, "rb") as handle:
        return zlib.crc32(handle.read(min(size, PROBE)))


class LineIndex:
    """Offsets of the complete lines of one JSONL file; safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offsets = array("Q", [0])  # offsets[i]: start of line i; offsets[-1]: end of the last line
        self._probe = 0
        self._saved_at = 0.0
        self._saved_count = -1
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """Complete lines indexed."""
        return len(self.offsets) - 1

    @property
    def indexed_bytes(self) -> int:
        """Bytes of the file the index covers."""
        return self.offsets[-1]

    def refresh(self) -> int:
        """Bring the index up to the file (load, extend or rebuild); return the line count."""
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:  # not written yet (a run just starting)
                size = 0
            if self.count == 0 and self._saved_count < 0:
                self._load()
            if size < self.indexed_bytes or (self.indexed_bytes and probe(self.path, self.indexed_bytes) != self._probe):
                log.info("file replaced; index rebuilt", path=str(self.path))
                self.offsets = array("Q", [0])
            if size > self.indexed_bytes:
                self._scan(size)
                self._save()
            return self.count

    def _scan(self, size: int) -> None:
        start = self.indexed_bytes
        with open(self.path, "rb") as handle:
            handle.seek(start)
            base = start
            while base < size:
                chunk = handle.read(min(CHUNK, size - base))
                if not chunk:
                    break
                self.offsets.extend(m.end() + base for m in re.finditer(b"\n", chunk))
                base += len(chunk)
        self._probe = probe(self.path, self.indexed_bytes) if self.indexed_bytes else 0

    def _load(self) -> None:
        where = index_path(self.path)
        try:
            raw = where.read_bytes()
            magic, indexed, lines, crc = _HEAD.unpack_from(raw)
        except (OSError, struct.error):
            return
        offsets = array("Q")
        offsets.frombytes(raw[_HEAD.size:_HEAD.size + 8 * (lines + 1)])
        if magic != _MAGIC or len(offsets) != lines + 1 or offsets[-1] != indexed:
            return
        if indexed > self.path.stat().st_size or (indexed and probe(self.path, indexed) != crc):
            return
        self.offsets, self._probe, self._saved_count = offsets, crc, lines

    def _save(self) -> None:
        now = time.monotonic()
        if self.count == self._saved_count or (now - self._saved_at < SAVE_EVERY_S and self._saved_count >= 0):
            return
        where = index_path(self.path)
        tmp = where.with_name(where.name + f".{os.getpid()}.tmp")
        try:
            tmp.write_bytes(_HEAD.pack(_MAGIC, self.indexed_bytes, self.count, self._probe) + self.offsets.tobytes())
            os.replace(tmp, where)
        except OSError as exc:  # a read-only folder: the index lives in memory only
            log.info("index kept in memory only", path=str(where), error=str(exc))
        self._saved_at, self._saved_count = now, self.count

    def lines(self, start: int, stop: int) -> list[bytes]:
        """The raw lines ``start`` up to ``stop`` (clamped), without their newlines."""
        start, stop = max(0, start), min(stop, self.count)
        if start >= stop:
            return []
        first, last = self.offsets[start], self.offsets[stop]
        with open(self.path, "rb") as handle:
            handle.seek(first)
            data = handle.read(last - first)
        return [data[self.offsets[i] - first:self.offsets[i + 1] - first].rstrip(b"\r\n") for i in range(start, stop)]

    def pick(self, numbers) -> list[bytes]:
        """The raw lines with the given numbers (each below ``count``)."""
        out = []
        with open(self.path, "rb") as handle:
            for i in numbers:
                handle.seek(self.offsets[i])
                out.append(handle.read(self.offsets[i + 1] - self.offsets[i]).rstrip(b"\r\n"))
        return out

    def line(self, number: int) -> bytes:
        """One raw line; ``IndexError`` past the end."""
        if not 0 <= number < self.count:
            raise IndexError(number)
        return self.lines(number, number + 1)[0]

    def line_of(self, offset: int) -> int:
        """The line holding byte ``offset``."""
        return bisect_right(self.offsets, offset) - 1

    def search(self, needle: bytes) -> array:
        """Numbers of the lines holding ``needle`` (ASCII case-insensitive), in order."""
        hits = array("I")
        end = self.indexed_bytes
        if not needle or end == 0:
            return hits
        pattern = re.compile(re.escape(needle), re.IGNORECASE)
        with open(self.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            pos = 0
            while True:
                found = pattern.search(view, pos, end)
                if found is None:
                    return hits
                number = self.line_of(found.start())
                hits.append(number)
                pos = self.offsets[number + 1]
