"""Keeping a run's output and errors files whole: torn tails, superseded lines, a sharded run's files.

A record answered again (``--resend-changed``, or a shard's line folded into the
output) has an old line that must go. Which lines win is written down first, in an
intent file beside the output (``OUT.jsonl.compacting``, the writing runs' tokens),
so that a run killed at any moment leaves its intent behind and the next run on
that output, of whatever kind, finishes the job before it reads anything:

    for every custom_id with a line from a winning run, every line from any other run goes.

Each line's ``id`` carries the token of the store that wrote it
(``batch_req_<token><counter>``), so the rule needs no byte offsets and is safe to
apply twice: a compaction cut short is simply done again.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
import structlog

from ..exceptions import ConfigError, InputError, OutputError
from ..files import atomic_writer, write_atomic
from .lockfile import LockBusy, take_lock

log = structlog.get_logger(__name__)

LINE_PREFIX = "batch_req_"
TOKEN_CHARS = 8


def line_id(token: str, counter: int) -> str:
    """The ``id`` of a line a store with ``token`` writes as its ``counter``-th."""
    return f"{LINE_PREFIX}{token}{counter:010x}"


def run_of(record: dict) -> str | None:
    """The token of the store that wrote ``record`` (None for a line written elsewhere)."""
    ident = record.get("id")
    if isinstance(ident, str) and ident.startswith(LINE_PREFIX):
        return ident[len(LINE_PREFIX):len(LINE_PREFIX) + TOKEN_CHARS]
    return None


def intent_path(output: Path) -> Path:
    """The intent file of the run writing ``output``."""
    return output.with_name(output.name + ".compacting")


def write_intent(output: Path, runs: Iterable[str]) -> None:
    """Record, before the lines are written, that lines of ``runs`` supersede older ones."""
    path = intent_path(output)
    try:
        write_atomic(path, orjson.dumps({"runs": sorted(set(runs))}) + b"\n")
    except OSError as exc:
        raise OutputError(path, exc) from exc


def read_intent(output: Path) -> set[str] | None:
    """The winning runs of a compaction left unfinished, or None."""
    path = intent_path(output)
    try:
        data = orjson.loads(path.read_bytes())
        return {str(run) for run in data["runs"]}
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable compaction intent ({exc}); it lists the runs whose lines "
                          "replace older ones of the same records") from None


def clear_intent(output: Path) -> None:
    """The compaction is done: forget its intent."""
    intent_path(output).unlink(missing_ok=True)


def repair_tail(path: Path) -> int:
    """Cut a torn last line (no trailing newline) off ``path``; return bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        keep = _last_newline_end(handle, size)
        handle.truncate(keep)
    log.warning("repaired torn last line", file=str(path), bytes_removed=size - keep)
    return size - keep


