"""The write-ahead journal of a provider-batch run: what was planned, asked for and got back.

One JSON object per line beside the output (``OUT.batches.jsonl``), each
written with one ``os.write`` and fsynced before the step it announces, so a
crash at any instant leaves either no trace of a call (it was never made) or
its intent: an ``upload_intent`` or ``create_intent`` with no id after it.
The runner reconciles such an intent by looking for the file or batch at the
provider before it makes the call again. Replaying the journal rebuilds the
``RunState``.

The journal is a memory, not the truth: the output and errors files are. A
journal cut short, with lines missing or deleted, replays what it still
holds (a line it cannot read or that names an unknown chunk is passed over,
with a warning), and every start checks it against the output, the input and
the provider (``runner.py``).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import structlog

from ..engine.checkpoint import repair_tail
from ..exceptions import OutputError
from .base import Chunk

log = structlog.get_logger(__name__)

KILL_ENV = "ODIE_BATCH_KILL_AT"
_hits: dict[str, int] = {}


def crashpoint(step: str) -> None:
    """Kill this process with SIGKILL at the n-th arrival at ``step`` when ``ODIE_BATCH_KILL_AT=step:n``.

    A testing hook that makes every step of a provider-batch run observable
    to crash tests; without the variable it costs one dictionary lookup.
    """
    target = os.environ.get(KILL_ENV)
    if not target:
        return
    name, _, count = target.partition(":")
    if name != step:
        return
    _hits[step] = _hits.get(step, 0) + 1
    if _hits[step] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class ChunkState:
    """One chunk's progress as the journal tells it."""

    chunk: Chunk
    parent: str | None = None
    file_id: str | None = None
    upload_at: float | None = None
    batch_id: str | None = None
    create_at: float | None = None
    adopted: bool = False
    cancel_reason: str | None = None
    outcome: str | None = None
    status: str | None = None
    rejected: set[str] = field(default_factory=set)
    dropped: bool = False  # its file is gone or altered: the run no longer counts on it

    @property
    def submitted(self) -> bool:
        """Whether the provider holds a batch for this chunk."""
        return self.batch_id is not None

    @property
    def settled(self) -> bool:
        """Whether every record of the chunk has its fate decided."""
        return self.outcome is not None


@dataclass
class RunState:
    """A run as replayed from its journal."""

    run_id: str | None = None
    provider: str | None = None
    started_at: float | None = None
    chunks: dict[str, ChunkState] = field(default_factory=dict)
    skipped: int = 0  # journal lines that could not be replayed

    def taken(self) -> set[str]:
        """Batch ids some chunk of this run holds."""
        return {c.batch_id for c in self.chunks.values() if c.batch_id}


class Journal:
    """Appends events durably and replays them."""

    def __init__(self, path: str | Path, workdir: str | Path) -> None:
        self.path = Path(path)
        self.workdir = Path(workdir)
        self.state = RunState()
        self._fd: int | None = None

    def open(self) -> RunState:
        """Repair a torn tail, replay every event, open for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        if self.path.exists():
            with open(self.path, "rb") as handle:
                for line_no, raw in enumerate(handle, 1):
                    try:
                        self._apply(orjson.loads(raw))
                    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
                        self.state.skipped += 1
                        log.warning("journal line passed over", file=str(self.path), line=line_no, why=str(exc)[:200])
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self.state

    def close(self) -> None:
        """Close the journal."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(self, event: str, **fields) -> None:
        """Append one event and force it to disk before returning."""
        record = {"e": event, "t": round(time.time(), 3)} | fields
        data = orjson.dumps(record) + b"\n"
        try:
            os.write(self._fd, data)
            os.fsync(self._fd)
        except OSError as exc:
            raise OutputError(self.path, exc) from exc
        self._apply(record)

    def add_chunk(self, chunk: Chunk, parent: str | None = None) -> None:
        """Journal a planned chunk (its file is already on disk)."""
        self.write("chunk", key=chunk.key, file=chunk.path.name, sha256=chunk.sha256, count=chunk.count,
                   url=chunk.url, model=chunk.model, attempt=chunk.attempt, parent=parent)

    def _apply(self, r: dict) -> None:
        state, event = self.state, r["e"]
        if event == "run":  # the first one names the run; one written after a lost head adds nothing
            if state.run_id is None:
                state.run_id, state.provider, state.started_at = r["run_id"], r["provider"], r["t"]
            return
        if event == "planned":
            return  # written by earlier versions
        if event == "chunk":
            name = Path(r["file"]).name
            chunk = Chunk(r["key"], self.workdir / name, r["sha256"], r["count"], r["url"], r["model"], r["attempt"],
                          name.partition("-")[0])
            state.chunks.setdefault(r["key"], ChunkState(chunk, r.get("parent")))
            return
        c = state.chunks[r["key"]]
        if event == "upload_intent":
            c.upload_at = r["t"]
        elif event == "uploaded":
            c.file_id = r["file_id"]
        elif event == "create_intent":
            c.create_at = r["t"]
        elif event == "created":
            c.batch_id, c.adopted = r["batch_id"], r.get("adopted", False)
        elif event == "rejected":
            c.rejected.add(r["batch_id"])
            c.batch_id, c.adopted = None, False  # create_at stays: look again, without this one
        elif event == "cancel":
            c.cancel_reason = r["reason"]
        elif event == "status":
            c.status = r["status"]
        elif event == "settled":
            c.outcome = r["outcome"]
        elif event == "reopen":  # settled, but records of it are missing from the output: collect again
            c.outcome, c.status = None, None
        elif event == "dropped":
            c.dropped = True
