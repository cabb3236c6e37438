"""Run counters, latency percentiles and the per-stage breakdown of a run."""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Callable, Iterable

from .routes import usage_tokens


def stage_of(custom_id: str) -> str:
    """The stage a record belongs to: its custom_id up to the first ``:`` (or ``batch``)."""
    head, sep, _rest = custom_id.partition(":")
    return head if sep else "batch"


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# The one summary of a distribution (latencies, TTFT, ITL, a bench point's, a lane's): these
# percentiles, the mean and the maximum, each scaled (seconds to milliseconds) and rounded to
# DIGITS places, by ``summary``. Exact samples (``Samples``) and the engine's ``LogHistogram`` give
# the same keys from the same quantile definition (``nearest_rank``).
QUANTILES = (50, 90, 95, 99)
DIGITS = 2


def nearest_rank(q: float, count: int) -> int:
    """The 1-based rank of the ``q``-th percentile (0–100) among ``count`` sorted values: the
    smallest value at or above ``q`` % of them (nearest rank)."""
    return min(count, max(1, math.ceil(q * count / 100.0)))


def percentile(sorted_values, q: float) -> float | None:
    """The ``q``-th percentile (0–100) of already sorted values, nearest rank; None without values."""
    if not sorted_values:
        return None
    return sorted_values[nearest_rank(q, len(sorted_values)) - 1]


def scaled(value: float | None, scale: float = 1.0) -> float | None:
    """``value`` times ``scale``, rounded the one way every summary rounds (None stays None)."""
    return None if value is None else round(value * scale, DIGITS)


def summary(distribution, scale: float = 1.0) -> dict:
    """p50/p90/p95/p99, mean and max of a ``LogHistogram`` or ``Samples``, times ``scale``, rounded;
    every value None when it holds nothing."""
    empty = not distribution.total
    out = {f"p{q}": distribution.percentile(q) for q in QUANTILES}
    out["mean"] = None if empty else distribution.sum / distribution.total
    out["max"] = None if empty else distribution.max
    return {key: scaled(value, scale) for key, value in out.items()}


