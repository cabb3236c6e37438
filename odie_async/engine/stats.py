"""Run counters, latency percentiles and the per-stage breakdown of a run."""

from __future__ import annotations

import time
from array import array
from datetime import datetime, timezone
from collections import Counter, defaultdict
from typing import Callable

from .routes import usage_tokens


def stage_of(custom_id: str) -> str:
    """The stage a record belongs to: its custom_id up to the first ``:`` (or ``batch``)."""
    head, sep, _rest = custom_id.partition(":")
    return head if sep else "batch"


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def percentile(sorted_values, q: float) -> float | None:
    """The ``q``-th percentile (0–100) of already sorted values, nearest-rank."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[index]


class RunStats:
    """Everything the progress line and the final summary report."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.started_at = utc_now()
        self.prepare_s = 0.0
        self.total: int | None = None
        self.succeeded = 0
        self.failed = 0
        self.resumed = 0
        self.invalid = 0
        self.attempts = 0
        self.retries = 0
        self.rate_limited = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.error_codes: Counter[str] = Counter()  # final failures
        self.retries_by_reason: Counter[str] = Counter()
        self.models: set[str] = set()  # the model names the run's requests asked for
        # (requests in flight, current concurrency limit), set by the engine that runs
        self.gauges: Callable[[], tuple[int, int]] | None = None
        self.stages: dict[str, Counter[str]] = defaultdict(Counter)
        self.latencies = array("d")
        self.ttfts = array("d")  # streamed requests only (milliseconds), as are the inter-token latencies
        self.itls = array("d")

    def restart_clock(self) -> None:
        """Count rates from now; the time before (checking the input) is kept as ``prepare_s``."""
        now = time.monotonic()
        self.prepare_s = now - self.started
        self.started = now

    @property
    def done(self) -> int:
        """Records finished in this run, either way."""
        return self.succeeded + self.failed

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def record_success(self, custom_id: str, body: dict, latency: float, timing: dict | None = None) -> None:
        """Count one record answered successfully (``timing``: a streamed request's, in ms)."""
        self.succeeded += 1
        self.latencies.append(latency)
        if timing is not None:
            if timing["ttft_ms"] is not None:
                self.ttfts.append(timing["ttft_ms"])
            if timing["itl_ms"] is not None:
                self.itls.append(timing["itl_ms"])
        prompt, completion = usage_tokens(body.get("usage"))
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        if ":" in custom_id:
            self.stages[stage_of(custom_id)]["succeeded"] += 1

    def record_failure(self, custom_id: str, code: str) -> None:
        """Count one record that ended in the errors file."""
        self.failed += 1
        self.error_codes[code] += 1
        if ":" in custom_id:
            self.stages[stage_of(custom_id)]["failed"] += 1

    def record_retry(self, reason: str) -> None:
        """Count one attempt that failed and will be tried again, by its error code."""
        self.retries += 1
        self.retries_by_reason[reason] += 1

    def record_cached(self, custom_id: str) -> None:
        """Count one record answered from the checkpoint without a request."""
        self.resumed += 1
        if ":" in custom_id:
            self.stages[stage_of(custom_id)]["cached"] += 1

    def latency_summary(self) -> dict:
        """p50/p95/p99/max of successful request latencies, in milliseconds."""
        return _summary(self.latencies, 1000)

    def as_dict(self) -> dict:
        """The summary as plain JSON-ready data."""
        wall = self.elapsed
        tokens = self.prompt_tokens + self.completion_tokens
        return {
            "started_at": self.started_at,
            "ended_at": utc_now(),
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped_already_done": self.resumed,
            "invalid_skipped": self.invalid,
            "attempts": self.attempts,
            "retries": self.retries,
            "retries_by_reason": dict(self.retries_by_reason),
            "rate_limited_429": self.rate_limited,
            "error_codes": dict(self.error_codes),
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens, "total": tokens},
            "latency_ms": self.latency_summary(),
            **({"ttft_ms": _summary(self.ttfts), "itl_ms": _summary(self.itls)} if self.ttfts else {}),
            "wall_time_s": round(wall, 3),
            "prepare_s": round(self.prepare_s, 3),
            "requests_per_s": round(self.done / wall, 2) if wall > 0 else None,
            "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
            "stages": {name: dict(c) for name, c in sorted(self.stages.items())},
        }


def _summary(values, scale: float = 1.0) -> dict:
    """p50/p95/p99/max of ``values`` times ``scale``, rounded."""
    ordered = sorted(values)
    out = {f"p{q}": percentile(ordered, q) for q in (50, 95, 99)}
    out["max"] = ordered[-1] if ordered else None
    return {k: (round(v * scale, 2) if v is not None else None) for k, v in out.items()}
