"""A live progress line (records, rate, tokens/s, ETA) and the final summary."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import orjson
import structlog

from ..files import write_atomic
from .stats import RunStats

log = structlog.get_logger(__name__)


def format_eta(seconds: float | None) -> str:
    """Seconds to go as ``1h05m`` or ``3m07s`` (``--`` when unknown)."""
    if seconds is None:
        return "--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def render(stats: RunStats, label: str = "batch") -> str:
    """One status line: done/total, failures, in flight / current concurrency, request and token rates, ETA,
    per-stage counts."""
    elapsed = max(stats.elapsed, 1e-9)
    done = stats.done
    rate = done / elapsed
    tps = (stats.prompt_tokens + stats.completion_tokens) / elapsed
    if stats.total:
        remaining = max(0, stats.total - stats.resumed - stats.invalid - done)
        head = f"{done + stats.resumed:,}/{stats.total:,} ({100.0 * (done + stats.resumed) / stats.total:.1f}%)"
        eta = format_eta(remaining / rate) if rate > 0 else format_eta(None)
    else:
        head, eta = f"{done:,}", format_eta(None)
    flight = ""
    if stats.gauges is not None:
        in_flight, limit = stats.gauges()
        flight = f" | in flight {in_flight:,}/{limit:,}"
    line = (f"[{label}] {head} ok {stats.succeeded:,} failed {stats.failed:,}{flight} | {rate:,.0f} req/s "
            f"{tps:,.0f} tok/s | retries {stats.retries:,} 429s {stats.rate_limited:,} | ETA {eta}")
    spend = stats.spend_report()
    if spend is not None:
        line += f" | {spend_text(spend)}"
    if stats.stages:
        stages = " ".join(f"{name}:{sum(c.values())}" for name, c in sorted(stats.stages.items()))
        line += f" | {stages}"
    return line


def spend_text(spend: dict) -> str:
    """A spend report (``SpendCap.report``) in words: ``$0.0123 spent, $0.0500 projected, cap $1``."""
    projected = spend.get("projected_total_usd")
    text = f"${spend['spent_usd']:,.4f} spent"
    if projected is not None:
        text += f", ${projected:,.4f} projected"
    if spend.get("cap_usd") is not None:
        text += f", cap ${spend['cap_usd']:,g}"
    return text + (" (reached)" if spend.get("capped") else "")


class ProgressLine:
    """Redraws the status line on a terminal, or logs it now and then when piped."""

    def __init__(self, stats: RunStats, label: str = "batch", stream=None, interval: float | None = None,
                 json: bool = False) -> None:
        self.stats = stats
        self.label = label
        self.stream = stream or sys.stderr
        self.json = json  # progress as log events, so a JSON log stream holds nothing else
        self.tty = self.stream.isatty() and not json
        self.interval = interval or (0.5 if self.tty else 10.0)
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "ProgressLine":
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.draw(final=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.draw()

    def line(self) -> str:
        """The current line; subclasses show other figures."""
        return render(self.stats, self.label)

    def draw(self, final: bool = False) -> None:
        """Write the current line."""
        line = self.line()
        if self.json:
            log.info("progress", status=line, final=final)
        elif self.tty:
            self.stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def write_summary(summary: dict, path: Path) -> None:
    """Write the run summary as indented JSON next to the output."""
    write_atomic(path, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")  # the viewer reads it live


def format_summary(summary: dict) -> str:
    """The summary as a few readable lines."""
    lat = summary.get("latency_ms") or {}
    tok = summary.get("tokens") or {}
    lines = [
        f"records: {summary.get('succeeded', 0):,} ok, {summary.get('failed', 0):,} failed, "
        f"{summary.get('skipped_already_done', 0):,} already done, {summary.get('invalid_skipped', 0):,} invalid skipped",
        f"requests: {summary.get('attempts', 0):,} sent, {summary.get('retries', 0):,} retries{_reasons(summary)}, "
        f"{summary.get('rate_limited_429', 0):,} answered 429",
        f"tokens: {tok.get('prompt', 0):,} prompt + {tok.get('completion', 0):,} completion",
        f"latency ms: p50 {lat.get('p50')} p95 {lat.get('p95')} p99 {lat.get('p99')}",
        f"wall time: {summary.get('wall_time_s')} s ({summary.get('requests_per_s')} records/s)",
    ]
    if summary.get("settings"):
        endpoints = ", ".join(e["endpoint"] for e in summary.get("endpoints") or ()) or summary["settings"]["base_url"]
        lines.append(f"model {', '.join(summary.get('models') or ()) or '(as each body asks)'} at {endpoints}; "
                     f"concurrency ended at {summary.get('concurrency_final')}")
        for lane in summary.get("endpoints") or ():
            if lane.get("out_of_pool"):
                lines.append(f"endpoint {lane['endpoint']} left the pool: {lane['out_of_pool']!r}")  # quoted: the endpoint wrote part of it
    if summary.get("spend"):
        lines.append(f"spend: {spend_text(summary['spend'])}")
    if summary.get("shutdown"):
        lines.append(interrupt_sentence(summary))
    return "\n".join(lines)


def _reasons(summary: dict) -> str:
    reasons = summary.get("retries_by_reason") or {}
    return f" ({', '.join(f'{code} {n:,}' for code, n in sorted(reasons.items()))})" if reasons else ""


def interrupt_sentence(summary: dict) -> str:
    """How a stopped run ended, as a sentence: what was done, what in flight, what never started."""
    stop = summary["shutdown"]
    signals = [signal.Signals(n).name for n in stop.get("signals", ()) if n in signal.Signals._value2member_map_]
    cause = summary.get("stopped_by") or "/".join(signals) or "a stop"
    parts = [f"{summary.get('succeeded', 0) + summary.get('failed', 0):,} done"]
    if "in_flight_at_stop" in stop:  # a run of one engine knows its in-flight and unsent records
        cancelled = stop.get("cancelled_in_flight", 0)
        parts.append(f"{max(0, stop['in_flight_at_stop'] - cancelled):,} in flight were finished")
        if cancelled:
            parts.append(f"{cancelled:,} in flight were cancelled")
        parts.append(f"{stop.get('not_started', 0):,} not started")
    return f"stopped by {cause}: {', '.join(parts)}; rerun the same command to resume"
