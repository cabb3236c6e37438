"""Reading the files people write by hand (YAML settings, JSON lists and JSONL records), and
writing a result file whole.

Every syntax error becomes an ``odie_async.exceptions`` error naming the file and
the line here, once, so each command only checks what its records mean.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from .exceptions import ConfigError, InputError, OdieError


class _Loader(yaml.SafeLoader):
    """YAML 1.1's safe loader that also reads ``3e-4`` and ``5e-1`` as floats (YAML 1.2 does)."""


_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+0123456789.":
    _Loader.yaml_implicit_resolvers[_first] = [
        (tag, rx) for tag, rx in _Loader.yaml_implicit_resolvers.get(_first, []) if tag != "tag:yaml.org,2002:float"
    ]
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str, source: str) -> object:
    """Parsed YAML; a syntax error is a ``ConfigError`` naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


def load_yaml(path: str | Path, what: str = "config") -> object:
    """Read and parse a YAML file; unreadable or invalid files are a ``ConfigError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot read {what} {path}: {reason}") from None
    return parse_yaml(text, str(path))


@dataclass(frozen=True)
class Entry:
    """One record of a JSON list or JSONL file and where it stands."""

    value: object
    line: int = 0
    index: int | None = None

    def where(self, path: str | Path) -> str:
        """``FILE:LINE`` for a JSONL line, ``FILE: item N`` for a list item."""
        return f"{path}: item {self.index}" if self.index is not None else f"{path}:{self.line}"


def read_json_records(path: str | Path, what: str, *, error: type[OdieError] = ConfigError,
                      line_error: Callable[[str, int, str], Exception] = InputError) -> list[Entry]:
    """The records of a JSON list (a file starting with ``[``, not named ``.jsonl``) or a JSONL file.

    An unreadable file raises ``error``; bad JSON raises ``line_error(path, line, message)``.
    Blank lines of a JSONL file are skipped.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from None
    if path.suffix != ".jsonl" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise line_error(str(path), exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(data, list):
            raise error(f"{path}: expected a JSON list of {what}")
        return [Entry(value, index=i) for i, value in enumerate(data)]
    entries = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                entries.append(Entry(json.loads(line), line=line_no))
            except json.JSONDecodeError as exc:
                raise line_error(str(path), line_no, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    return entries


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # a folder that cannot be opened for reading still took the rename
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename stands
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes, mode: int | None = None, durable: bool = True) -> None:
    """Write ``data`` to ``path`` whole: a reader sees the old file or the new, never a mix.

    The temporary is created exclusively (``mkstemp``: ``O_CREAT|O_EXCL``, mode 0600) in
    the target's folder, so no link planted under a guessable name is ever written
    through; it is fsynced, given its final mode (``mode``, else the old file's, else
    0666 less the umask), renamed over ``path`` (a link there is replaced, not
    followed) and the folder fsynced. A failed write leaves no temporary behind.
    ``durable=False`` skips both fsyncs, for caches that are checked when read and rebuilt
    when lost.
    """
    with atomic_writer(path, mode, durable) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: int | None = None, durable: bool = True):
    """``write_atomic`` for a writer that streams: yields the temporary's binary file object; the
    file replaces ``path`` when the block ends, and nothing does when it raises."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), _final_mode(path, mode))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk leaves no half-written temporary behind
        raise
    if durable:
        _fsync_folder(path.parent)


def _final_mode(path: Path, mode: int | None) -> int:
    if mode is not None:
        return mode
    try:
        old = os.lstat(path)
    except OSError:
        return 0o666 & ~_umask()
    return stat.S_IMODE(old.st_mode) if stat.S_ISREG(old.st_mode) else 0o666 & ~_umask()
