"""The library runner behind ``odie batch``: a Batch API input through an endpoint, resumably.

``run_engine_batch`` takes plain parameters (an input path or an iterable of records,
an output path, an ``EngineSettings``) and returns a ``BatchReport`` whose
``exit_code`` follows the project's convention:

    0   every record succeeded
    1   finished; some records are in the errors file (or were skipped as invalid)
    2   usage or input error, found before anything was sent
    3   stopped by the endpoint (down, key refused, quota: a Retry-After beyond the cap)
    4   stopped by a local error (a result file cannot be written, an internal error)
    130 / 143  interrupted by SIGINT / SIGTERM (rerunning the same command resumes)

Rerunning resumes: records already in the output or errors file are skipped
(unless their request changed: then the run stops before sending, or with
``resend_changed`` sends them again and compacts the old lines away at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import orjson
import structlog

from .batchfile import BatchReader, RecordReader
from .prometheus import MetricsServer
from .checkpoint import ResultStore, request_digest
from .core import Engine, EngineSettings
from .metrics_log import MetricsLog, metrics_path_for
from ..exceptions import (EXIT_ENDPOINT, EXIT_FAILED_RECORDS, EXIT_LOCAL, ConfigError, InputError, RunAborted, exit_code,
                          signal_exit_code)
from .progress import ProgressLine, write_summary
from .stats import RunStats
from .. import __version__
from ..option_types import input_file
from ..runtime import StopSignals

log = structlog.get_logger(__name__)



def exit_code_for(error: BaseException | None) -> int:
    """The exit code an exception ends a run with (the project's one map, ``exceptions.exit_code``)."""
    return exit_code(error)


@dataclass
class BatchReport:
    """How a run ended: its summary, ledger, exit code and, if it stopped early, why."""

    summary: dict
    exit_code: int
    error: BaseException | None = None
    signal: str | None = None
    ledger: dict = field(default_factory=dict)

    @property
    def resumable(self) -> bool:
        """Whether rerunning the same command would send what is left."""
        return self.exit_code in (EXIT_ENDPOINT, EXIT_LOCAL, 130, 143) and self.ledger.get("unfinished", 0) > 0 \
            or self.signal is not None


class _Stop:
    """What SIGINT/SIGTERM do: the first stops intake and drains, the second cancels at once."""

    def __init__(self) -> None:
        self.flag = threading.Event()  # read by the scans that run in threads
        self.signum: int | None = None
        self.engine: Engine | None = None
        self.hits = 0

    def __call__(self, signum: int) -> None:
        self.hits += 1
        self.signum = self.signum or signum
        self.flag.set()
        if self.engine is not None:
            self.engine.request_stop() if self.hits == 1 else self.engine.cancel_in_flight()

    @contextlib.contextmanager
    def installed(self, enabled: bool):
        with StopSignals(self, self) if enabled else contextlib.nullcontext():  # the one signal handler
            yield self


Select = Callable[[str], bool]  # which custom_ids a run takes (a shard's); None: all


@dataclass
class InputScan:
    """What a pass over the input found before anything is sent."""

    records: int = 0  # valid records this run takes
    lines: int = 0  # valid records in the file
    invalid: int = 0
    done: int = 0  # records this run takes that have a line already
    changed: list[str] = field(default_factory=list)
    first_changed: str = ""
    stopped: bool = False
    models: set = field(default_factory=set)  # the models the records this run takes ask for


def scan_input(path: str, store: ResultStore, model: str | None, skip_invalid: bool,
               stop: threading.Event | None = None, select: Select | None = None) -> InputScan:
    """Validate every line and find done records whose request changed (blocking: run it in a thread)."""
    scan = InputScan()
    reader = BatchReader(path, skip_invalid=skip_invalid, stop=stop)
    resuming = bool(store.resumed_ok or store.resumed_failed)
    for line in reader:
        scan.lines += 1
        if select is not None and not select(line.custom_id):
            continue
        scan.records += 1
        scan.models.add(model or line.body.get("model"))
        if resuming and store.done(line.custom_id):
            scan.done += 1
            if model:
                line.body["model"] = model
            digest = request_digest(line.url, orjson.dumps(line.body))  # as the engine encodes it
            if store.changed(line.custom_id, digest):
                scan.changed.append(line.custom_id)
                scan.first_changed = scan.first_changed or f"{line.custom_id!r} on {path}:{line.line_no}"
    scan.invalid, scan.stopped = reader.invalid, reader.stopped
    return scan


def check_scan(scan: InputScan, input, resend_changed: bool) -> None:
    """Refuse an empty input, and changed requests unless they are to be sent again."""
    if not scan.lines and not scan.invalid:
        raise ConfigError(f"{input} holds no records")
    if scan.changed and not resend_changed:
        raise ConfigError(
            f"{len(scan.changed)} record(s) already answered were asked differently this time (the body or "
            f"--model changed), first {scan.first_changed}; rerun with --resend-changed to send them again, "
            "or restore the old input")
    if scan.changed:
        log.warning("re-sending changed records", count=len(scan.changed), first=scan.first_changed)


async def run_engine_batch(
    input: str | Path | Iterable[dict],
    output: str | Path,
    settings: EngineSettings,
    errors: str | Path | None = None,
    *,
    model: str | None = None,
    skip_invalid: bool = False,
    retry_failed: bool = False,
    resend_changed: bool = False,
    progress: bool = True,
    log_json: bool = False,
    handle_signals: bool = True,
    engine: Engine | None = None,
    select: Select | None = None,
) -> BatchReport:
    """Stream the input through the engine into ``output``; return how it ended (a ``BatchReport``).

    The public ``odie_async.run_batch``/``arun_batch`` pair runs on this and returns the summary
    (or the result lines) instead.

    Unusable settings (a key that cannot be sent) raise ``ConfigError`` at once;
    every outcome of the run itself, errors included, is in the report.
    ``select`` keeps only the records whose ``custom_id`` it accepts (a shard's).
    """
    stop = _Stop()
    stats = RunStats()
    engine = engine or Engine(settings, output, errors, keep_bodies=False, retry_failed=retry_failed, stats=stats)
    stats = engine.stats
    error: BaseException | None = None
    scan = InputScan()
    with stop.installed(handle_signals):
        try:
            engine.store.check_paths(*([input] if isinstance(input, (str, Path)) else []))
            if isinstance(input, (str, Path)):
                input_file(input)  # missing, a folder, unreadable: each said apart (exit 2)
            # the lock is taken before the input is read; a thread, so that a signal stops a long scan
            await asyncio.to_thread(engine.store.open, retry_failed, stop.flag)
            scan = await _prepare(input, engine, model, skip_invalid, resend_changed, stop, select)
            stats.total = scan.records + scan.invalid if isinstance(input, (str, Path)) else None
            if not stop.flag.is_set():
                await _run(engine, input, model, skip_invalid, scan, stop, progress, log_json, select)
        except Exception as exc:  # every outcome goes into the report
            error = exc
        finally:
            if engine.store.is_open and engine.shutdown_report is None:
                engine.store.close()  # stopped before the engine started
    return _report(engine, stats, scan, error, stop, output)


async def _prepare(input, engine: Engine, model, skip_invalid: bool, resend_changed: bool, stop: _Stop,
                   select: Select | None) -> InputScan:
    if stop.flag.is_set():
        return InputScan(stopped=True)
    if not isinstance(input, (str, Path)):
        return InputScan()
    scan = await asyncio.to_thread(scan_input, str(input), engine.store, model, skip_invalid, stop.flag, select)
    if scan.stopped or stop.flag.is_set():
        scan.stopped = True
        return scan
    check_scan(scan, input, resend_changed)
    if engine.spend is not None:
        engine.spend.require_prices(scan.models)  # before anything is sent: never a silent zero
    return scan


async def _run(engine: Engine, input, model, skip_invalid, scan: InputScan, stop: _Stop, progress: bool,
               log_json: bool, select: Select | None = None) -> None:
    ids = engine.store.share_ids(scan.lines)  # one table: the reader's duplicate check and the done ids
    reader = BatchReader(input, skip_invalid, ids=ids) if isinstance(input, (str, Path)) \
        else RecordReader(input, skip_invalid, ids=ids)
    resend = set(scan.changed)
    engine.store.resend(resend)
    engine.stats.restart_clock()  # rates count from the first request; the scan is timed apart
    line_progress = ProgressLine(engine.stats, json=log_json) if progress else contextlib.nullcontext()
    port = engine.settings.metrics_port
    exporter = MetricsServer(engine, port) if port is not None else contextlib.nullcontext()
    with exporter:
        await _serve(engine, reader, model, resend, stop, line_progress, select)


async def _serve(engine: Engine, reader, model, resend: set[str], stop: _Stop, line_progress,
                 select: Select | None) -> None:
    async with line_progress:
        try:
            async with MetricsLog(engine, metrics_path_for(engine.store.output)), engine:
                stop.engine = engine
                if stop.hits:
                    engine.request_stop()
                await _produce(engine, reader, model, resend, select)
        finally:
            engine.stats.invalid = reader.invalid


async def _produce(engine: Engine, reader, model: str | None, resend: set[str], select: Select | None) -> None:
    try:
        for count, line in enumerate(reader):
            if engine.stopping:
                return
            if select is not None and not select(line.custom_id):
                continue
            if model:
                line.body["model"] = model
            if line.body.get("model"):
                engine.stats.models.add(str(line.body["model"]))
            await engine.submit(line.custom_id, line.body, line.url, resend=line.custom_id in resend)
            if not count & 255:
                await asyncio.sleep(0)  # let signals in, even when every record is skipped as done
    except InputError:
        await engine.join()  # found mid-stream (an iterable input): the records before it are finished
        raise
    except RunAborted:
        if engine.aborted is not None:
            raise engine.aborted from None
        if not engine.stopping:
            raise


def _report(engine: Engine, stats: RunStats, scan: InputScan, error, stop: _Stop, output) -> BatchReport:
    error = engine.aborted or error
    read = stats.resumed + engine.submitted
    ledger = engine.ledger() | {"read": read, "already_done": stats.resumed,
                                "invalid_skipped": stats.invalid or scan.invalid,
                                "not_read": max(0, scan.records - read)}
    signame = signal.Signals(stop.signum).name if stop.signum else None
    if signame and not ledger["unfinished"] and not ledger["not_read"] and scan.records and not scan.stopped:
        signame = None  # the signal came as the run finished: nothing is left to do
    if error is None and (ledger["unfinished"] or ledger["not_read"]):
        error = engine.cap_error()  # the spending cap stopped intake
    if error is None and not signame and ledger["unfinished"]:
        error = RunAborted(f"internal error: {ledger['unfinished']} record(s) have no line in the output or "
                           "errors file; rerun to send them")
    code = exit_code_for(error)
    if error is None:
        if signame:
            code = signal_exit_code(stop.signum)
        elif ledger["errors"] or ledger["invalid_skipped"] or _failed_before(engine):
            code = EXIT_FAILED_RECORDS
    summary = stats.as_dict() | {"shutdown": _shutdown(engine, ledger)}
    summary.update(engine.pool_report())
    summary.update(models=sorted(stats.models), settings=_run_settings(engine.settings), version=__version__)
    if engine.cache is not None:
        summary["cache"] = {"path": str(engine.cache.folder), "hits": stats.cache_hits,
                            "stored": engine.cache.stored, "saved_usd": round(stats.cache_saved_usd, 6),
                            "hits_without_a_price": stats.cache_saved_unpriced}
    spend = engine.spend if engine.spend is not None else stats.meter
    report = spend.report(stats.succeeded, max(0, scan.records - stats.resumed) or None) if spend else None
    if report is not None:
        summary["spend"] = report
    summary.update(output=str(engine.store.output), errors=str(engine.store.errors), ledger=ledger,
                   exit_code=code, stopped_by=signame or (type(error).__name__ if error else None))
    if error is not None:
        summary["error"] = str(error)
    if engine.store.was_opened:  # not for a run refused before it began (the output may be a folder)
        path = Path(output).with_suffix(".summary.json")
        summary["runs"] = _history(path, resumed=bool(stats.resumed or engine.skipped_failed)) + [
            {k: v for k, v in summary.items() if k != "runs"}]
        with contextlib.suppress(OSError):
            write_summary(summary, path)
    return BatchReport(summary, code, error, signame, ledger)


def _shutdown(engine: Engine, ledger: dict) -> dict | None:
    """The stop's counts, with the records never read from the input among those not started."""
    if not engine.interrupted or engine.shutdown_report is None:
        return None
    report = dict(engine.shutdown_report)
    report["not_started"] = report.get("not_started", 0) + ledger["not_read"]
    return report


def _run_settings(settings: EngineSettings) -> dict:
    """The settings that shaped a run's pace, for its summary (no key)."""
    return {"concurrency": settings.concurrency, "initial_concurrency": settings.initial_concurrency,
            "adaptive": settings.adaptive, "rpm": settings.rpm, "tpm": settings.tpm,
            "timeout_s": settings.timeout_s, "max_attempts": settings.max_attempts,
            "base_url": settings.base_url}


def _history(path: Path, resumed: bool) -> list[dict]:
    """The runs recorded in an earlier summary at ``path`` when this run resumed that output, else none."""
    if not resumed:
        return []
    try:
        earlier = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return []
    if not isinstance(earlier, dict):
        return []
    runs = earlier.get("runs")
    return list(runs) if isinstance(runs, list) else [earlier]  # a summary written before runs were kept


def _failed_before(engine: Engine) -> bool:
    return engine.skipped_failed > 0