def _last_newline_end(handle, size: int) -> int:
    block = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - block)
        handle.seek(start)
        chunk = handle.read(end - start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            return start + index + 1
        end = start
    return 0


def iter_records(path: Path):
    """Yield ``(line_no, record)`` for each line of a results file; a bad line is an InputError."""
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            try:
                record = orjson.loads(raw)
                record["custom_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(path, line_no, f"unreadable result line ({exc}); fix or remove it") from exc
            yield line_no, record


def _records(path: Path) -> Iterator[tuple[bytes, dict]]:
    """``(raw line, record)`` for each line of a result file; a bad line is an InputError naming it."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            try:
                record = orjson.loads(raw)
                if not isinstance(record["custom_id"], str):
                    raise TypeError("custom_id is not a string")
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(path, line_no, f"unreadable result line ({exc}); fix or remove it") from exc
            yield raw, record


def compact(paths: Iterable[Path], runs: set[str]) -> int:
    """Drop from ``paths`` every line superseded by a line of ``runs``; return how many went."""
    paths = list(paths)
    winners = {hash(rec["custom_id"]) for path in paths for _raw, rec in _records(path) if run_of(rec) in runs}
    dropped = 0
    for path in paths:
        dropped += _rewrite(path, lambda rec: run_of(rec) not in runs and hash(rec["custom_id"]) in winners)
    if dropped:
        log.info("compacted superseded lines", files=[str(p) for p in paths], dropped=dropped)
    return dropped


def _rewrite(path: Path, drop) -> int:
    """Rewrite ``path`` without the lines ``drop`` selects (untouched when none)."""
    if not any(drop(rec) for _raw, rec in _records(path)):
        return 0
    dropped = 0
    try:
        with atomic_writer(path) as target:
            for raw, rec in _records(path):
                if drop(rec):
                    dropped += 1
                else:
                    target.write(raw)
    except OSError as exc:
        raise OutputError(path, exc) from exc
    return dropped


# -- a sharded run's files -------------------------------------------------------------------------

def shard_folder(output: Path) -> Path:
    """Where a sharded run writing ``output`` keeps its shards (``OUT.shards/``)."""
    return output.with_name(output.stem + ".shards")


SHARD_FILE = re.compile(r"shard-\d+(\.errors)?\.jsonl")


def shard_parts(folder: Path) -> list[Path]:
    """The shard files in ``folder``: ``shard-NNN.jsonl`` and ``shard-NNN.errors.jsonl``."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if SHARD_FILE.fullmatch(path.name))


def fold_shards(output: Path, errors: Path, repair) -> dict:
    """Move the lines of ``OUT.shards/`` into ``output`` and ``errors``; return the counts.

    The caller holds the output's lock. A shard's lines are newer than the
    output's (every run on the output folds first), so they supersede them.
    Lines already folded by a fold cut short are not written twice.
    """
    folder = shard_folder(output)
    parts = shard_parts(folder)
    if not parts:
        return {"output_records": 0, "error_records": 0}
    locks = _lock_shards(parts)
    try:
        for part in parts:
            repair(part)
        runs = {run for part in parts for _raw, rec in _records(part) if (run := run_of(rec))}
        write_intent(output, runs)
        there = {rec.get("id") for path in (output, errors) for _raw, rec in _records(path) if run_of(rec) in runs}
        counts = {"output_records": 0, "error_records": 0}
        for part in parts:
            failed = part.name.endswith(".errors.jsonl")
            counts["error_records" if failed else "output_records"] += _append_new(part, errors if failed else output, there)
        compact((output, errors), runs)
        _remove_shards(folder, parts)
        clear_intent(output)
    finally:
        for fd in locks:
            os.close(fd)
    log.info("folded the shards of a sharded run into the output", folder=str(folder), **counts)
    return counts


def _lock_shards(parts: list[Path]) -> list[int]:
    fds = []
    try:
        for part in parts:
            if not part.name.endswith(".errors.jsonl"):
                fds.append(take_lock(part.with_name(part.name + ".lock"), f"{os.getpid()} folding"))
    except LockBusy as busy:
        for fd in fds:
            os.close(fd)
        raise ConfigError(f"a shard in {parts[0].parent} is being written (PID {busy.holder or 'unknown'}); "
                          "wait for that run to stop (or stop it) and run again") from None
    return fds


def _append_new(part: Path, target: Path, there: set) -> int:
    """Append the lines of ``part`` not yet in ``target``; return how many were in ``part``."""
    count = 0
    try:
        with open(target, "ab") as out:
            for raw, rec in _records(part):
                count += 1
                if rec.get("id") not in there:
                    out.write(raw)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise OutputError(target, exc) from exc
    return count


def _remove_shards(folder: Path, parts: list[Path]) -> None:
    for part in parts:
        part.unlink(missing_ok=True)
        part.with_name(part.name + ".lock").unlink(missing_ok=True)
    (folder / "run.json").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()  # other files (a shard's summary, metrics) stay, and so does the folder
