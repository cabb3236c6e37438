"""One provider-batch run: plan, submit exactly once, poll, collect, and settle every record.

Each step that the provider bills or remembers (upload, create) is announced
in the journal before the call and confirmed after it; an intent with no
confirmation is reconciled by asking the provider (``find_file`` /
``find_batch``) before anything is sent again, and so is a call whose answer
was lost in transit. Results are appended to the same output and errors
files as the online path; a record already there is never written again, so
a crash while writing costs only a second download. Every record of a chunk
ends in the output, the errors file, a resubmitted chunk (once, for records
an expired or cancelled batch never ran) or the online path (``--deadline``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..engine.checkpoint import Result, ResultStore
from ..engine.core import Engine, EngineSettings
from ..exceptions import ConfigError, RequestError
from .base import BatchProvider, BatchStatus
from .chunks import plan, resubmission
from .journal import ChunkState, Journal, crashpoint

log = structlog.get_logger(__name__)

WRITE_BLOCK = 256


@dataclass
class RunOptions:
    """How a provider-batch run behaves (from the command line, or a caller)."""

    input: str
    output: str
    errors: str | None = None
    model: str | None = None
    skip_invalid: bool = False
    max_requests: int | None = None
    max_bytes: int | None = None
    poll_interval_s: float = 10.0
    poll_max_s: float = 300.0
    reconcile_grace_s: float = 5.0
    max_attempts: int = 5
    deadline_s: float | None = None
    online_reserve_s: float = 600.0
    cancel: bool = False


def journal_paths(output: str | Path) -> tuple[Path, Path]:
    """The journal beside the output and the folder of chunk files."""
    output = Path(output)
    return output.with_name(output.stem + ".batches.jsonl"), output.with_name(output.stem + ".batches.d")


class ProviderBatchRun:
    """Drives one run's chunks through a provider until every record is settled."""

    def __init__(self, options: RunOptions, provider: BatchProvider, online: EngineSettings | None) -> None:
        self.opt = options
        self.provider = provider
        self.online_settings = online
        self.store = ResultStore(options.output, options.errors)
        self.journal = Journal(*journal_paths(options.output))
        self.written: set[int] = set()  # hashes of the custom_ids written by this process
        self.counts: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()
        self.live: dict[str, BatchStatus] = {}
        self.switched = False
        self.started = time.monotonic()

    @property
    def chunks(self) -> list[ChunkState]:
        """Every chunk of the run, in plan order."""
        return list(self.journal.state.chunks.values())

    # -- the run -------------------------------------------------------------------------

    def prepare(self, run_id: str) -> str:
        """Open files and journal; plan the run unless a planned one is there. Returns the run id."""
        self.store.open()
        state = self.journal.open()
        if not state.planned:
            if self.opt.cancel:
                raise ConfigError(f"no provider-batch run to cancel beside {self.opt.output}")
            limits = self.provider.limits
            limits = type(limits)(self.opt.max_requests or limits.max_requests, self.opt.max_bytes or limits.max_bytes)
            reader = plan(self.opt.input, self.store, self.journal, type(self.provider), limits, run_id,
                          self.opt.model, self.opt.skip_invalid)
            self.counts["invalid_skipped"] = reader.invalid
        elif state.input_bytes != os.path.getsize(self.opt.input):
            raise ConfigError(f"{self.journal.path} belongs to a run planned from a different input "
                              f"({state.input_bytes:,} bytes); choose another output, or remove it to start over")
        elif state.provider != self.provider.name:
            raise ConfigError(f"{self.journal.path} belongs to a {state.provider} run; rerun it with --provider {state.provider}")
        else:
            log.info("resuming provider-batch run", run=state.run_id, chunks=len(state.chunks))
        self.counts["already_done"] = self.store.resumed_ok + self.store.resumed_failed
        self.provider.run_id = self.journal.state.run_id
        return self.journal.state.run_id

    async def execute(self) -> None:
        """Submit, poll and collect until every chunk is settled; then the online rest."""
        if self.opt.cancel:
            await self.stop_batches("user")
        interval = self.opt.poll_interval_s
        while pending := [c for c in self.chunks if not c.settled]:
            if self._deadline_near() and not self.switched:
                await self.stop_batches("deadline")
            for c in pending:
                if not c.submitted and c.cancel_reason is None:
                    await self.submit(c)
                    interval = self.opt.poll_interval_s
            for c in pending:
                await self._advance(c)
            if any(not c.settled for c in self.chunks):
                await asyncio.sleep(min(interval, self._until_switch()))
                interval = min(self.opt.poll_max_s, interval * 1.5)
        self.store.close()
        await self._online()

    async def _advance(self, c: ChunkState) -> None:
        if c.settled:
            return
        if c.submitted:
            status = await self.provider.retrieve(c.batch_id)
            crashpoint("poll")
            self.live[c.chunk.key] = status
            if status.status != c.status:
                self.journal.write("status", key=c.chunk.key, status=status.status)
            if status.terminal:
                await self.collect(c, status)
        elif c.cancel_reason is not None:
            self._settle_unsent(c)

    # -- submitting exactly once ------------------------------------------------------------

    async def submit(self, c: ChunkState) -> None:
        """Upload (where the provider takes files) and create the chunk's batch, adopting what exists."""
        key = c.chunk.key
        try:
            if self.provider.uploads and c.file_id is None:
                file_id = await self.provider.find_file(c.chunk) if c.upload_at is not None else None
                if file_id is None:
                    file_id, _ = await self._once(c, "upload")
                self.journal.write("uploaded", key=key, file_id=file_id)
            if c.batch_id is None:
                batch_id = await self._find_batch(c) if c.create_at is not None else None
                adopted = batch_id is not None
                if batch_id is None:
                    batch_id, adopted = await self._once(c, "create")
                self.journal.write("created", key=key, batch_id=batch_id, adopted=adopted)
                log.info("batch submitted", chunk=key, batch=batch_id, records=c.chunk.count, adopted=adopted)
        except RequestError as exc:
            if exc.retryable or exc.code == "authentication_error":
                raise
            self._fail_records(c, [line for line in c.chunk.lines() if not self._done(line.custom_id)],
                               {"code": "batch_rejected", "message": exc.message[:500]})
            self.journal.write("settled", key=key, outcome="errors")

    async def _find_batch(self, c: ChunkState) -> str | None:
        taken = self.journal.state.taken() | c.rejected
        return await self.provider.find_batch(c.chunk, c.create_at or 0.0, taken)

    async def _once(self, c: ChunkState, step: str) -> tuple[str, bool]:
        """Make an upload or create call; if its answer is lost, look before calling again.

        Returns the id and whether it was found (adopted) rather than answered."""
        last: RequestError | None = None
        for attempt in range(self.opt.max_attempts):
            self.journal.write(f"{step}_intent", key=c.chunk.key, sha256=c.chunk.sha256)
            crashpoint(step)
            try:
                value = await (self.provider.upload(c.chunk) if step == "upload" else self.provider.create(c.chunk, c.file_id))
            except RequestError as exc:
                if not exc.retryable:
                    raise
                last = exc
                log.warning("no answer to a call; looking for what it made", step=step, chunk=c.chunk.key,
                            error=exc.message[:200])
                await asyncio.sleep(self.opt.reconcile_grace_s * (attempt + 1))
                found = await (self.provider.find_file(c.chunk) if step == "upload" else self._find_batch(c))
                if found:
                    return found, True
                continue
            crashpoint("uploaded" if step == "upload" else "created")
            return value, False
        raise last

    # -- collecting ---------------------------------------------------------------------------

    async def collect(self, c: ChunkState, status: BatchStatus) -> None:
        """Write an ended batch's records and decide the fate of those it never ran."""
        crashpoint("download")
        if status.status != "failed":
            for attempt in range(self.opt.max_attempts):
                try:
                    if not await self._download(c, status):
                        return  # a foreign batch: the chunk goes back to submission
                    break
                except RequestError as exc:  # a broken download: what was written stays, the rest comes again
                    if not exc.retryable or attempt + 1 == self.opt.max_attempts:
                        raise
                    log.warning("download failed; downloading again", batch=status.id, error=exc.message[:200])
                    await asyncio.sleep(min(30.0, 2.0 ** attempt))
        leftover = [line for line in c.chunk.lines() if not self._done(line.custom_id)]
        self.journal.write("settled", key=c.chunk.key, outcome=self._fate(c, status, leftover))

    async def _download(self, c: ChunkState, status: BatchStatus) -> bool:
        """Append the batch's new results; False when they show the batch is not this chunk's."""
        block: list[Result] = []
        async for custom_id, result, why in self.provider.results(status, c.chunk):
            if why == "foreign":
                log.warning("adopted batch is not this run's; looking again", batch=c.batch_id)
                self.journal.write("rejected", key=c.chunk.key, batch_id=c.batch_id)
                return False
            if result is None or self._done(custom_id):
                continue
            block.append(result)
            if len(block) >= WRITE_BLOCK:
                self._write(block)
                block = []
        self._write(block)
        return True

    def _fate(self, c: ChunkState, status: BatchStatus, leftover: list) -> str:
        if not leftover:
            return "done"
        if c.cancel_reason == "deadline" or (self.switched and status.status in ("expired", "cancelled")):
            return "online"
        if status.status in ("expired", "cancelled") and c.cancel_reason is None and c.chunk.attempt == 0:
            resubmission(self.journal, c.chunk, leftover, self.journal.state.run_id)
            self.counts["resubmitted"] += len(leftover)
            return "resubmitted"
        code = {"completed": "missing_from_results"}.get(status.status, f"batch_{status.status}")
        message = status.detail or f"the provider's batch {status.id} ended {status.status} before running this record"
        self._fail_records(c, leftover, {"code": code, "message": message})
        return "errors"

    def _done(self, custom_id: str) -> bool:
        return hash(custom_id) in self.written or self.store.done(custom_id)

    def _write(self, block: list[Result]) -> None:
        if not block:
            return
        crashpoint("write")
        ok = [self.store.encode(r) for r in block if r.ok]
        bad = [self.store.encode(r) for r in block if not r.ok]
        self.store.append(ok, bad)
        for result in block:
            self.written.add(hash(result.custom_id))
            usage = (result.body or {}).get("usage") or {}
            self.tokens["prompt"] += usage.get("prompt_tokens") or 0
            self.tokens["completion"] += usage.get("completion_tokens") or 0
        self.counts["batch_ok"] += len(ok)
        self.counts["batch_failed"] += len(bad)

    def _fail_records(self, c: ChunkState, lines: list, error: dict) -> None:
        results = [Result(line.custom_id, False, error=dict(error), attempts=0) for line in lines]
        for start in range(0, len(results), WRITE_BLOCK):
            self._write(results[start : start + WRITE_BLOCK])

    # -- cancelling and the deadline ---------------------------------------------------------

    async def stop_batches(self, reason: str) -> None:
        """Cancel every unsettled batch (``user``: ``--cancel``; ``deadline``: the rest goes online)."""
        self.switched = self.switched or reason == "deadline"
        log.warning("cancelling the run's batches", reason=reason)
        for c in self.chunks:
            if c.settled or c.cancel_reason is not None:
                continue
            if c.batch_id is None and c.create_at is not None:
                found = await self._find_batch(c)  # a create whose answer never came: it may exist
                if found:
                    self.journal.write("created", key=c.chunk.key, batch_id=found, adopted=True)
            if c.batch_id is not None:
                await self.provider.cancel(c.batch_id)
            self.journal.write("cancel", key=c.chunk.key, reason=reason)

    def _settle_unsent(self, c: ChunkState) -> None:
        if c.cancel_reason == "deadline":
            self.journal.write("settled", key=c.chunk.key, outcome="online")
            return
        leftover = [line for line in c.chunk.lines() if not self._done(line.custom_id)]
        self._fail_records(c, leftover, {"code": "cancelled", "message": "cancelled before the batch was created"})
        self.journal.write("settled", key=c.chunk.key, outcome="errors")

    def _switch_at(self) -> float | None:
        if self.opt.deadline_s is None:
            return None
        reserve = min(self.opt.online_reserve_s, self.opt.deadline_s / 2)
        return self.journal.state.started_at + self.opt.deadline_s - reserve

    def _deadline_near(self) -> bool:
        switch_at = self._switch_at()
        return switch_at is not None and time.time() >= switch_at

    def _until_switch(self) -> float:
        switch_at = self._switch_at()
        if switch_at is None or self.switched:
            return float("inf")
        return max(0.0, switch_at - time.time())

    async def _online(self) -> None:
        """Send the records of chunks settled ``online`` through the engine (it skips what is written)."""
        chunks = [c for c in self.chunks if c.outcome == "online"]
        if not chunks:
            return
        if self.online_settings is None:
            raise RuntimeError("a deadline run needs online settings")
        engine = Engine(self.online_settings, self.store.output, self.store.errors, keep_bodies=False)
        async with engine:
            for c in chunks:
                for line in c.chunk.lines():
                    if engine.stopping:
                        break
                    await engine.submit(line.custom_id, line.body, line.url)
        self.counts["online_ok"] += engine.stats.succeeded
        self.counts["online_failed"] += engine.stats.failed
        self.tokens["prompt"] += engine.stats.prompt_tokens
        self.tokens["completion"] += engine.stats.completion_tokens

    # -- what the progress line and the summary read ----------------------------------------

    def snapshot(self) -> dict:
        """Batches by phase and records done, from the provider's counts."""
        phases = Counter()
        records_total = records_done = 0
        for c in self.chunks:
            status = self.live.get(c.chunk.key)
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
                "elapsed": time.monotonic() - self.started}

    def summary(self) -> dict:
        """Counts, tokens, and every batch with its id, state and outcome."""
        batches = [{"chunk": c.chunk.key, "batch_id": c.batch_id, "status": c.status, "records": c.chunk.count,
                    "outcome": c.outcome, "adopted": c.adopted} for c in self.chunks]
        return {"mode": "provider-batch", "provider": self.provider.name, "run_id": self.journal.state.run_id,
                "records": dict(self.counts), "tokens": dict(self.tokens), "batches": batches,
                "errors_file_lines": _line_count(self.store.errors),
                "wall_time_s": round(time.monotonic() - self.started, 2),
                "output": str(self.store.output), "errors": str(self.store.errors)}

    def close(self) -> None:
        """Close the files (idempotent)."""
        self.store.close()
        self.journal.close()


def _line_count(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def new_run_id() -> str:
    """A short random run id (12 hex digits)."""
    return os.urandom(6).hex()
