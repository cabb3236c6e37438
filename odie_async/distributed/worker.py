"""The shard worker: one engine on one shard of the input, run inside a Ray actor.

The class is plain Python; the driver makes it a Ray actor with
``ray.remote(ShardWorker).options(...)``. ``run`` runs the engine on a thread
of its own with its own event loop (uvloop) and waits for it, so ``stats`` and
``stop`` are served by the actor's other threads meanwhile. Every worker reads the input file itself (a path
every node reaches) and keeps the records of its shard, so no record travels
through Ray's object store. It runs the engine through ``run_engine_batch``, the same
producer as a one-machine run: the records the run's output holds are done
(the shard's store reads it), and a record whose request changed is refused or,
with ``--resend-changed``, sent again.

A worker never writes without its shard's lock (its store's), and stops when
the driver goes silent: it polls the budget actor, which the driver beats every
half second and which dies with the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import threading
from dataclasses import dataclass

import structlog

from ..engine.batch import run_engine_batch
from ..engine.checkpoint import ResultStore
from ..engine.core import Engine, EngineSettings
from ..engine.stats import LogHistogram
from ..exceptions import RunAborted
from ..logs import configure_logging
from ..runtime import run_async
from .budget import LeasedLimits
from .shards import InShard, RunLayout

log = structlog.get_logger(__name__)

STATUS_INTERVAL_S = 1.0
DRIVER_SILENCE_S = 10.0


@dataclass
class ShardJob:
    """What one worker runs: everything is plain data, sent once when the run starts."""

    index: int
    shards: int
    input: str
    output: str
    errors: str | None
    settings: EngineSettings
    model: str | None = None
    log_json: bool = False
    resend_changed: bool = False


class ShardRun:
    """One run of the engine on one shard, on its own event loop; the async half of a worker."""

    def __init__(self, job: ShardJob, budget, stop_requested: bool | None = None) -> None:
        self.job = job
        self.budget = budget
        self.stop_requested = stop_requested  # None: no stop asked; else whether to cancel in flight
        self.layout = RunLayout(job.output, job.errors)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.engine: Engine | None = None
        self.limits: LeasedLimits | None = None

    async def run(self) -> dict:
        """Send the shard's records; return the engine's summary with the shard's ledger and exit code."""
        job, settings, layout = self.job, self.job.settings, self.layout
        self.loop = asyncio.get_running_loop()
        self.limits = LeasedLimits(self.budget.lease.remote, self.budget.pause.remote, job.index,
                                   settings.rpm, settings.tpm, job.shards)
        output, errors = layout.shard_output(job.index), layout.shard_errors(job.index)
        store = ResultStore(output, errors, base=(layout.output, layout.errors))
        engine = Engine(settings, store=store, keep_bodies=False, limits=self.limits)
        self.engine = engine
        if self.stop_requested is not None:  # asked before the engine existed
            self._apply_stop()
        watchdog = asyncio.create_task(self._watch_driver())
        try:
            report = await run_engine_batch(job.input, output, settings, errors, model=job.model, skip_invalid=True,
                                     resend_changed=job.resend_changed, progress=False, handle_signals=False,
                                     engine=engine, select=InShard(job.index, job.shards))
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        return self._summary(report)

    async def _watch_driver(self) -> None:
        """Stop (cancelling in-flight requests) once the driver is gone or silent."""
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            try:
                status = await self.budget.status.remote(self.job.index)
            except Exception as exc:  # the budget actor died with its driver
                reason = f"the driver is gone ({type(exc).__name__})"
            else:
                self.limits.apply_cluster_pause(status["pause_s"])
                if status["driver_silent_s"] < DRIVER_SILENCE_S:
                    continue
                reason = f"the driver has been silent for {status['driver_silent_s']:.0f} s"
            log.error("stopping: " + reason)
            self.engine.cancel_in_flight()
            return

    def _summary(self, report) -> dict:
        engine = self.engine
        summary = engine.stats.as_dict()
        summary["lease_calls"] = self.limits.lease_calls
        summary["latencies"] = engine.stats.latencies.tobytes()
        summary["shutdown"] = engine.shutdown_report if engine.interrupted else None
        summary["ledger"], summary["exit_code"] = report.ledger, report.exit_code
        if report.error is not None and not engine.interrupted:
            summary["error"] = {"type": type(report.error).__name__, "message": str(report.error),
                                "aborted": isinstance(report.error, RunAborted), "exit_code": report.exit_code}
        return summary

    def stop(self, cancel: bool) -> None:
        """Stop intake (``cancel``: and in-flight requests); safe from any thread."""
        self.stop_requested = cancel or bool(self.stop_requested)
        if self.loop is not None and self.engine is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the run is over
                self.loop.call_soon_threadsafe(self._apply_stop)

    def _apply_stop(self) -> None:
        if self.stop_requested:
            self.engine.cancel_in_flight()
        else:
            self.engine.request_stop()


class ShardWorker:
    """The Ray actor: runs a ``ShardRun``; answers ``stats`` and ``stop`` while it runs.

    Only plain methods here: Ray makes a class with any ``async def`` an async
    actor, whose one event loop ``run`` would block.
    """

    def __init__(self, budget_name: str, namespace: str = "odie") -> None:
        self._budget_name, self._namespace = budget_name, namespace
        self._current: ShardRun | None = None
        self._stop_requested: bool | None = None  # None: no stop; else whether to cancel

    def ping(self) -> int:
        """The worker's process id (the actor is up)."""
        return os.getpid()

    def run(self, job: ShardJob) -> dict:
        """Run shard ``job.index`` to its end (or a stop); return its summary."""
        configure_logging(json=job.log_json, level="warning")
        structlog.contextvars.bind_contextvars(shard=job.index)
        current = ShardRun(job, _actor(self._budget_name, self._namespace), self._stop_requested)
        self._current = current
        cpu0 = _cpu_seconds()
        summary = _in_own_thread(lambda: run_async(current.run()))
        summary["cpu_s"] = round(_cpu_seconds() - cpu0, 3)
        summary["pid"], summary["node"] = os.getpid(), os.uname().nodename
        return summary

    def stats(self) -> dict:
        """Live counters of the running shard (read from another thread; plain ints)."""
        engine = self._current.engine if self._current else None
        if engine is None:
            return {}
        s = engine.stats
        return {"succeeded": s.succeeded, "failed": s.failed, "resumed": s.resumed, "retries": s.retries,
                "rate_limited": s.rate_limited, "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens, "attempts": s.attempts}

    def stop(self, cancel: bool = False) -> None:
        """Stop intake and drain (``cancel``: also cancel in-flight requests)."""
        self._stop_requested = cancel or bool(self._stop_requested)
        if self._current is not None:
            self._current.stop(self._stop_requested)


def _actor(name: str, namespace: str):
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        raise RunAborted(f"the run's budget actor {name} is gone: the driver stopped") from None


def _in_own_thread(fn):
    """``fn()`` on a fresh thread: Ray's method threads may already run an event loop."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="odie-shard")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def merge_latencies(parts: list[bytes]) -> LogHistogram:
    """The workers' latency histograms (seconds, as sent in their summaries), together."""
    return LogHistogram.merged(LogHistogram.frombytes(part) for part in parts)

