"""A sharded run on disk: which shard a record belongs to, and each shard's files.

A run writing ``OUT.jsonl`` keeps its shards in ``OUT.shards/`` beside it (put
``OUT`` on a path every node reaches): ``run.json`` (the shard count), and per
shard ``shard-NNN.jsonl`` and ``shard-NNN.errors.jsonl``, each written by one
worker's ``ResultStore`` (with its lock, ``shard-NNN.jsonl.lock``), which reads
the output itself as done. The shards are staging: the output's own store folds
them into ``OUT.jsonl`` and ``OUT.errors.jsonl`` when the run ends, and any run
that opens the output later (plain or sharded, or ``--merge-only``) folds what a
killed run left (see ``engine/compaction.py``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson

from ..engine.compaction import shard_folder
from ..files import write_atomic


def shard_of(custom_id: str, shards: int) -> int:
    """The shard of ``custom_id``: a hash that is the same in every process and on every node."""
    digest = hashlib.blake2b(custom_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


class InShard:
    """``select`` for one shard's records (plain data, so it travels to a worker)."""

    def __init__(self, index: int, shards: int) -> None:
        self.index, self.shards = index, shards

    def __call__(self, custom_id: str) -> bool:
        return shard_of(custom_id, self.shards) == self.index


class RunLayout:
    """Where a sharded run that writes ``output`` keeps its files."""

    def __init__(self, output: str | Path, errors: str | Path | None = None) -> None:
        self.output = Path(output).resolve()
        self.errors = Path(errors).resolve() if errors else self.output.with_name(self.output.stem + ".errors.jsonl")
        self.summary = self.output.with_suffix(".summary.json")
        self.folder = shard_folder(self.output)
        self.manifest = self.folder / "run.json"

    def shard_output(self, index: int) -> Path:
        """The output (checkpoint) file of shard ``index``."""
        return self.folder / f"shard-{index:03d}.jsonl"

    def shard_errors(self, index: int) -> Path:
        """The errors file of shard ``index``."""
        return self.folder / f"shard-{index:03d}.errors.jsonl"

    def shard_lock(self, index: int) -> Path:
        """The lock file of shard ``index`` (its store's)."""
        return self.folder / f"shard-{index:03d}.jsonl.lock"

    def prepare(self, shards: int | None, input_path: str | Path) -> int:
        """Create the run folder and record the shard count; return it.

        Called with the output's lock held, after its store folded in any
        shards a killed run left, so the count is free to change between runs.
        """
        shards = shards or 2
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = {"shards": shards, "input": str(Path(input_path).resolve())}
        write_atomic(self.manifest, orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
        return shards
