"""An ``odie bench`` result as the viewer reads it: ``results.json`` checked, and ``recommended.yaml`` beside it.

``odie bench`` rewrites ``results.json`` after every load level (``"running": true``
until the last), so the page shows levels as they are measured; a run given before
the first waits for the file, and a folder a new bench rewrites is read again:
``version`` changes whenever either file does.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import orjson

from ..exceptions import ConfigError, OdieError
from .access import Scope, everything

RESULTS = "results.json"
RECOMMENDED = "recommended.yaml"
PLOT = "bench.png"
MAX_RECOMMENDED = 64 * 1024
MAX_RESULTS = 1 << 22
MAX_CONCURRENCY = 100_000
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]+")
_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f]+")
REQUIRED = {"base_url": str, "workload": str, "points": list, "stop_reason": str}
POINT_REQUIRED = {"kind": str, "load": (int, float), "label": str, "requests_per_s": (int, float),
                  "output_tokens_per_s": (int, float)}
DISTRIBUTIONS = ("latency_ms", "ttft_ms", "itl_ms")


def is_bench_folder(path: Path, scope: Scope | None = None) -> bool:
    """A folder ``odie bench`` wrote: ``results.json`` with its plot or settings beside it, or bench-shaped."""
    results = path / RESULTS
    if not results.is_file():
        return False
    if (path / RECOMMENDED).is_file() or (path / PLOT).is_file():
        return True
    try:
        data = orjson.loads((scope or everything()).read_bytes(results, MAX_RESULTS))
    except (OSError, OdieError, orjson.JSONDecodeError):
        return False
    return isinstance(data, dict) and "points" in data and "stop_reason" in data


def version(results: Path) -> str:
    """Changes whenever ``results.json`` or ``recommended.yaml`` beside it is written; empty while neither exists."""
    parts = []
    for path in (results, results.with_name(RECOMMENDED)):
        try:
            stat = path.stat()
        except OSError:
            parts.append("-")
            continue
        parts.append(f"{stat.st_mtime_ns}:{stat.st_size}")
    return "" if parts == ["-", "-"] else "/".join(parts)


def read(results: Path, shown: str, scope: Scope | None = None) -> dict:
    """The checked results; ``ConfigError`` naming ``shown`` (the file as the user named it) when damaged."""
    try:
        raw = (scope or everything()).read_bytes(results, MAX_RESULTS)
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot be read: {exc.strerror or exc}") from None
    except OdieError as exc:
        raise ConfigError(str(exc)) from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{shown}: not JSON ({exc}); an odie bench results.json was expected") from None
    check(data, shown)
    return data


def check(data, shown: str) -> None:
    """``ConfigError`` naming what an ``odie bench`` result lacks."""
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: not an odie bench result (expected a JSON object, found {type(data).__name__})")
    problems = [_wrong(key, data, types) for key, types in REQUIRED.items()]
    if "recommended" not in data:
        problems.append("missing key 'recommended'")
    elif data["recommended"] is not None and not isinstance(data["recommended"], dict):
        problems.append("'recommended' is neither an object nor null")
    for number, point in enumerate(data.get("points") if isinstance(data.get("points"), list) else ()):
        if not isinstance(point, dict):
            problems.append(f"points[{number}] is not an object")
            continue
        problems.extend(f"points[{number}]: {p}" for p in (_wrong(k, point, t) for k, t in POINT_REQUIRED.items()) if p)
        problems.extend(f"points[{number}]: '{k}' is neither an object nor null" for k in DISTRIBUTIONS
                        if not isinstance(point.get(k), (dict, type(None))))
    problems = [p for p in problems if p]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(f"{shown}: not an odie bench result: {'; '.join(problems[:3])}{more}")


def _wrong(key: str, data: dict, types) -> str | None:
    if key not in data:
        return f"missing key {key!r}"
    value = data[key]
    if not isinstance(value, types) or isinstance(value, bool):
        return f"{key!r} has the wrong type ({type(value).__name__})"
    return None


def recommended_text(results: Path, scope: Scope | None = None) -> str | None:
    """``recommended.yaml`` as written (not parsed: the page shows it as text), or None (also for a link out)."""
    try:
        return (scope or everything()).read_bytes(results.with_name(RECOMMENDED), MAX_RECOMMENDED).decode("utf-8", "replace")
    except (OSError, OdieError):
        return None


def _text(value, fallback: str) -> str:
    """``value`` shell-quoted when it is a string of printable characters, else the placeholder ``fallback``."""
    return shlex.quote(value) if isinstance(value, str) and _PRINTABLE.fullmatch(value) else fallback


def command(results: dict, folder: str, has_recommended: bool) -> str:
    """The command lines the page suggests: every value checked against its type and shell-quoted."""
    source = results.get("source") if isinstance(results.get("source"), dict) else {}
    given = source.get("input")
    given = given if isinstance(given, str) and _PRINTABLE.fullmatch(given) else None
    input_ = shlex.quote(given) if given else "REQUESTS.jsonl"
    if has_recommended:
        config = _text(f"{folder.rstrip('/') or '.'}/{RECOMMENDED}", "DIR/recommended.yaml")
        lines = [f"odie batch {input_} -o OUT.jsonl --config {config}",
                 f"odie generate --config {config}   # or in a generate config: its endpoint and engine sections"]
        if results.get("embedded") is True:
            lines.append("# base_url null: the command serves the embedded model again for the run")
        return "\n".join(lines)
    knee = results.get("recommended") if isinstance(results.get("recommended"), dict) else {}
    concurrency = knee.get("concurrency", 1) if knee else 1
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 0 < concurrency <= MAX_CONCURRENCY:
        concurrency = "N"  # not an integer: nothing of it reaches the line
    url = results.get("base_url")
    url = shlex.quote(url) if isinstance(url, str) and _URL.fullmatch(url) else "URL"
    flag = "" if results.get("embedded") is True else f" --base-url {url}"
    return f"odie batch {input_} -o OUT.jsonl{flag} --concurrency {concurrency}"


def snapshot(results: Path, shown: str, since: str | None = None, scope: Scope | None = None) -> dict:
    """What the page draws: ``{"version", "results", "recommended", "error", "waiting"}``.

    With ``since`` equal to the current version only ``{"version", "unchanged": True}``:
    the page polls every second and a finished bench costs two ``stat`` calls.
    """
    current = version(results)
    if since is not None and since == current:
        return {"version": current, "unchanged": True}
    out = {"version": current, "results": None, "recommended": None, "error": None, "waiting": False}
    if not results.exists():
        out["waiting"] = True
        return out
    try:
        out["results"] = read(results, shown, scope)
    except ConfigError as exc:
        out["error"] = str(exc)
        return out
    out["recommended"] = recommended_text(results, scope)
    return out
