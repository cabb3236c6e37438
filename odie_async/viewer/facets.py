"""The filters' index: for each field and value, the lines that hold it.

Built once by reading the file a page at a time (the first filter on a big
file waits for it; paging does not), extended as the file grows, and kept
beside the file as ``FILE.odie-facets``: a JSON header line, then the line
numbers as little-endian uint32 arrays.
"""

from __future__ import annotations

import os
import threading
from array import array
from pathlib import Path

import orjson

from .index import LineIndex, probe
from .records import FACETS, facets

FACETS_SUFFIX = ".odie-facets"
PAGE = 20000
_VERSION = 1


class FacetIndex:
    """Inverted lists ``field -> value -> line numbers`` over a ``LineIndex``."""

    def __init__(self, index: LineIndex, default_status: str = "kept") -> None:
        self.index = index
        self.default_status = default_status
        self.path = index.path.with_name(index.path.name + FACETS_SUFFIX)
        self._lock = threading.Lock()
        self._reset()
        self._load()

    def _reset(self) -> None:
        self.lines = 0
        self.bytes = 0
        self.values: dict[str, dict[str, array]] = {name: {} for name in FACETS}

    def refresh(self) -> None:
        """Index the lines added since the last call (all of them the first time)."""
        with self._lock:
            count = self.index.refresh()
            if self.lines > count or self.index.offsets[self.lines] != self.bytes:
                self._reset()
            if self.lines == count:
                return
            for start in range(self.lines, count, PAGE):
                for number, raw in enumerate(self.index.lines(start, min(start + PAGE, count)), start):
                    self._add(number, raw)
            self.lines, self.bytes = count, self.index.offsets[count]
            self._save()

    def _add(self, number: int, raw: bytes) -> None:
        try:
            record = orjson.loads(raw)
            values = facets(record, self.default_status) if isinstance(record, dict) else {"status": ["invalid"]}
        except orjson.JSONDecodeError:
            values = {"status": ["invalid"]}
        for name, found in values.items():
            lists = self.values[name]
            for value in found:
                lists.setdefault(value, array("I")).append(number)

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

    def _save(self) -> None:
        fields = {name: [[v, len(a)] for v, a in lists.items()] for name, lists in self.values.items()}
        head = {"version": _VERSION, "lines": self.lines, "bytes": self.bytes,
                "probe": probe(self.index.path, self.bytes), "fields": fields}
        body = b"".join(a.tobytes() for lists in self.values.values() for a in lists.values())
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        try:
            tmp.write_bytes(orjson.dumps(head) + b"\n" + body)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only folder: the filters live in memory only

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
            newline = raw.index(b"\n")
            head = orjson.loads(raw[:newline])
            if head.get("version") != _VERSION or head["bytes"] > self.index.path.stat().st_size:
                return
            if probe(self.index.path, head["bytes"]) != head["probe"]:
                return
        except (OSError, ValueError, KeyError, orjson.JSONDecodeError):
            return
        pos, values = newline + 1, {name: {} for name in FACETS}
        for name, pairs in head["fields"].items():
            for value, length in pairs:
                lines = array("I")
                lines.frombytes(raw[pos:pos + 4 * length])
                pos += 4 * length
                values.setdefault(name, {})[value] = lines
        self.values, self.lines, self.bytes = values, head["lines"], head["bytes"]
