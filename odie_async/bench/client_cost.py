"""The client's own cost: CPU per request and event-loop lag, and when they, not the endpoint, set the pace.

CPU is the event-loop thread's (``time.thread_time``), so an endpoint served
from the same process is not counted; the process total is reported beside it.
Lag is how late a 50 ms timer fires: a starved or saturated client fires late.
"""

from __future__ import annotations

import asyncio
import time
from array import array

from ..engine.stats import percentile, scaled

TICK_S = 0.05  # cheap enough not to weigh on the CPU per request at low rates
MAX_CPU_SHARE = 0.85  # of one core, by the event-loop thread
MAX_LAG_MS = 20.0  # p95 of how late a timer fires


class ClientMeter:
    """Measures the client while one load level runs (``async with``)."""

    def __init__(self) -> None:
        self.lags = array("d")
        self._task: asyncio.Task | None = None
        self._start: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._end: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @staticmethod
    def _now() -> tuple[float, float, float]:
        return time.perf_counter(), time.thread_time(), time.process_time()

    async def __aenter__(self) -> "ClientMeter":
        self._start = self._now()
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._end = self._now()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK_S)
            self.lags.append(max(0.0, time.perf_counter() - before - TICK_S))

    def figures(self, requests: int) -> dict:
        """CPU per request (µs), CPU share of one core, and loop lag (ms)."""
        wall = max(self._end[0] - self._start[0], 1e-9)
        thread_cpu = self._end[1] - self._start[1]
        process_cpu = self._end[2] - self._start[2]
        lags = sorted(self.lags)
        per = max(requests, 1)
        return {
            "cpu_us_per_request": round(thread_cpu / per * 1e6, 1),
            "process_cpu_us_per_request": round(process_cpu / per * 1e6, 1),
            "cpu_share": round(thread_cpu / wall, 3),
            "loop_lag_p95_ms": scaled(percentile(lags, 95) or 0.0, 1000),
            "loop_lag_max_ms": scaled(lags[-1] if lags else 0.0, 1000),
        }


def bottleneck(client: dict) -> str | None:
    """Why the client, not the endpoint, limited a load level; None when it did not."""
    reasons = []
    if client["cpu_share"] >= MAX_CPU_SHARE:
        reasons.append(f"its event loop used {client['cpu_share']:.0%} of a core")
    if client["loop_lag_p95_ms"] >= MAX_LAG_MS:
        reasons.append(f"its timers fired {client['loop_lag_p95_ms']:.0f} ms late (p95)")
    return " and ".join(reasons) or None
