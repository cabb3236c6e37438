"""One load level's samples as figures: throughput, distributions, errors, the client's cost."""

from __future__ import annotations

from collections import Counter

from ..engine.stats import Samples, summary
from .client_cost import bottleneck
from .load import LoadRun


def distribution(values: list[float]) -> dict | None:
    """The engine's one ``summary`` (p50/p90/p95/p99, mean, max) of seconds, in milliseconds; None without values."""
    return summary(Samples(values), 1000) if values else None


def throughput(run: LoadRun) -> float:
    """Answered requests per second in the steady state.

    A closed loop of N workers runs N chains of back-to-back requests, so the
    answers after each chain's first, over the span between the first and last
    answers, count every chain's cycle exactly; an open loop's rate is the
    answers over the span between its first and last answer.
    """
    ends = sorted(s.end for s in run.samples if s.error is None)
    if len(ends) < 2 or ends[-1] <= ends[0]:
        return 0.0
    lead = int(run.load.value) if run.load.kind == "concurrency" else 1
    if len(ends) <= 2 * lead:  # too few answers per chain: count them all from the first send
        return len(ends) / (ends[-1] - min(s.start for s in run.samples))
    return (len(ends) - lead) / (ends[-1] - ends[0])


def summarise(run: LoadRun) -> dict:
    """The figures of one load level, JSON-ready."""
    ok = [s for s in run.samples if s.error is None]
    errors = Counter(s.error for s in run.samples if s.error is not None)
    rps = throughput(run)
    tokens = sum(s.output_tokens for s in ok)
    mean_tokens = tokens / len(ok) if ok else 0.0
    point = {
        "kind": run.load.kind,
        "load": run.load.value,
        "label": run.load.label,
        "duration_s": run.duration_s,
        "requests": len(run.samples),
        "succeeded": len(ok),
        "failed": len(run.samples) - len(ok),
        "rate_limited_429": errors.get("rate_limited", 0),
        "error_codes": dict(errors),
        "not_sent_in_flight_cap": run.not_sent,
        "requests_per_s": round(rps, 2),
        "output_tokens_per_s": round(rps * mean_tokens, 1),
        "mean_output_tokens": round(mean_tokens, 1),
        "mean_prompt_tokens": _mean([s.prompt_tokens for s in ok if s.prompt_tokens is not None]),
        "latency_ms": distribution([s.end - s.start for s in ok]),
        "ttft_ms": distribution([s.ttft for s in ok if s.ttft is not None]),
        "itl_ms": distribution([s.itl for s in ok if s.itl is not None]),
        "client": run.client,
    }
    point["client_bound"] = bottleneck(run.client) if run.client else None
    return point


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def render(point: dict) -> str:
    """One line for the progress log."""
    lat, ttft = point["latency_ms"] or {}, point["ttft_ms"] or {}
    line = (f"[bench] {point['label']}: {point['requests_per_s']:,.1f} req/s, {point['output_tokens_per_s']:,.0f} tok/s | "
            f"latency p50 {lat.get('p50')} p95 {lat.get('p95')} ms | TTFT p50 {ttft.get('p50')} p95 {ttft.get('p95')} ms | "
            f"ok {point['succeeded']:,} failed {point['failed']:,} 429s {point['rate_limited_429']:,} | "
            f"client {point['client'].get('cpu_us_per_request')} µs/req")
    return line + (f" | CLIENT-BOUND: {point['client_bound']}" if point["client_bound"] else "")
