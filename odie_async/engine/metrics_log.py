"""A rolling metrics file: one JSON line a second with what a live view of the run needs.

``MetricsLog`` samples the engine's ``RunStats`` (and its concurrency gate) from
its own task and appends one line per interval: cumulative counts, the rates and
latency percentiles of the last interval, concurrency, 429s and errors by code,
per-stage counts, and whatever ``extra()`` adds (``odie generate``'s funnel).
The last line, written on exit, carries ``"final": true``. A reader never slows
the run: it only reads the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import orjson
import structlog

from .stats import scaled

log = structlog.get_logger(__name__)

SUFFIX = ".metrics.jsonl"


def metrics_path_for(output: str | Path) -> Path:
    """Where ``odie batch`` keeps the metrics of ``OUTPUT``: OUTPUT with ``.metrics.jsonl``."""
    return Path(output).with_suffix(SUFFIX)


def public_endpoint(base_url: str) -> str:
    """The endpoint as ``scheme://host:port/path``: no user, password or query can leak."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class MetricsLog:
    """Append a sample of ``engine``'s run to ``path`` every ``interval`` seconds while open."""

    def __init__(self, engine, path: str | Path, interval: float = 1.0, extra: Callable[[], dict] | None = None) -> None:
        self.engine = engine
        self.path = Path(path)
        self.interval = interval
        self.extra = extra
        self._task: asyncio.Task | None = None
        self._file = None
        self._seen = None  # the latency counts at the last line: each line gives the interval's percentiles
        self._last = (time.monotonic(), 0, 0)
        self._endpoint = public_endpoint(engine.settings.base_url)

    async def __aenter__(self) -> "MetricsLog":
        try:
            self._file = open(self.path, "ab", buffering=0)
        except OSError as exc:  # the run goes on without a live view
            log.warning("metrics file not writable; no live view", path=str(self.path), error=str(exc))
            return self
        self._task = asyncio.create_task(self._loop(), name="odie-metrics")
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._write(final=True)
        self._file.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._write()

    def _write(self, final: bool = False) -> None:
        try:
            self._file.write(orjson.dumps(self.sample(final)) + b"\n")
        except (OSError, ValueError) as exc:
            log.warning("metrics line not written", path=str(self.path), error=str(exc))

    def sample(self, final: bool = False) -> dict:
        """One line: cumulative counts, the last interval's rates and latencies, concurrency."""
        stats, pool = self.engine.stats, self.engine.pool
        now = time.monotonic()
        tokens = stats.prompt_tokens + stats.completion_tokens
        then, done_before, tokens_before = self._last
        span = max(now - then, 1e-9)
        latencies = stats.latencies
        since, self._seen = self._seen, latencies.snapshot()
        self._last = (now, stats.done, tokens)
        line = {
            "t": round(time.time(), 3), "elapsed": round(stats.elapsed, 3), "endpoint": self._endpoint,
            "total": stats.total, "done": stats.done, "succeeded": stats.succeeded, "failed": stats.failed,
            "cached": stats.resumed, "attempts": stats.attempts, "retries": stats.retries,
            "rate_limited": stats.rate_limited, "tokens": tokens,
            "rps": round((stats.done - done_before) / span, 2), "tps": round((tokens - tokens_before) / span, 1),
            "p50_ms": scaled(latencies.percentile(50, since), 1000),
            "p95_ms": scaled(latencies.percentile(95, since), 1000),
            "in_flight": pool.in_flight(), "concurrency_limit": pool.concurrency_limit(),
            "errors": dict(stats.error_codes), "stages": {k: dict(v) for k, v in stats.stages.items()},
        }
        spend = stats.spend_report()
        if spend is not None:
            line["spend"] = spend
        if self.extra is not None:
            line["funnel"] = self.extra()
        if final:
            line["final"] = True
        return line

