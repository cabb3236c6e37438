"""An ``odie bench`` result as the viewer reads it: ``results.json`` checked, and ``recommended.yaml`` beside it.

``odie bench`` rewrites ``results.json`` after every load level (``"running": true``
until the last), so the page shows levels as they are measured; a run given before
the first waits for the file, and a folder a new bench rewrites is read again:
``version`` changes whenever either file does.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from ..exceptions import ConfigError

RESULTS = "results.json"
RECOMMENDED = "recommended.yaml"
PLOT = "bench.png"
MAX_RECOMMENDED = 64 * 1024
REQUIRED = {"base_url": str, "workload": str, "points": list, "stop_reason": str}
POINT_REQUIRED = {"kind": str, "load": (int, float), "label": str, "requests_per_s": (int, float),
                  "output_tokens_per_s": (int, float)}
DISTRIBUTIONS = ("latency_ms", "ttft_ms", "itl_ms")


def is_bench_folder(path: Path) -> bool:
    """A folder ``odie bench`` wrote: ``results.json`` with its plot or settings beside it, or bench-shaped."""
    results = path / RESULTS
    if not results.is_file():
        return False
    if (path / RECOMMENDED).is_file() or (path / PLOT).is_file():
        return True
    try:
        data = orjson.loads(results.read_bytes())
    except (OSError, orjson.JSONDecodeError):
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


def read(results: Path, shown: str) -> dict:
    """The checked results; ``ConfigError`` naming ``shown`` (the file as the user named it) when damaged."""
    try:
        raw = results.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot be read: {exc.strerror or exc}") from None
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


def recommended_text(results: Path) -> str | None:
    """``recommended.yaml`` as written (not parsed: the page shows it as text), or None."""
    try:
        with open(results.with_name(RECOMMENDED), "rb") as handle:
            return handle.read(MAX_RECOMMENDED).decode("utf-8", "replace")
    except OSError:
        return None


def snapshot(results: Path, shown: str, since: str | None = None) -> dict:
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
        out["results"] = read(results, shown)
    except ConfigError as exc:
        out["error"] = str(exc)
        return out
    out["recommended"] = recommended_text(results)
    return out