class Samples:
    """Exact values, read like a ``LogHistogram`` (``percentile``, ``total``, ``sum``, ``max``)."""

    __slots__ = ("values", "total", "sum", "max")

    def __init__(self, values) -> None:
        self.values = sorted(values)
        self.total = len(self.values)
        self.sum = sum(self.values)
        self.max = self.values[-1] if self.values else 0.0

    def __len__(self) -> int:
        return self.total

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile, nearest rank."""
        return percentile(self.values, q)


_LOW = 1e-6  # values at or below land in the first bucket
_RATIO = 1.01  # each bucket 1 % wider than the one before: a percentile reads at most 1 % high, never low
_K = 1.0 / math.log(_RATIO)
_SIZE = int(math.log(1e7 / _LOW) * _K) + 1  # up to 1e7 (seconds, or milliseconds): about 3,000 buckets


class LogHistogram:
    """Counts of values in fixed log-spaced buckets: memory that stays the same however long a run
    goes, an ``add`` without a sort or an allocation, and every percentile read from it."""

    __slots__ = ("counts", "total", "max", "sum")

    def __init__(self) -> None:
        self.counts = array("q", bytes(8 * _SIZE))
        self.total = 0
        self.max = 0.0
        self.sum = 0.0

    def add(self, value: float) -> None:
        """Count one value."""
        index = int(math.log(value / _LOW) * _K) if value > _LOW else 0
        self.counts[index if index < _SIZE else _SIZE - 1] += 1
        self.total += 1
        self.sum += value
        if value > self.max:
            self.max = value

    def __len__(self) -> int:
        return self.total

    def percentile(self, q: float, since: array | None = None) -> float | None:
        """The ``q``-th percentile (0–100, nearest rank) of what was counted (after ``since``, a
        ``snapshot``), as its bucket's upper edge (or the maximum seen); None when nothing was."""
        counts = self.counts if since is None else array("q", map(int.__sub__, self.counts, since))
        total = sum(counts) if since is not None else self.total
        if not total:
            return None
        rank = nearest_rank(q, total)
        seen = 0
        for index, count in enumerate(counts):
            seen += count
            if seen >= rank:
                return min(self.max, _LOW * _RATIO ** (index + 1))
        return self.max  # pragma: no cover

    def snapshot(self) -> array:
        """The counts now, to read the percentiles of what comes after (``percentile(q, since=)``)."""
        return array("q", self.counts)

    def merge(self, other: "LogHistogram") -> "LogHistogram":
        """Add ``other``'s counts to this one's; returns itself."""
        for index, count in enumerate(other.counts):
            if count:
                self.counts[index] += count
        self.total += other.total
        self.sum += other.sum
        self.max = max(self.max, other.max)
        return self

    def tobytes(self) -> bytes:
        """The histogram as bytes (to send it to another process); ``frombytes`` reads it back."""
        return array("d", [self.max, self.sum]).tobytes() + self.counts.tobytes()

    @classmethod
    def frombytes(cls, data: bytes) -> "LogHistogram":
        """A histogram from ``tobytes``' bytes (empty bytes: an empty histogram)."""
        histogram = cls()
        if data:
            histogram.max, histogram.sum = array("d", data[:16])
            histogram.counts = array("q", data[16:])
            histogram.total = sum(histogram.counts)
        return histogram

    @classmethod
    def merged(cls, parts: Iterable["LogHistogram"]) -> "LogHistogram":
        """One histogram holding every part's counts."""
        total = cls()
        for part in parts:
            total.merge(part)
        return total


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
        self.spend = None  # a SpendCap, when the run has one (the progress line shows its spend)
        self.meter = None  # without a cap: a SpendCap.meter that counts what each answer cost
        self.cache_hits = self.cache_saved_unpriced = 0
        self.cache_saved_usd = 0.0
        self.stages: dict[str, Counter[str]] = defaultdict(Counter)
        # Latencies are counted once, by the lane that got the answer; the run's are its lanes' together.
        self.latency_parts: list[LogHistogram] = [LogHistogram()]
        self.ttfts = LogHistogram()  # streamed requests only (milliseconds), as are the inter-token latencies
        self.itls = LogHistogram()

    @property
    def latencies(self) -> LogHistogram:
        """Every successful request's latency (seconds), all lanes together."""
        parts = self.latency_parts
        return parts[0] if len(parts) == 1 else LogHistogram.merged(parts)

    @latencies.setter
    def latencies(self, histogram: LogHistogram) -> None:
        self.latency_parts = [histogram]

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

    def spend_report(self) -> dict | None:
        """The spending cap's (or meter's) report, its total projected from the records this run answered
        over those it set out to answer (None without either, or when a model has no price)."""
        spend = self.spend if self.spend is not None else self.meter
        if spend is None:
            return None
        return spend.report(self.succeeded, max(0, (self.total or 0) - self.resumed - self.invalid))

    def record_success(self, custom_id: str, body: dict, timing: dict | None = None) -> None:
        """Count one record answered successfully (``timing``: a streamed request's, in ms); its
        latency was counted by its lane."""
        self.succeeded += 1
        if timing is not None:
            if timing["ttft_ms"] is not None:
                self.ttfts.add(timing["ttft_ms"])
            if timing["itl_ms"] is not None:
                self.itls.add(timing["itl_ms"])
        prompt, completion = usage_tokens(body.get("usage"))
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        if self.meter is not None:
            self.meter.count(body.get("model"), body.get("usage"))
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

    def record_cache_hit(self, custom_id: str, body: dict, saved_usd: float | None) -> None:
        """Count one record answered from the shared answer cache: no request, its usage not spent."""
        self.succeeded += 1
        self.cache_hits += 1
        if saved_usd is None:
            self.cache_saved_unpriced += 1
        else:
            self.cache_saved_usd += saved_usd
        if ":" in custom_id:
            self.stages[stage_of(custom_id)]["succeeded"] += 1

    def record_cached(self, custom_id: str) -> None:
        """Count one record answered from the checkpoint without a request."""
        self.resumed += 1
        if ":" in custom_id:
            self.stages[stage_of(custom_id)]["cached"] += 1

    def latency_summary(self) -> dict:
        """The ``summary`` of successful request latencies, in milliseconds."""
        return summary(self.latencies, 1000)

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
            **({"ttft_ms": summary(self.ttfts), "itl_ms": summary(self.itls)} if self.ttfts else {}),
            "wall_time_s": round(wall, 3),
            "prepare_s": round(self.prepare_s, 3),
            "requests_per_s": round(self.done / wall, 2) if wall > 0 else None,
            "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
            "stages": {name: dict(c) for name, c in sorted(self.stages.items())},
        }

