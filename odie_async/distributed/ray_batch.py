"""``odie batch --ray``: the driver that runs the engine on shards of the input across a Ray cluster.

The driver opens the output's own ``ResultStore`` first: it holds the output's
lock for the whole run (a plain run on the same output is refused, and the
other way round), folds in whatever a killed run left in ``OUT.shards/``, and
refuses changed requests unless ``--resend-changed``, before anything is spent.
It then places a budget actor and N shard workers (``SPREAD`` across nodes),
beats the heartbeat the workers poll, shows one live line for the whole
cluster, restarts the shard of a worker that died (Ray restarts the actor; the
shard resumes from its checkpoint), and at the end folds the shards into the
output, checks the ledger (every record of the input in the output or the
errors file, or counted as unfinished) and writes one summary with per-worker
figures. Rerunning the same command, or a plain run, resumes; ``--merge-only``
only folds and checks.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from ..engine.batch import check_scan, scan_input
from ..engine.batchfile import BatchReader
from ..engine.checkpoint import ResultStore
from ..engine.core import EngineSettings
from ..engine.progress import ProgressLine, render, write_summary
from ..engine.stats import RunStats
from ..runtime import StopSignals
from .cluster import Placement, connected, is_actor_death, run_key
from .shards import RunLayout, shard_of
from .worker import ShardJob, merge_latencies

log = structlog.get_logger(__name__)

BEAT_INTERVAL_S = 0.5
RESTART_WAIT_S = 120.0  # how long a dead worker's restarted actor may take to answer
STATS_INTERVAL_S = 1.0
_COUNTERS = {"succeeded": "succeeded", "failed": "failed", "skipped_already_done": "resumed",
             "retries": "retries", "rate_limited_429": "rate_limited", "attempts": "attempts"}


@dataclass
class ClusterJob:
    """A sharded run, in plain parameters. Concurrency and rate limits are the whole cluster's."""

    input: str
    output: str
    settings: EngineSettings
    errors: str | None = None
    address: str = "local"
    workers: int | None = None
    model: str | None = None
    retry_failed: bool = False
    resend_changed: bool = False
    progress: bool = True
    log_json: bool = False
    max_restarts: int = 3
    worker_cpus: float = 1.0
    interrupts: list = field(default_factory=list)  # signals received, filled by the signal handler


@dataclass
class Before:
    """The input's records that had a line when the run began, per shard and by file."""

    per_shard: Counter = field(default_factory=Counter)
    ok: int = 0
    failed: int = 0


def run_on_ray(job: ClusterJob, skip_invalid: bool = False) -> dict:
    """Run ``job`` on the cluster, fold the shards into the output, check the ledger; write and return the summary."""
    layout = RunLayout(job.output, job.errors)
    store = ResultStore(layout.output, layout.errors)
    store.check_paths(job.input)
    store.open(retry_failed=job.retry_failed)
    try:
        scan = scan_input(job.input, store, job.model, skip_invalid)
        check_scan(scan, job.input, job.resend_changed)
        shards = layout.prepare(job.workers, job.input)
        before = _done_before(job.input, store, shards, set(scan.changed))
        stats = RunStats()
        stats.total, stats.invalid = scan.lines + scan.invalid, scan.invalid
        with connected(job.address) as ray, StopSignals(job.interrupts.append, job.interrupts.append):
            placement = Placement(ray, run_key(layout.output), shards, job.settings.rpm, job.settings.tpm,
                                  job.max_restarts, job.worker_cpus)
            try:
                driver = _Driver(ray, placement, job, layout, shards, stats, before)
                results = driver.run()
                budget_calls = _budget_calls(ray, placement)
            finally:
                placement.release()
        merged = store.fold_shards()
        ledger = record_ledger(job.input, store, before) | {"invalid_skipped": scan.invalid}
    finally:
        store.close()
    summary = _summary(stats, results, driver, merged, budget_calls, layout)
    summary["ledger"] = ledger
    summary["exit_code"] = exit_code(summary)
    write_summary(summary, layout.summary)
    return summary


