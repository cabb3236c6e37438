"""An answer cache shared across runs and output files: SQLite in WAL mode, keyed by content.

A key is the request digest (the API path and the body as sent, model included) and a sample
index: the k-th identical request of a run gets the k-th cached answer, so asking the same thing
five times for five samples still gives five answers, and a seed or ``n`` sweep, whose bodies
differ, never shares one. Several processes may read and write one cache at once (WAL, a busy
timeout); a write is one transaction, so an interrupted one leaves no torn entry.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

from ..exceptions import ConfigError
from ..paths import cache_dir

FILE_NAME = "answers.sqlite"
_SCHEMA = "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, body BLOB NOT NULL, created REAL NOT NULL)"


def default_location() -> Path:
    """The per-user cache folder (``ODIE_CACHE_DIR`` overrides the user's cache folder)."""
    return cache_dir() / "answers"


class AnswerCache:
    """Answers by request digest and sample index, in ``folder/answers.sqlite``."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder else default_location()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.folder / FILE_NAME, timeout=30, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"answer cache {self.folder}: {exc}") from None
        self._seen: Counter = Counter()
        self.hits = self.stored = 0

    def key(self, digest: str) -> str:
        """The key of the next request with ``digest`` in this run (its sample index counts repeats)."""
        index = self._seen[digest]
        self._seen[digest] += 1
        return f"{digest}:{index}"

    def get(self, key: str) -> bytes | None:
        """The cached answer body for ``key``, or None."""
        row = self._db.execute("SELECT body FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        self.hits += 1
        return row[0]

    def put(self, key: str, body: bytes) -> None:
        """Store an answer body; a key already stored keeps its first answer."""
        self._db.execute("INSERT OR IGNORE INTO answers (key, body, created) VALUES (?, ?, ?)",
                         (key, body, time.time()))
        self.stored += 1

    def stats(self) -> dict:
        """Entries, bytes and the age of the oldest entry."""
        count, size, oldest = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(created) FROM answers").fetchone()
        return {"path": str(self.folder / FILE_NAME), "entries": count, "body_bytes": size,
                "oldest_age_days": None if oldest is None else round((time.time() - oldest) / 86400, 2)}

    def prune(self, older_than_s: float) -> int:
        """Delete entries older than ``older_than_s`` seconds; return how many went."""
        cursor = self._db.execute("DELETE FROM answers WHERE created < ?", (time.time() - older_than_s,))
        return cursor.rowcount

    def close(self) -> None:
        """Close the database (the WAL is checkpointed by SQLite)."""
        self._db.close()
