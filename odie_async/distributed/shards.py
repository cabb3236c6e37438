"""A sharded run on disk: which shard a record belongs to, each shard's files, its lock, the merge.

A run writing ``OUT.jsonl`` keeps its shards in ``OUT.shards/`` beside it (put
``OUT`` on a path every node reaches): ``run.json`` (the shard count), and per
shard ``shard-NNN.jsonl``, ``shard-NNN.errors.jsonl`` (the same checkpoint
files as a one-machine run) and ``shard-NNN.lock``. A writer holds the lock
(``fcntl.flock``) for as long as it writes, so a second writer for the same
shard is refused; the kernel drops the lock when the writer's process dies.
The merge concatenates the shards into ``OUT.jsonl`` and ``OUT.errors.jsonl``.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import orjson

from ..engine.batchfile import count_lines
from ..engine.checkpoint import iter_records, repair_tail
from ..engine.lockfile import LockBusy, take_lock
from ..exceptions import ConfigError, RunAborted


def shard_of(custom_id: str, shards: int) -> int:
    """The shard of ``custom_id``: a hash that is the same in every process and on every node."""
    digest = hashlib.blake2b(custom_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


class ShardBusy(RunAborted):
    """Another process holds a shard's lock."""


class ShardLock:
    """An exclusive ``flock`` on ``path``, taken without waiting; names its holder when refused."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> "ShardLock":
        """Take the lock or raise ``ShardBusy``."""
        try:
            self._fd = take_lock(self.path, f"pid {os.getpid()} on {socket.gethostname()}")
        except LockBusy as busy:
            raise ShardBusy(f"{self.path.with_suffix('.jsonl')} is being written by {busy.holder or 'another process'}; "
                            "wait for that run to stop (or stop it) and run again") from None
        return self

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ShardLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


class RunLayout:
    """Where a sharded run that writes ``output`` keeps its files."""

    def __init__(self, output: str | Path, errors: str | Path | None = None) -> None:
        self.output = Path(output).resolve()
        self.errors = Path(errors).resolve() if errors else self.output.with_name(self.output.stem + ".errors.jsonl")
        self.summary = self.output.with_suffix(".summary.json")
        self.folder = self.output.with_name(self.output.stem + ".shards")
        self.manifest = self.folder / "run.json"

    def shard_output(self, index: int) -> Path:
        """The output (checkpoint) file of shard ``index``."""
        return self.folder / f"shard-{index:03d}.jsonl"

    def shard_errors(self, index: int) -> Path:
        """The errors file of shard ``index``."""
        return self.folder / f"shard-{index:03d}.errors.jsonl"

    def shard_lock(self, index: int) -> Path:
        """The lock file of shard ``index``."""
        return self.folder / f"shard-{index:03d}.lock"

    def done_lines(self, index: int) -> int:
        """Lines in shard ``index``'s output and errors files: its records done so far."""
        paths = (self.shard_output(index), self.shard_errors(index))
        return sum(count_lines(path) for path in paths if path.exists())

    def recorded_shards(self) -> int | None:
        """The shard count of an earlier run into this output, if any."""
        if not self.manifest.exists():
            return None
        return int(orjson.loads(self.manifest.read_bytes())["shards"])

    def prepare(self, shards: int | None, input_path: str | Path) -> int:
        """Create the run folder (or check it against an earlier run); return the shard count.

        The shard count cannot change between runs: it decides which shard's
        checkpoint holds each record.
        """
        recorded = self.recorded_shards()
        if recorded is None and self.output.exists():
            raise ConfigError(f"{self.output} exists but was not written by a Ray run "
                              f"(no {self.manifest}); choose another output or remove it")
        if recorded is not None and shards is not None and shards != recorded:
            raise ConfigError(f"{self.folder} holds a run of {recorded} shards; rerun with --workers {recorded} "
                              "(the shard count decides where each record's checkpoint is)")
        shards = recorded or shards or 2
        if recorded is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            manifest = {"shards": shards, "input": str(Path(input_path).resolve())}
            self.manifest.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
        return shards

    def merge(self, shards: int) -> dict:
        """Merge the shards into the output and errors files; return the record counts.

        Holds every shard's lock meanwhile, so it never reads a shard being
        written. A ``custom_id`` in two lines anywhere is an error: it would
        mean a record was done twice.
        """
        locks = [ShardLock(self.shard_lock(i)) for i in range(shards)]
        try:
            for lock in locks:
                lock.acquire()
            seen: set[int] = set()
            counts = {"output_records": self._concat([self.shard_output(i) for i in range(shards)], self.output, seen),
                      "error_records": self._concat([self.shard_errors(i) for i in range(shards)], self.errors, seen)}
        finally:
            for lock in locks:
                lock.release()
        return counts

    @staticmethod
    def _concat(parts: list[Path], target: Path, seen: set[int]) -> int:
        """Write ``parts`` one after another into ``target`` (replaced at the end, atomically)."""
        partial = target.with_name(target.name + ".merging")
        count = 0
        with open(partial, "wb") as out:
            for part in parts:
                if not part.exists():
                    continue
                repair_tail(part)
                for line_no, record in iter_records(part):
                    key = hash(record["custom_id"])
                    if key in seen:
                        raise RunAborted(f"{part}:{line_no}: custom_id {record['custom_id']!r} already merged "
                                         "from another line; the shard files were changed by hand")
                    seen.add(key)
                    count += 1
                with open(part, "rb") as handle:
                    while block := handle.read(1 << 20):
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
        return count
