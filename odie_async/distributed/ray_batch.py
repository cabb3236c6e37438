"""``odie batch --ray``: the driver that runs the engine on shards of the input across a Ray cluster.

The driver checks the input, places a budget actor and N shard workers
(``SPREAD`` across nodes), beats the heartbeat the workers poll, shows one
live line for the whole cluster, restarts the shard of a worker that died
(Ray restarts the actor; the shard resumes from its checkpoint), and at the
end merges the shards into the output and writes one summary with per-worker
figures. Rerunning the same command resumes every shard; ``--merge-only``
redoes the merge.
"""

from __future__ import annotations

import math
import signal
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from ..engine.batchfile import BatchReader
from ..engine.core import EngineSettings
from ..engine.progress import ProgressLine, render, write_summary
from ..engine.stats import RunStats
from ..exceptions import ConfigError, RunAborted
from .cluster import Placement, connected, is_actor_death, run_key
from .shards import RunLayout
from .worker import ShardJob, merge_latencies

log = structlog.get_logger(__name__)

BEAT_INTERVAL_S = 0.5
STATS_INTERVAL_S = 1.0
_COUNTERS = {"succeeded": "succeeded", "failed": "failed", "skipped_already_done": "resumed",
             "retries": "retries", "rate_limited_429": "rate_limited", "attempts": "attempts"}


def add_arguments(parser) -> None:
    """The Ray options of ``odie batch``."""
    group = parser.add_argument_group("running on a Ray cluster (pip install 'odie-async[ray]')")
    group.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                       help="run on Ray: 'auto', a cluster address, or none for a local Ray started for the run; "
                            "--concurrency, --rpm and --tpm are then the whole cluster's")
    group.add_argument("--workers", type=int, default=None,
                       help="shard workers (Ray actors; default: the earlier run's count, else 2)")
    group.add_argument("--merge-only", action="store_true",
                       help="only merge the shards of an earlier --ray run into the output")


def wanted(args) -> bool:
    """Whether the command line asks for the Ray runner."""
    return getattr(args, "ray", None) is not None or getattr(args, "merge_only", False)


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
    progress: bool = True
    log_json: bool = False
    max_restarts: int = 3
    worker_cpus: float = 1.0
    interrupts: list = field(default_factory=list)  # signals received, filled by the signal handler


def check_input(path: str, skip_invalid: bool) -> tuple[int, int]:
    """Read every line before anything is spent; return (valid, invalid). Bad input raises InputError."""
    reader = BatchReader(path, skip_invalid=skip_invalid)
    valid = sum(1 for _line in reader)
    return valid, reader.invalid


def run_on_ray(job: ClusterJob, skip_invalid: bool = False) -> dict:
    """Run ``job`` on the cluster, merge the shards, write and return the summary."""
    layout = RunLayout(job.output, job.errors)
    valid, invalid = check_input(job.input, skip_invalid)
    shards = layout.prepare(job.workers, job.input)
    if job.retry_failed:
        _set_aside_failures(layout, shards)
    stats = RunStats()
    stats.total, stats.invalid = valid + invalid, invalid
    with connected(job.address) as ray, _interrupts(job.interrupts):
        placement = Placement(ray, run_key(layout.output), shards, job.settings.rpm, job.settings.tpm,
                              job.max_restarts, job.worker_cpus)
        try:
            driver = _Driver(ray, placement, job, layout, shards, stats)
            results = driver.run()
            budget_calls = _budget_calls(ray, placement)
        finally:
            placement.release()
    merged = layout.merge(shards)
    summary = _summary(stats, results, driver, merged, budget_calls, layout)
    write_summary(summary, layout.summary)
    return summary


def merge_only(output: str, errors: str | None = None) -> dict:
    """Merge the shards of an earlier run into the output again; return the counts."""
    layout = RunLayout(output, errors)
    shards = layout.recorded_shards()
    if shards is None:
        raise ConfigError(f"no sharded run writes {output} (no {layout.manifest})")
    return layout.merge(shards) | {"shards": shards, "output": str(layout.output), "errors": str(layout.errors)}


def _set_aside_failures(layout: RunLayout, shards: int) -> None:
    """``--retry-failed``: move each shard's errors file aside once, before any worker starts."""
    stamp = int(time.time())
    for i in range(shards):
        path = layout.shard_errors(i)
        if path.exists():
            path.rename(path.with_name(f"{path.name}.{stamp}.bak"))


def _budget_calls(ray, placement: Placement) -> dict:
    try:
        return ray.get(placement.budget.figures.remote(), timeout=10)
    except Exception as exc:  # figures only: the run's results are already on disk
        log.warning("budget actor gave no figures", error=str(exc))
        return {}


class _Driver:
    """Submits the shards, keeps the heartbeat and the progress line, restarts dead workers' shards."""

    def __init__(self, ray, placement: Placement, job: ClusterJob, layout: RunLayout, shards: int,
                 stats: RunStats) -> None:
        self.ray, self.placement, self.job, self.layout, self.shards = ray, placement, job, layout, shards
        self.stats = stats
        self.restarts: Counter[int] = Counter()
        self.live: dict[int, dict] = {}
        self.carried: dict[int, Counter] = {i: Counter() for i in range(shards)}
        self.done_before = [layout.done_lines(i) for i in range(shards)]
        self.progress = ClusterProgress(stats, self) if job.progress else None

    def shard_job(self, index: int) -> ShardJob:
        per_worker = replace(self.job.settings, concurrency=max(1, math.ceil(self.job.settings.concurrency / self.shards)))
        return ShardJob(index, self.shards, str(Path(self.job.input).resolve()), str(self.layout.output),
                        str(self.layout.errors), per_worker, self.job.model, self.job.log_json)

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
                outcome = self._collect(ref, index)
                if outcome is None:
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


def run(args) -> int:
    """``odie batch --ray`` / ``--merge-only``: the command's exit code (see ``exit_code``)."""
    from ..options import settings_from_args
    from ..engine.progress import format_summary
    from ..logs import configure_logging

    configure_logging(json=args.log_json)
    if args.merge_only:
        counts = merge_only(args.output, args.errors)
        print(f"merged {counts['shards']} shards: {counts['output_records']:,} records into {counts['output']}, "
              f"{counts['error_records']:,} into {counts['errors']}")
        return 1 if counts["error_records"] else 0
    if not Path(args.input).is_file():
        raise ConfigError(f"input file {args.input} does not exist")
    if not args.base_url:
        raise ConfigError("--ray needs --base-url: the endpoint every worker sends to")
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    job = ClusterJob(args.input, args.output, settings_from_args(args, args.base_url), errors=args.errors,
                     address=args.ray or "local", workers=args.workers, model=args.model,
                     retry_failed=args.retry_failed, progress=not args.no_progress, log_json=args.log_json)
    summary = run_on_ray(job, skip_invalid=args.skip_invalid)
    print(format_summary(summary))
    return exit_code(summary)


def exit_code(summary: dict) -> int:
    """0 all done, 1 some records failed, 3 a shard stopped early (endpoint, dead workers), 130/143 on a signal."""
    if summary["shutdown"]:
        return 128 + summary["shutdown"]["signals"][0]
    if summary["worker_errors"]:
        for error in summary["worker_errors"]:
            log.error("a shard stopped early; rerun the same command to resume it", **error)
        return 3
    return 1 if summary["failed"] else 0


class _interrupts:
    """SIGINT/SIGTERM append to ``hits`` (the driver asks workers to drain, then to cancel)."""

    def __init__(self, hits: list) -> None:
        self.hits = hits
        self._old: dict = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, lambda signum, _frame: self.hits.append(signum))
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
