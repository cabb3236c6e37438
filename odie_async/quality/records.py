"""Reading filter input and the kept/dropped files that are its checkpoint.

Input is a JSON array or JSONL of objects holding ``instruction``, ``text`` and
``table`` strings; any other field passes through. A record's key is its ``id``
(as a string) or, without one, ``line:N`` (its line in JSONL, its position from 1
in an array), which is written back as ``source_line``. Every problem is an
``InputError`` naming the file and line, raised by ``validate`` before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from ..engine.checkpoint import repair_tail
from ..exceptions import DuplicateIdError, InputError

REQUIRED = ("instruction", "text", "table")


def _is_array(path: Path) -> bool:
    with open(path, "rb") as handle:
        while chunk := handle.read(4096):
            if chunk.strip():
                return chunk.lstrip().startswith(b"[")
    return False


def _raw(path: Path) -> Iterator[tuple[int, object]]:
    """``(line number, parsed value)`` per record; bad JSON is an InputError."""
    if _is_array(path):
        data = orjson.loads(path.read_bytes()) if path.stat().st_size else []
        if not isinstance(data, list):
            raise InputError(path, 1, "expected a JSON array of records or JSON lines")
        yield from enumerate(data, 1)
        return
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                yield line_no, orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InputError(path, line_no, f"not valid JSON ({exc})") from exc


def key_of(record: dict, line_no: int) -> str:
    """A record's checkpoint key: its ``id``, or ``line:N``."""
    return str(record["id"]) if record.get("id") is not None else f"line:{line_no}"


def _check(path: Path, line_no: int, record: object) -> dict:
    if not isinstance(record, dict):
        raise InputError(path, line_no, f"expected a JSON object, got {type(record).__name__}")
    for name in REQUIRED:
        if name == "text" and "text" not in record and isinstance(record.get("source_text"), str):
            continue  # an exported training line names its text source_text
        if not isinstance(record.get(name), str):
            problem = "is missing" if name not in record else f"must be a string, got {type(record[name]).__name__}"
            raise InputError(path, line_no, f"field {name!r} {problem}")
    return record


def read_input(path: str | Path) -> Iterator[tuple[str, int, dict]]:
    """``(key, line number, record)`` for each input record, in order."""
    path = Path(path)
    try:
        for line_no, value in _raw(path):
            record = _check(path, line_no, value)
            yield key_of(record, line_no), line_no, record
    except orjson.JSONDecodeError as exc:
        raise InputError(path, exc.lineno, f"not valid JSON ({exc})") from exc
    except OSError as exc:
        raise InputError(path, 0, f"cannot read ({exc.strerror})") from exc


def validate(path: str | Path) -> int:
    """Check the whole input before anything is written; return the record count."""
    seen: dict[str, int] = {}
    for key, line_no, _record in read_input(path):
        if key in seen:
            raise DuplicateIdError(str(path), key, seen[key], line_no)
        seen[key] = line_no
    return len(seen)


def written_keys(path: Path) -> Iterator[tuple[str, dict]]:
    """``(key, line)`` of each line of a kept or dropped file (a torn last line is cut first)."""
    if not path.exists():
        return
    repair_tail(path)
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InputError(path, line_no, f"unreadable line ({exc}); fix or remove it") from exc
            if not isinstance(line, dict) or (line.get("id") is None and not line.get("source_line")):
                raise InputError(path, line_no, "a line with neither 'id' nor 'source_line'; fix or remove it")
            yield key_of(line, line.get("source_line")), line
