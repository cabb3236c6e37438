"""What the viewer may read: the folders and files named on its command line, and nothing else.

Every path is resolved (symlinks included) before it is opened and checked again
through ``/proc/self/fd`` once it is open, so a link planted in a run folder that
points out of it (``leak.jsonl -> ~/.ssh/id_rsa``), or swapped in between the
check and the open, is never read. The viewer's caches live in a per-user
folder nobody else can write to.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from ..exceptions import OdieError


class OutsideScope(OdieError):
    """A path that leaves the folders and files the viewer was given."""


class FileChanged(OdieError):
    """A file shrank or was replaced while a request read it."""


def real(path: str | Path) -> Path:
    """``path`` with every link resolved (the path itself when it does not exist yet)."""
    return Path(os.path.realpath(path))


class Scope:
    """The folders (everything below them) and single files the viewer may read."""

    def __init__(self) -> None:
        self.roots: set[Path] = set()
        self.files: set[Path] = set()

    def add_root(self, folder: Path) -> None:
        """Allow everything that resolves inside ``folder``."""
        self.roots.add(real(folder))

    def add_file(self, path: Path) -> None:
        """Allow one file: the name given, in its folder's real location (a link there is not followed)."""
        self.files.add(real(path.parent) / path.name)

    def allows(self, path: str | Path) -> bool:
        """Whether ``path``, resolved, is one of the files or inside one of the folders."""
        resolved = real(path)
        return resolved in self.files or any(resolved == r or resolved.is_relative_to(r) for r in self.roots)

    def check(self, path: str | Path) -> Path:
        """``path`` resolved; ``OutsideScope`` when it leaves the scope."""
        if not self.allows(path):
            raise OutsideScope(f"{path}: outside the runs being viewed")
        return real(path)

    def open(self, path: str | Path):
        """``path`` opened for binary reading, only when it (and what was really opened) is in scope."""
        resolved = self.check(path)
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd") else str(resolved)
            if not self.allows(opened) or not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OutsideScope(f"{path}: outside the runs being viewed")
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb")

    def read_bytes(self, path: str | Path, limit: int) -> bytes:
        """At most ``limit`` bytes of ``path`` (in scope only)."""
        with self.open(path) as handle:
            return handle.read(limit)


def everything() -> Scope:
    """A scope holding the whole file system (for tools that read their own files)."""
    scope = Scope()
    scope.add_root(Path("/"))
    return scope


def cache_folder() -> Path | None:
    """The per-user folder for the viewer's indexes, made private; None when it cannot be trusted."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base) / "odie_async" / "view"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        return None  # a link, someone else's folder, or one others can write to: keep indexes in memory
    return folder


def cache_path(path: Path, suffix: str) -> Path | None:
    """Where the cache ``suffix`` of data file ``path`` lives: named by a digest of its real path."""
    folder = cache_folder()
    if folder is None:
        return None
    digest = hashlib.sha256(os.fsencode(real(path))).hexdigest()[:32]
    return folder / f"{digest}{suffix}"