def merge_only(input: str, output: str, errors: str | None = None, skip_invalid: bool = False) -> dict:
    """Fold the shards of an earlier run into the output; return the ledger of ``input`` against it."""
    layout = RunLayout(output, errors)
    store = ResultStore(layout.output, layout.errors)
    store.check_paths(input)
    store.open()
    try:
        return record_ledger(input, store, Before(), skip_invalid) | {
            "merged": store.folded, "output_file": str(layout.output), "errors_file": str(layout.errors)}
    finally:
        store.close()


def _done_before(input: str, store: ResultStore, shards: int, resent: set[str]) -> Before:
    """Count the records with a line now (those to be sent again excepted), per shard and by file."""
    before = Before()
    for line in BatchReader(input, skip_invalid=True):
        if store.done(line.custom_id) and line.custom_id not in resent:
            before.per_shard[shard_of(line.custom_id, shards)] += 1
            if store.failed_before(line.custom_id):
                before.failed += 1
            else:
                before.ok += 1
    return before


def record_ledger(input: str, store: ResultStore, before: Before, skip_invalid: bool = True) -> dict:
    """Where every valid record of ``input`` is now: read = already done + output + errors + unfinished."""
    ok = failed = read = 0
    missing: list[str] = []
    for line in BatchReader(input, skip_invalid=skip_invalid):
        read += 1
        if not store.done(line.custom_id):
            missing.append(line.custom_id)
        elif store.failed_before(line.custom_id):
            failed += 1
        else:
            ok += 1
    return {"read": read, "already_done": before.ok + before.failed, "output": ok - before.ok,
            "errors": failed - before.failed, "unfinished": len(missing), "not_read": 0, "missing": missing[:10],
            "in_errors_file": failed}


def _budget_calls(ray, placement: Placement) -> dict:
    try:
        return ray.get(placement.budget.figures.remote(), timeout=10)
    except Exception as exc:  # figures only: the run's results are already on disk
        log.warning("budget actor gave no figures", error=str(exc))
        return {}


def worker_settings(settings: EngineSettings, shards: int) -> EngineSettings:
    """One worker's share: the concurrency split, and each pool endpoint's limits split, across ``shards``.

    The run's own ``rpm``/``tpm`` stay whole: the budget actor shares them out.
    """
    endpoints = [spec.model_copy(update={
        "rpm": spec.rpm / shards, "tpm": spec.tpm / shards,
        "max_concurrency": spec.max_concurrency and max(1, math.ceil(spec.max_concurrency / shards))})
        for spec in settings.endpoints]
    return replace(settings, concurrency=max(1, math.ceil(settings.concurrency / shards)), endpoints=endpoints)


