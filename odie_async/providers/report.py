"""A provider batch run's live progress line and summary, the run driven to its end, and the
``OdieError`` it stops with: a provider's error as the endpoint stopping the run (3), a full disk or
an internal crash as a local failure (4). The command is ``odie batch --mode provider-batch`` (``cli/batch.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from pathlib import Path

from ..engine.keys import redact
from ..engine.progress import ProgressLine, format_eta, spend_text, write_summary
from ..engine.stats import RunStats
from ..exceptions import EndpointStopped, EngineCrashed, OdieError, RequestError
from .runner import ProviderBatchRun


def snapshot(run: ProviderBatchRun) -> dict:
    """Batches by phase and records done, from the provider's counts."""
    phases = Counter()
    records_total = records_done = 0
    for c in run.chunks:
        status = run.live.get(c.chunk.key)
        if c.settled:
            phases["done"] += 1
        elif status is not None:
            phases["in_progress"] += 1
        else:
            phases["submitting" if c.batch_id is None else "submitted"] += 1
        if c.chunk.attempt == 0:
            records_total += c.chunk.count
        records_done += c.chunk.count if c.outcome == "done" else (status.done if status else 0)
    return {"phases": phases, "records_total": records_total, "records_done": min(records_done, records_total),
            "elapsed": time.monotonic() - run.started}


def spend_report(run: ProviderBatchRun) -> dict | None:
    """The cap, the spend so far at batch prices and the total projected from the records answered
    (None without a cap when a model has no price)."""
    spend = run.spend.cap if run.spend is not None else run.meter
    if spend is None:
        return None
    return spend.report(run.counts["batch_ok"] + run.counts["online_ok"], run.planned or None)


def run_summary(run: ProviderBatchRun) -> dict:
    """Counts, tokens, and every batch with its id, state and outcome."""
    batches = [{"chunk": c.chunk.key, "batch_id": c.batch_id, "status": c.status, "records": c.chunk.count,
                "outcome": c.outcome, "adopted": c.adopted} for c in run.chunks]
    return {"mode": "provider-batch", "provider": run.provider.name, "run_id": run.journal.state.run_id,
            "records": dict(run.counts), "tokens": dict(run.tokens), "batches": batches,
            "unfinished": len(run.wanted),
            "errors_file_lines": _line_count(run.store.errors),
            "wall_time_s": round(time.monotonic() - run.started, 2),
            "output": str(run.store.output), "errors": str(run.store.errors),
            **({"spend": spend_report(run)} if spend_report(run) is not None else {})}


def _line_count(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


class BatchProgress(ProgressLine):
    """``[openai batches] 2 in progress 1 done | records 1,200/5,000 (24.0%) | ETA 3m10s``."""

    def __init__(self, run: ProviderBatchRun, label: str) -> None:
        super().__init__(RunStats(), label)
        self.run = run

    def line(self) -> str:
        """The current line, from the provider's counts."""
        snap = snapshot(self.run)
        phases = " ".join(f"{n} {name.replace('_', ' ')}" for name, n in sorted(snap["phases"].items()))
        done, total, elapsed = snap["records_done"], snap["records_total"], snap["elapsed"]
        share = f" ({100.0 * done / total:.1f}%)" if total else ""
        rate = done / elapsed if elapsed > 0 else 0
        eta = format_eta((total - done) / rate if rate > 0 else None)
        line = f"[{self.label}] batches: {phases or 'none'} | records {done:,}/{total:,}{share} | ETA {eta}"
        spend = spend_report(self.run)
        return line + f" | {spend_text(spend)}" if spend else line


def format_batch_summary(summary: dict) -> str:
    """The summary as readable lines: each batch, then where the records went, then tokens."""
    records, tokens = summary["records"], summary["tokens"]
    lines = [f"provider batches ({summary['provider']}, run {summary['run_id']}): {len(summary['batches'])}"]
    for b in summary["batches"]:
        adopted = ", adopted after a lost answer" if b["adopted"] else ""
        lines.append(f"  chunk {b['chunk']}: {_shown(b['batch_id'])} {_shown(b['status'])}, "
                     f"{b['records']:,} records, {b['outcome'] or 'pending'}{adopted}")
    lines += [
        f"records: {records.get('batch_ok', 0):,} ok and {records.get('batch_failed', 0):,} failed through batches, "
        f"{records.get('online_ok', 0):,} ok and {records.get('online_failed', 0):,} failed online, "
        f"{records.get('resubmitted', 0):,} resubmitted, {records.get('already_done', 0):,} already done",
        f"tokens: {tokens.get('prompt', 0):,} prompt + {tokens.get('completion', 0):,} completion "
        f"(batch tokens bill at half the online price)",
        f"errors file: {summary['errors_file_lines']:,} lines; wall time {summary['wall_time_s']} s",
    ]
    if summary.get("spend"):
        lines.append(f"spend: {spend_text(summary['spend'])}")
    return "\n".join(lines)


def _shown(text: str | None) -> str:
    """A provider-given string as safe to print: control characters (terminal escapes) dropped."""
    return "".join(ch for ch in text if ch.isprintable())[:80] if text else "-"


async def drive(run: ProviderBatchRun, run_id: str, summary_path: Path, progress: bool = True) -> dict:
    """Run ``run`` to its end (a progress line on stderr unless ``progress`` is false), then write its
    summary to ``summary_path``, however it ended; the summary."""
    shown = BatchProgress(run, f"{run.provider.name} batches") if progress else contextlib.nullcontext()
    try:
        run.prepare(run_id)
        async with run.provider, shown:
            await run.execute()
    finally:
        run.close()
        summary = run_summary(run)
        write_summary(summary, summary_path)
    return summary


def stopped(exc: Exception, key: str | None) -> OdieError:
    """The error a run that ended with ``exc`` stops with, its message without the key: a provider's
    error is the endpoint stopping the run (exit 3), anything not an ``OdieError`` an internal crash (4)."""
    if isinstance(exc, RequestError):
        error: OdieError = EndpointStopped(f"stopped by the endpoint: {exc}")
    elif isinstance(exc, OdieError):
        error = exc
    else:
        error = EngineCrashed(f"internal error ({type(exc).__name__}: {exc}); what was written is intact, "
                              "rerun to resume")
    message = redact(str(error).encode(), key.encode() if key else None).decode("utf-8", "replace")
    if message != str(error):
        error.args = (message,)
    return error
