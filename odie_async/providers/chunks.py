"""Reading the input against the output, and splitting what still needs an answer into chunk files.

``scan_input`` validates every line before a single call (a bad one stops the
run with ``FILE:LINE``) and finds, from the output and errors files, the
records that still need an answer and the answered ones whose request has
changed since (by the same ``request_digest`` as the online path). ``plan``
groups the records no chunk covers by endpoint and model (one of each per
batch file) and closes a group's chunk when the next line would pass the
request or byte limit. The grouping depends only on the records, so records
planned again after a journal was lost make the same files, and so the same
content hashes, as before: ``find_file``/``find_batch`` adopt what was sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..engine.batchfile import BatchLine, BatchReader
from ..engine.checkpoint import ResultStore, request_digest
from ..exceptions import InputError
from ..files import write_atomic
from .base import BatchProvider, Chunk, Limits
from .journal import Journal


@dataclass
class InputScan:
    """What the input asks for that the output does not hold yet (``wanted``: custom_id -> request digest)."""

    wanted: dict[str, str] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    first_changed: str = ""
    records: int = 0
    invalid: int = 0


@dataclass
class _Open:
    url: str
    model: str | None
    lines: list[bytes] = field(default_factory=list)
    size: int = 0


def encode_line(line: BatchLine) -> bytes:
    """One input line in the Batch API input format."""
    return orjson.dumps({"custom_id": line.custom_id, "method": "POST", "url": line.url, "body": line.body}) + b"\n"


def line_digest(line: BatchLine) -> str:
    """The request digest of a line, exactly as the online engine computes it."""
    return request_digest(line.url, orjson.dumps(line.body))


def _as_sent(line: BatchLine, model: str | None) -> BatchLine:
    if model:
        line.body["model"] = model
    return line


def scan_input(path: str, store: ResultStore, provider: type[BatchProvider], limits: Limits,
               model: str | None, skip_invalid: bool) -> InputScan:
    """Validate every line; collect the records not answered yet and the answered ones asked differently."""
    scan = InputScan()
    reader = BatchReader(path, skip_invalid=skip_invalid)
    for line in reader:
        line = _as_sent(line, model)
        scan.records += 1
        problem = provider.problem(line)
        if problem:
            raise InputError(path, line.line_no, problem)
        size = len(encode_line(line))
        if size > limits.max_bytes:
            raise InputError(path, line.line_no, f"request of {size:,} bytes exceeds the batch limit")
        digest = line_digest(line)
        if store.done(line.custom_id):
            if not store.changed(line.custom_id, digest):
                continue
            scan.changed.append(line.custom_id)
            scan.first_changed = scan.first_changed or f"{line.custom_id!r} on {path}:{line.line_no}"
        scan.wanted[line.custom_id] = digest
    scan.invalid = reader.invalid
    return scan


def write_chunk(workdir: Path, run_id: str, key: str, lines: list[bytes], url: str, model: str | None,
                attempt: int = 0) -> Chunk:
    """Write a chunk file (temporary name, rename) and describe it."""
    data = b"".join(lines)
    path = workdir / f"{run_id}-{key}.jsonl"
    write_atomic(path, data)
    return Chunk(key, path, hashlib.sha256(data).hexdigest(), len(lines), url, model, attempt, run_id)


def next_key(journal: Journal) -> str:
    """A chunk key no chunk of this journal has."""
    n = len(journal.state.chunks)
    while f"{n:04d}" in journal.state.chunks:
        n += 1
    return f"{n:04d}"


def plan(path: str, journal: Journal, limits: Limits, todo: set[str], model: str | None,
         skip_invalid: bool) -> int:
    """Journal chunks holding the records in ``todo``, in input order; the number of chunks."""
    journal.workdir.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple, _Open] = {}
    made = 0

    def close(group: _Open) -> None:
        nonlocal made
        journal.add_chunk(write_chunk(journal.workdir, journal.state.run_id, next_key(journal), group.lines,
                                      group.url, group.model))
        made += 1

    for line in BatchReader(path, skip_invalid=skip_invalid):
        if line.custom_id not in todo:
            continue
        line = _as_sent(line, model)
        raw = encode_line(line)
        group_key = (line.url, line.body.get("model"))
        group = groups.setdefault(group_key, _Open(*group_key))
        if len(group.lines) >= limits.max_requests or group.size + len(raw) > limits.max_bytes:
            close(group)
            group = groups[group_key] = _Open(*group_key)
        group.lines.append(raw)
        group.size += len(raw)
    for group in groups.values():
        if group.lines:
            close(group)
    return made


def resubmission(journal: Journal, parent: Chunk, leftover: list[BatchLine]) -> None:
    """Journal a chunk holding ``leftover`` (records a batch never ran or whose results are gone)."""
    chunk = write_chunk(journal.workdir, journal.state.run_id, next_key(journal),
                        [encode_line(line) for line in leftover], parent.url, parent.model, parent.attempt + 1)
    journal.add_chunk(chunk, parent=parent.key)