class _Driver:
    """Submits the shards, keeps the heartbeat and the progress line, restarts dead workers' shards."""

    def __init__(self, ray, placement: Placement, job: ClusterJob, layout: RunLayout, shards: int,
                 stats: RunStats, before: Before) -> None:
        self.ray, self.placement, self.job, self.layout, self.shards = ray, placement, job, layout, shards
        self.stats = stats
        self.restarts: Counter[int] = Counter()
        self.live: dict[int, dict] = {}
        self.carried: dict[int, Counter] = {i: Counter() for i in range(shards)}
        self.restarting: dict[int, float] = {}  # shard -> when its worker died, until the restarted actor answers
        self.done_before = [before.per_shard[i] for i in range(shards)]
        self.progress = ClusterProgress(stats, self) if job.progress else None

    def shard_job(self, index: int) -> ShardJob:
        per_worker = worker_settings(self.job.settings, self.shards)
        return ShardJob(index, self.shards, str(Path(self.job.input).resolve()), str(self.layout.output),
                        str(self.layout.errors), per_worker, self.job.model, self.job.log_json,
                        self.job.resend_changed)

    def run(self) -> dict[int, dict]:
        workers = self.placement.workers
        pending = {workers[i].run.remote(self.shard_job(i)): i for i in range(self.shards)}
        results: dict[int, dict] = {}
        last_beat = last_stats = 0.0
        stops_sent = 0
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=BEAT_INTERVAL_S / 2)
            now = time.monotonic()
            if now - last_beat >= BEAT_INTERVAL_S:
                self.placement.budget.beat.remote()
                last_beat = now
            if len(self.job.interrupts) > stops_sent:
                stops_sent = len(self.job.interrupts)
                for i in pending.values():
                    workers[i].stop.remote(cancel=stops_sent > 1)
            for ref in ready:
                index = pending.pop(ref)
                outcome = self._restarted(ref, index) if index in self.restarting else self._collect(ref, index)
                if outcome is None:  # the worker died: ask until its restarted actor answers
                    self.restarting.setdefault(index, time.monotonic())
                    pending[workers[index].ping.remote()] = index
                elif outcome == "up":
                    pending[workers[index].run.remote(self.shard_job(index))] = index
                else:
                    results[index] = outcome
            if now - last_stats >= STATS_INTERVAL_S:
                self._poll(pending)
                last_stats = now
        self._update()
        if self.progress:
            self.progress.draw(final=True)
        return results

    def _restarted(self, ref, index: int) -> dict | str | None:
        """After a worker died: "up" once its restarted actor answers, None to ask again, or the shard's end."""
        try:
            self.ray.get(ref)
        except Exception as exc:
            waited = time.monotonic() - self.restarting[index]
            if is_actor_death(exc) and waited < RESTART_WAIT_S and not self.job.interrupts:
                time.sleep(0.2)
                return None
            log.error("shard worker did not come back; not restarting it", shard=index, waited_s=round(waited, 1))
            return {"error": {"type": "WorkerDied", "message": str(exc)[:300], "aborted": True},
                    **dict(self.carried[index])}
        del self.restarting[index]
        return "up"

    def _collect(self, ref, index: int) -> dict | None:
        """A worker's summary; None when it died and its shard goes again on the restarted actor."""
        try:
            result = self.ray.get(ref)
        except Exception as exc:
            self.carried[index].update(self.live.pop(index, {}))
            if not is_actor_death(exc):  # the shard's run raised: report it, let the other shards finish
                log.error("shard failed", shard=index, error=str(exc)[-500:])
                return {"error": {"type": type(exc).__name__, "message": str(exc)[-500:], "aborted": True},
                        **dict(self.carried[index])}
            self.restarts[index] += 1
            if self.restarts[index] > self.job.max_restarts or self.job.interrupts:
                log.error("shard worker died; not restarting it", shard=index, restarts=self.restarts[index] - 1)
                return {"error": {"type": "WorkerDied", "message": str(exc)[:300], "aborted": True},
                        **dict(self.carried[index])}
            log.warning("shard worker died; Ray restarts it and it resumes its shard", shard=index,
                        restart=self.restarts[index])
            return None
        tokens = result.get("tokens") or {}
        self.live[index] = {name: result.get(key, 0) for key, name in _COUNTERS.items()} | {
            "prompt_tokens": tokens.get("prompt", 0), "completion_tokens": tokens.get("completion", 0)}
        return result

    def _poll(self, pending: dict) -> None:
        refs = {self.placement.workers[i].stats.remote(): i for i in pending.values()}
        ready, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=STATS_INTERVAL_S)
        for ref in ready:
            try:
                self.live[refs[ref]] = self.ray.get(ref) or self.live.get(refs[ref], {})
            except Exception:  # a worker dying now is handled where its run returns
                continue
        self._update()
        if self.progress:
            self.progress.draw()

    def shard_counts(self, index: int) -> Counter:
        """Shard ``index``'s figures for this run, over all its workers' lives.

        A restarted worker finds the lines its predecessor wrote as done
        before: beyond the lines there were when the run began, they count as
        this run's records (succeeded, but for the failures last polled).
        """
        live, carried = Counter(self.live.get(index, {})), self.carried[index]
        counts = live + carried
        if self.restarts[index]:
            before = self.done_before[index]
            found = max(0, live["resumed"] - before)
            counts["succeeded"] = live["succeeded"] + max(carried["succeeded"], found - carried["failed"])
            counts["resumed"] = max(carried["resumed"], min(live["resumed"], before))
        return counts

    def worker_done(self, index: int) -> int:
        """Records shard ``index`` finished in this run."""
        counts = self.shard_counts(index)
        return counts["succeeded"] + counts["failed"]

    def _update(self) -> None:
        total = sum((self.shard_counts(i) for i in range(self.shards)), Counter())
        for name in set(_COUNTERS.values()) | {"prompt_tokens", "completion_tokens"}:
            setattr(self.stats, name, total[name])


