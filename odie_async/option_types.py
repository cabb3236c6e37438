"""Strict option values shared by the command line, the config files and the API.

Each parser takes the text (or value) a user wrote and returns it parsed whole, or
raises ``ConfigError`` with a one-line reason: ``1m30`` is not 90 s, ``1e3s`` is not
3 s, ``-1s`` is not 1 s, and NaN, infinities and absurd magnitudes are refused. The
command line turns that error into a usage error naming the option (exit 2) while it
parses, so nothing runs first; the API and the settings call the same functions.

Paths: ``output_file`` and ``output_folder`` refuse an output that cannot be created
(a folder where a file is wanted, a path under a file, a parent that cannot be
written) before anything runs; ``input_file`` names a missing file, a folder and an
unreadable file apart.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .exceptions import ConfigError

PathT = TypeVar("PathT", str, Path)

# Upper bounds no real run reaches: a value above one is a typo, not a setting.
MAX_DURATION_S = 30 * 86_400.0
MAX_COUNT = 100_000
MAX_RATE = 1_000_000.0

_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"({_DECIMAL})(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_ORDER = ("h", "m", "s", "ms")
SLO_METRICS = ("latency", "ttft", "itl")
SLO_QUANTILES = ("50", "90", "95", "99")


def check_number(value, minimum: float, inclusive: bool, option: str, maximum: float | None = None) -> None:
    """Raise ``ConfigError`` unless ``value`` is a finite number above (or at) ``minimum``, at most ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{option} must be a number, not {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{option} must be a finite number, not {value}")
    if value < minimum or (value == minimum and not inclusive):
        relation = "at least" if inclusive else "more than"
        raise ConfigError(f"{option} must be {relation} {_shown(minimum)}, not {_shown(value)}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{option} must be at most {_shown(maximum)}, not {_shown(value)}")


def _shown(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _check(value, minimum, inclusive, maximum, text) -> None:
    try:
        check_number(value, minimum, inclusive, "the value", maximum)
    except ConfigError as exc:
        raise ConfigError(f"{text!r}: {str(exc).removeprefix('the value ')}") from None


def number(kind: type, minimum: float, inclusive: bool = True, maximum: float | None = None) -> Callable:
    """A parser of a whole ``kind`` (int: digits only; float: a finite decimal) within the bounds."""
    def parse(text):
        value = _to_number(kind, text)
        _check(value, minimum, inclusive, maximum, text)
        return value
    parse.__name__ = kind.__name__
    return parse


def _to_number(kind: type, text):
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if kind is int and text != int(text):
            raise ConfigError(f"{text!r} is not a whole number")
        return kind(text)
    raw = str(text).strip()
    pattern = r"[-+]?\d+" if kind is int else rf"[-+]?{_DECIMAL}(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity)"
    if not re.fullmatch(pattern, raw, re.IGNORECASE):
        raise ConfigError(f"{text!r} is not a {'whole number' if kind is int else 'number'}")
    return kind(raw)


def count(text, minimum: int = 1, maximum: int = MAX_COUNT) -> int:
    """A whole number within ``[minimum, maximum]`` (concurrencies, attempts, sizes)."""
    return number(int, minimum, True, maximum)(text)


def rate(text, maximum: float = MAX_RATE) -> float:
    """A finite rate above 0 and at most ``maximum`` (requests per second or minute)."""
    return number(float, 0, False, maximum)(text)


def duration(text, minimum: float = 0, inclusive: bool = False, maximum: float = MAX_DURATION_S) -> float:
    """Seconds from ``30``, ``30s``, ``500ms``, ``2m``, ``1h``, ``1m30s``; above 0 unless told otherwise.

    Each unit at most once, largest first; a bare number is seconds. Anything else
    (``1m30``, ``1e3s``, ``2x3s``, ``-1s``) is refused whole.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        value = _duration_text(str(text).strip(), text)
    _check(value, minimum, inclusive, maximum, text)
    return value


def _duration_text(raw: str, text) -> float:
    if re.fullmatch(_DECIMAL, raw):
        return float(raw)
    total, position, last = 0.0, 0, -1
    for match in _PART.finditer(raw):
        unit_rank = _ORDER.index(match.group(2))
        if match.start() != position or unit_rank <= last:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position, last = match.end(), unit_rank
    if position == 0 or position != len(raw):
        raise ConfigError(f"{text!r} is not a duration (e.g. 30s, 500ms, 2m, 1m30s)")
    return total


def number_list(text: str, parse: Callable) -> list:
    """Comma-separated values, each parsed by ``parse``: ``1,8,32``."""
    parts = [part.strip() for part in str(text).split(",")]
    if not any(parts) or not all(parts):
        raise ConfigError(f"{text!r}: expected comma-separated values, e.g. 1,8,32")
    return [parse(part) for part in parts]


def slo(text: str | None) -> dict[str, float]:
    """``ttft_p95=2s,latency_p95=20s`` -> ``{"ttft_p95": 2000.0, ...}`` in milliseconds, each above 0."""
    limits = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        metric, _, quantile = key.strip().partition("_p")
        if metric not in SLO_METRICS or quantile not in SLO_QUANTILES or not sep:
            raise ConfigError(f"expected METRIC_pQ=DURATION with METRIC one of {', '.join(SLO_METRICS)} "
                              f"and Q one of {', '.join(SLO_QUANTILES)} (e.g. ttft_p95=2s), got {part!r}")
        limits[key.strip()] = duration(value.strip()) * 1000.0
    return limits


def output_file(path: PathT, what: str = "output") -> PathT:
    """``path`` (returned as given) if it is a file that can be written: not a folder, its folder creatable."""
    target = Path(os.path.expanduser(str(path)))
    if not str(path).strip():
        raise ConfigError(f"{what}: an empty path")
    if target.is_dir():
        raise ConfigError(f"{what} {target} is a folder, not a file")
    _creatable(target.parent, what, target)
    if target.exists() and not os.access(target, os.W_OK):
        raise ConfigError(f"cannot write {what} {target}: permission denied")
    return path


def output_folder(path: PathT, what: str = "output folder") -> PathT:
    """``path`` (returned as given) if it is a folder that exists or can be created: not a file, nor under one."""
    target = Path(os.path.expanduser(str(path)))
    if not str(path).strip():
        raise ConfigError(f"{what}: an empty path")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{what} {target} is a file, not a folder")
    _creatable(target, what, target)
    return path


def _creatable(folder: Path, what: str, target: Path) -> None:
    """Raise unless ``folder`` exists as a writable folder or can be made under its nearest existing parent."""
    current = folder if str(folder) else Path(".")
    while not os.path.lexists(current) and current.parent != current:
        current = current.parent
    if not current.is_dir():
        raise ConfigError(f"cannot create {what} {target}: {current} is not a folder")
    if not os.access(current, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create {what} {target}: {current} is not writable")


def input_file(path: PathT, what: str = "input file") -> PathT:
    """``path`` (returned as given) if it is a readable file; a missing path, a folder and an unreadable
    file are each said apart."""
    target = Path(os.path.expanduser(str(path)))
    if target.is_dir():
        raise ConfigError(f"{what} {target} is a folder, not a file")
    if not target.exists():
        raise ConfigError(f"{what} {target} does not exist")
    if not os.access(target, os.R_OK):
        raise ConfigError(f"cannot read {what} {target}: permission denied")
    return path
