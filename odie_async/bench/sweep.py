"""Which load levels to measure, where the knee is, and what to recommend.

``--sweep`` doubles the concurrency from 1 until throughput stops rising (less
than ``GAIN`` over the best so far), a point misses the SLO, or errors pass
``MAX_ERROR_SHARE``; it then measures between the best point and the stop
(0.75×, 1.25× and the midpoint). The recommended concurrency is the smallest
measured one that met the SLO and reached ``NEAR_MAX`` of the best throughput.
"""

from __future__ import annotations

import math
from typing import Awaitable, Callable

from ..option_types import slo as parse_slo  # noqa: F401  (re-exported: the bench's name for it)
from .load import Load

GAIN = 1.10
NEAR_MAX = 0.95
MAX_ERROR_SHARE = 0.05
MAX_SWEEP_CONCURRENCY = 4096

Measure = Callable[[Load], Awaitable[dict]]


def slo_miss(point: dict, slo: dict[str, float]) -> str | None:
    """Which SLO the point missed (``latency_p95 312 ms > 300 ms``), or None."""
    for key, limit in slo.items():
        metric, _, quantile = key.partition("_p")
        value = (point.get(f"{metric}_ms") or {}).get(f"p{quantile}")
        if value is not None and value > limit:
            return f"{key} {value:,.0f} ms > {limit:,.0f} ms"
    return None


def _error_share(point: dict) -> float:
    return point["failed"] / point["requests"] if point["requests"] else 1.0


def usable(point: dict, slo: dict[str, float]) -> bool:
    """A point that met the SLO with few enough errors."""
    return slo_miss(point, slo) is None and _error_share(point) <= MAX_ERROR_SHARE and point["requests_per_s"] > 0


async def knee_sweep(measure: Measure, slo: dict[str, float], limit: int = MAX_SWEEP_CONCURRENCY) -> tuple[list[dict], str]:
    """Grow the concurrency until the knee, then measure around it; return the points and why it stopped."""
    points: list[dict] = []
    best: dict | None = None
    concurrency, reason = 1, f"reached concurrency {limit}"
    while concurrency <= limit:
        point = await measure(Load("concurrency", concurrency))
        points.append(point)
        if miss := slo_miss(point, slo):
            reason = f"slo: {miss} at concurrency {concurrency}"
            break
        if _error_share(point) > MAX_ERROR_SHARE:
            reason = f"errors: {point['failed']:,} of {point['requests']:,} requests failed at concurrency {concurrency}"
            break
        if best is not None and point["requests_per_s"] < best["requests_per_s"] * GAIN:
            reason = f"plateau: throughput rose less than {GAIN - 1:.0%} from concurrency {best['load']:g} to {concurrency}"
            break
        if best is None or point["requests_per_s"] > best["requests_per_s"]:
            best = point
        concurrency *= 2
    if best is not None:
        measured = {p["load"] for p in points}
        for extra in refinements(int(best["load"]), concurrency):
            if extra not in measured:
                points.append(await measure(Load("concurrency", extra)))
    return sorted(points, key=lambda p: p["load"]), reason


def refinements(best: int, stop: int) -> list[int]:
    """Concurrencies between the best point and the stop worth measuring (0.75×, 1.25×, midpoint)."""
    candidates = {round(best * 0.75), round(best * 1.25), (best + stop) // 2}
    return sorted(c for c in candidates if best / 2 < c < stop and c != best and c >= 1)


def recommend(points: list[dict], slo: dict[str, float]) -> dict | None:
    """The knee: the least load that met the SLO and reached ``NEAR_MAX`` of the best usable throughput."""
    good = [p for p in points if usable(p, slo)]
    if not good:
        return None
    top = max(p["requests_per_s"] for p in good)
    knee = min((p for p in good if p["requests_per_s"] >= NEAR_MAX * top), key=lambda p: p["load"])
    if knee["kind"] == "concurrency":
        concurrency = int(knee["load"])
    else:  # Little's law: requests in flight = rate × mean latency, with a fifth spare
        concurrency = max(1, math.ceil(knee["requests_per_s"] * knee["latency_ms"]["mean"] / 1000 * 1.2))
    return {"point": knee, "concurrency": concurrency, "max_requests_per_s": top}


def plan(concurrency: list[int] | None, rates: list[float] | None, rate_type: str) -> list[Load]:
    """The fixed load levels of a list mode."""
    if concurrency:
        return [Load("concurrency", c) for c in concurrency]
    return [Load(rate_type, r) for r in rates or ()]
