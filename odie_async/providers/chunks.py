"""Splitting an input file into chunk files within a provider's limits, before anything is sent.

Records are grouped by endpoint and model (one of each per batch file) and a
group's chunk is closed when the next line would pass the request or byte
limit. Every line is validated here, so a bad one stops the run with
``FILE:LINE`` before a single call. Records already in the output or errors
file are left out: a run that continues an online run sends only the rest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..engine.batchfile import BatchLine, BatchReader
from ..engine.checkpoint import ResultStore
from ..exceptions import InputError
from ..files import write_atomic
from .base import BatchProvider, Chunk, Limits
from .journal import Journal


@dataclass
class _Open:
    url: str
    model: str | None
    lines: list[bytes] = field(default_factory=list)
    size: int = 0


def encode_line(line: BatchLine) -> bytes:
    """One input line in the Batch API input format."""
    return orjson.dumps({"custom_id": line.custom_id, "method": "POST", "url": line.url, "body": line.body}) + b"\n"


def write_chunk(workdir: Path, run_id: str, key: str, lines: list[bytes], url: str, model: str | None,
                attempt: int = 0) -> Chunk:
    """Write a chunk file durably (temporary name, fsync, rename) and describe it."""
    data = b"".join(lines)
    path = workdir / f"{run_id}-{key}.jsonl"
    write_atomic(path, data)
    return Chunk(key, path, hashlib.sha256(data).hexdigest(), len(lines), url, model, attempt)


def plan(input_path: str, store: ResultStore, journal: Journal, provider: type[BatchProvider], limits: Limits,
         run_id: str, model: str | None = None, skip_invalid: bool = False) -> BatchReader:
    """Journal a new run and its chunks; return the reader (its ``invalid`` count)."""
    shutil.rmtree(journal.workdir, ignore_errors=True)  # left by a plan that never finished
    journal.workdir.mkdir(parents=True)
    journal.write("run", run_id=run_id, provider=provider.name, input_bytes=os.path.getsize(input_path))
    reader = BatchReader(input_path, skip_invalid=skip_invalid)
    groups: dict[tuple, _Open] = {}
    keys = iter(range(10**6))

    def close(group: _Open) -> None:
        journal.add_chunk(write_chunk(journal.workdir, run_id, f"{next(keys):04d}", group.lines, group.url, group.model))

    for line in reader:
        if model:
            line.body["model"] = model
        problem = provider.problem(line)
        if problem:
            raise InputError(input_path, line.line_no, problem)
        if store.done(line.custom_id):
            continue
        raw = encode_line(line)
        if len(raw) > limits.max_bytes:
            raise InputError(input_path, line.line_no, f"request of {len(raw):,} bytes exceeds the batch limit")
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
    journal.write("planned")
    return reader


def resubmission(journal: Journal, parent: Chunk, leftover: list[BatchLine], run_id: str) -> None:
    """Journal a chunk holding ``leftover`` (records a batch never ran), once per parent."""
    key = f"{parent.key.split('r')[0]}r{parent.attempt + 1}"
    if key in journal.state.chunks:
        return  # planned before a crash: its file may already be uploaded, keep it as it is
    chunk = write_chunk(journal.workdir, run_id, key, [encode_line(line) for line in leftover],
                        parent.url, parent.model, parent.attempt + 1)
    journal.add_chunk(chunk, parent=parent.key)