class ClusterProgress(ProgressLine):
    """The live line of the whole cluster, with each worker's count of records done."""

    def __init__(self, stats: RunStats, driver: _Driver) -> None:
        super().__init__(stats, label="ray")
        self.driver = driver

    def line(self) -> str:
        """The cluster's figures, then ``w0:N w1:N ...``."""
        per_worker = " ".join(f"w{i}:{self.driver.worker_done(i):,}" for i in range(self.driver.shards))
        return f"{render(self.stats, self.label)} | {per_worker}"


def _summary(stats: RunStats, results: dict[int, dict], driver: _Driver, merged: dict,
             budget_calls: dict, layout: RunLayout) -> dict:
    stats.latencies = merge_latencies([r.get("latencies", b"") for r in results.values()])
    stats.error_codes = sum((Counter(r.get("error_codes") or {}) for r in results.values()), Counter())
    stats.retries_by_reason = sum((Counter(r.get("retries_by_reason") or {}) for r in results.values()), Counter())
    summary = stats.as_dict()
    wall = stats.elapsed
    summary["workers"] = [_worker_figures(i, results.get(i, {}), driver.restarts[i]) for i in sorted(results)]
    summary["ray"] = {"shards": driver.shards, "address": driver.job.address, "budget_calls": budget_calls,
                      "budget_calls_per_s": round(sum(budget_calls.values()) / wall, 2) if wall > 0 else None}
    summary["merged"] = merged
    summary["output"], summary["errors"] = str(layout.output), str(layout.errors)
    summary["shutdown"] = {"signals": list(driver.job.interrupts)} if driver.job.interrupts else None
    errors = [w["error"] for w in summary["workers"] if w.get("error")]
    summary["worker_errors"] = errors or None
    return summary


def _worker_figures(index: int, result: dict, restarts: int) -> dict:
    keep = ("succeeded", "failed", "skipped_already_done", "attempts", "retries", "rate_limited_429",
            "requests_per_s", "wall_time_s", "latency_ms", "cpu_s", "lease_calls", "node", "pid", "error", "shutdown")
    return {"shard": index, "restarts": restarts} | {k: result[k] for k in keep if k in result}


def exit_code(summary: dict) -> int:
    """The run's exit code, from its signals, its shards' errors and its ledger.

    130/143 on a signal; a shard that stopped early gives its own code (3 the
    endpoint, 4 a local failure; 3 for a worker that kept dying); records left
    without a line otherwise are an internal error (4); 1 when some records are
    in the errors file (failed in this run or an earlier one, as a plain run says) or were skipped
    as invalid; else 0.
    """
    if summary["shutdown"]:
        return 128 + summary["shutdown"]["signals"][0]
    if summary["worker_errors"]:
        for error in summary["worker_errors"]:
            log.error("a shard stopped early; rerun the same command to resume it", **error)
        return max(error.get("exit_code") or 3 for error in summary["worker_errors"])
    ledger = summary.get("ledger") or {}
    if ledger.get("unfinished"):
        log.error("internal error: records have no line in the output or errors file; rerun to send them",
                  count=ledger["unfinished"], first=ledger.get("missing"))
        return 4
    return 1 if (summary["failed"] or ledger.get("errors") or ledger.get("in_errors_file")
                 or ledger.get("invalid_skipped")) else 0
