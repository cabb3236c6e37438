"""One provider-batch run: reconcile, plan, submit exactly once, poll, collect, and settle every record.

The output and errors files are the truth; the journal is a memory of what
was asked of the provider. Every start reads the input against the output
(``chunks.scan_input``: what still needs an answer, and which answered
records were asked differently, refused unless ``--resend-changed``, as
online) and checks each journaled chunk against both: a settled chunk whose
records are missing from the output is collected again from the provider's
stored results (or, where they are gone, sent again, once), a chunk whose
records changed or left the input is retired and its batch cancelled, never
abandoned, and records no chunk covers are planned into new chunks.

Each step that the provider bills or remembers (upload, create) is announced
in the journal before the call and confirmed after it; before any upload or
create the provider's files and batches are searched for the same content
(``find_file`` / ``find_batch``), so a lost answer, a journal cut short or
deleted, or a re-planned chunk of unchanged records costs nothing. Every
result goes through ``_accept``: only an id the chunk asked for and the run
still wants, once, into one file, with its request digest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..engine.checkpoint import Result, ResultStore
from ..engine.core import Engine, EngineSettings
from ..engine.settings import DEFAULTS
from ..engine.spend import SpendCap
from ..exceptions import ConfigError, RequestError, SpendCapReached
from .base import BatchProvider, BatchStatus
from .chunks import line_digest, plan, resubmission, scan_input
from .journal import ChunkState, Journal, crashpoint
from .batch_spend import ChunkSpend

log = structlog.get_logger(__name__)

WRITE_BLOCK = 256
UNKNOWN_POLLS = 10  # polls of a state neither API defines before the batch is cancelled and its records fail
MAX_ATTEMPT = 2  # a chunk's records are sent again at most this many times (expired, results gone)


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
    max_attempts: int = DEFAULTS["batch"]["max_attempts"]
    deadline_s: float | None = None
    online_reserve_s: float = 600.0
    cancel: bool = False
    resend_changed: bool = False


def journal_paths(output: str | Path) -> tuple[Path, Path]:
    """The journal beside the output and the folder of chunk files."""
    output = Path(output)
    return output.with_name(output.stem + ".batches.jsonl"), output.with_name(output.stem + ".batches.d")


class ProviderBatchRun:
    """Drives one run's chunks through a provider until every record is settled."""

    def __init__(self, options: RunOptions, provider: BatchProvider, online: EngineSettings | None,
                 spend: SpendCap | None = None) -> None:
        self.opt = options
        capping = spend is not None and spend.cap is not None
        self.spend = ChunkSpend(spend) if capping else None  # at batch prices
        self.meter = spend if not capping else None  # without a cap: SpendCap.meter, counting only
        self.planned = 0  # records this run set out to answer (the projection's total)
        self.provider = provider
        self.online_settings = online
        self.store = ResultStore(options.output, options.errors)
        self.journal = Journal(*journal_paths(options.output))
        self.wanted: dict[str, str] = {}  # custom_id -> request digest, of every record not written yet
        self.asked: dict[str, dict[str, str]] = {}  # chunk key -> the digests of the requests its file holds
        self.counts: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()
        self.live: dict[str, BatchStatus] = {}
        self.unknown: Counter[str] = Counter()
        self.switched = False
        self.started = time.monotonic()

    @property
    def chunks(self) -> list[ChunkState]:
        """Every chunk of the run, in plan order."""
        return list(self.journal.state.chunks.values())

    # -- the start: the output against the journal, the input against both ------------------

    def prepare(self, run_id: str) -> str:
        """Open files and journal, reconcile them with the input, plan what no chunk covers. Returns the run id."""
        self.store.open()
        state = self.journal.open()
        if state.provider not in (None, self.provider.name):
            raise ConfigError(f"{self.journal.path} belongs to a {state.provider} run; rerun it with --provider {state.provider}")
        if self.opt.cancel and not state.chunks:
            raise ConfigError(f"no provider-batch run to cancel beside {self.opt.output}")
        if state.run_id is None:
            self.journal.write("run", run_id=run_id, provider=self.provider.name)
        self.provider.run_id = self.journal.state.run_id
        limits = self.provider.limits
        limits = type(limits)(self.opt.max_requests or limits.max_requests, self.opt.max_bytes or limits.max_bytes)
        scan = scan_input(self.opt.input, self.store, type(self.provider), limits, self.opt.model, self.opt.skip_invalid)
        self._check_changed(scan.changed, scan.first_changed)
        self.wanted = scan.wanted
        for custom_id, digest in self.wanted.items():
            self.store.expect(custom_id, digest)  # the store writes only these, each once, with its digest
        self.counts["invalid_skipped"] = scan.invalid
        self.counts["already_done"] = self.store.resumed_ok + self.store.resumed_failed - len(scan.changed)
        todo = set(self.wanted) - self._reconcile()
        if todo and not self.opt.cancel:
            made = plan(self.opt.input, self.journal, limits, todo, self.opt.model, self.opt.skip_invalid)
            log.info("planned", records=len(todo), chunks=made)
        self.planned = len(self.wanted)
        if self.spend is not None:
            self._hold_submitted()
        return self.journal.state.run_id

    def _check_changed(self, changed: list[str], first: str) -> None:
        if changed and not self.opt.resend_changed:
            raise ConfigError(
                f"{len(changed)} record(s) already answered were asked differently this time (the body or "
                f"--model changed), first {first}; rerun with --resend-changed to send them again, "
                "or restore the old input")
        if changed:
            log.warning("sending changed records again", count=len(changed), first=first)
            self.store.resend(set(changed))

    def _reconcile(self) -> set[str]:
        """Check each journaled chunk against the input and the output; the wanted records they cover."""
        covered: set[str] = set()
        for c in reversed(self.chunks):  # a resubmitted chunk claims its records before its parent
            if c.dropped or c.outcome == "retired" or c.cancel_reason == "replaced":
                continue
            asked = self._asked(c)
            if asked is None:
                log.warning("a chunk file is missing or altered; its records are planned again", chunk=c.chunk.key)
                self.journal.write("dropped", key=c.chunk.key)
                continue
            mine = {cid for cid, digest in asked.items() if self.wanted.get(cid) == digest} - covered
            if not mine:
                if not c.settled:
                    self.journal.write("cancel", key=c.chunk.key, reason="replaced")
                continue
            covered |= mine
            if c.settled:
                self._reopen(c, mine)
                if c.batch_id is None:
                    covered -= mine
        return covered

    def _reopen(self, c: ChunkState, missing: set[str]) -> None:
        """A settled chunk with records in neither file: collected again, or (never created) sent again."""
        if c.batch_id is not None:
            log.warning("records of a settled batch are missing from the output; collecting them again",
                        chunk=c.chunk.key, batch=c.batch_id, records=len(missing))
            self.counts["collected_again"] += len(missing)
            self.journal.write("reopen", key=c.chunk.key)
        else:
            log.warning("records of a chunk never created are missing from the errors file; sending them again",
                        chunk=c.chunk.key, records=len(missing))
            self.counts["sent_again"] += len(missing)

    def _asked(self, c: ChunkState) -> dict[str, str] | None:
        """custom_id -> request digest of the chunk's file; None when the file is gone or not what was planned."""
        if c.chunk.key not in self.asked:
            try:
                data = c.chunk.path.read_bytes()
            except OSError:
                return None
            if hashlib.sha256(data).hexdigest() != c.chunk.sha256:
                return None
            self.asked[c.chunk.key] = {line.custom_id: line_digest(line) for line in c.chunk.lines()}
        return self.asked[c.chunk.key]

    def _pending(self, c: ChunkState) -> list:
        """The chunk's input lines whose records the run still wants from it."""
        asked = self._asked(c) or {}
        return [line for line in c.chunk.lines() if self.wanted.get(line.custom_id) == asked.get(line.custom_id)]

    # -- the run -------------------------------------------------------------------------

    def _live(self) -> list[ChunkState]:
        return [c for c in self.chunks if not c.settled and not c.dropped and c.cancel_reason != "replaced"]

    def _waiting(self) -> list[ChunkState]:
        """The live chunks the run waits on: once the spending cap is reached, not those never submitted."""
        capped = self.spend is not None and self.spend.cap.capped
        return [c for c in self._live() if not (capped and not c.submitted and c.cancel_reason is None)]

    async def execute(self) -> None:
        """Submit, poll and collect until every chunk is settled; then the online rest."""
        if self.opt.cancel:
            await self.stop_batches("user")
        interval = self.opt.poll_interval_s
        await self._submit_all()
        while pending := self._waiting():
            if self._deadline_near() and not self.switched:
                await self.stop_batches("deadline")
            if await self._submit_all():
                interval = self.opt.poll_interval_s
            for c in pending:
                await self._advance(c)
            if self._waiting():
                await asyncio.sleep(min(interval, self._until_switch()))
                interval = min(self.opt.poll_max_s, interval * 1.5)
        await self._retire()
        self.store.close()
        await self._online()
        self.counts["unfinished"] = len(self.wanted)

    async def _submit_all(self) -> bool:
        """Submit every live chunk not submitted yet, then retire what no chunk wants; whether any was."""
        if self.spend is not None:
            self.spend.release_settled(self.chunks)
        fresh = [c for c in self._live() if not c.submitted and c.cancel_reason is None]
        fresh = [c for c in fresh if self.spend is None or self.spend.admit(c, self._pending(c))]
        for c in fresh:
            await self.submit(c)
        await self._retire()
        return bool(fresh)

    async def _retire(self) -> None:
        """Cancel the batches of chunks the run no longer counts on (input changed, file gone), never leaving
        one running; a batch a live chunk adopted stays."""
        held = {c.batch_id for c in self._live() if c.batch_id}
        for c in self.chunks:
            if c.settled or not (c.dropped or c.cancel_reason == "replaced"):
                continue
            if c.batch_id and c.batch_id not in held:
                await self._cancel(c.batch_id, "its records changed or are planned again")
            self.journal.write("settled", key=c.chunk.key, outcome="retired")

    async def _cancel(self, batch_id: str, why: str) -> None:
        try:
            await self.provider.cancel(batch_id)
            log.warning("cancelled a batch", batch=batch_id, why=why)
        except RequestError as exc:
            if exc.retryable or exc.code == "authentication_error":
                raise
            log.warning("the provider refused to cancel a batch (it may have ended)", batch=batch_id,
                        error=self.provider.redacted(exc.message[:200]))

    async def _advance(self, c: ChunkState) -> None:
        if c.settled:
            return
        if c.submitted:
            try:
                status = await self.provider.retrieve(c.batch_id)
            except RequestError as exc:
                if exc.retryable or exc.code == "authentication_error":
                    raise
                return self._lost(c, f"the provider no longer knows batch {c.batch_id} ({exc.message[:200]})")
            crashpoint("poll")
            self.live[c.chunk.key] = status
            if status.status != c.status:
                self.journal.write("status", key=c.chunk.key, status=status.status)
            if status.terminal:
                await self.collect(c, status)
            elif status.status.startswith("unknown:"):
                await self._unknown(c, status)
        elif c.cancel_reason is not None:
            self._settle_unsent(c)

    async def _unknown(self, c: ChunkState, status: BatchStatus) -> None:
        """A state neither API defines: polled ``UNKNOWN_POLLS`` times, then cancelled, its records failed."""
        self.unknown[c.chunk.key] += 1
        if self.unknown[c.chunk.key] == 1:
            log.warning("the provider reports a batch state it does not define", batch=c.batch_id, status=status.status)
        if self.unknown[c.chunk.key] < UNKNOWN_POLLS:
            return
        await self._cancel(c.batch_id, "its state is unknown")
        self._fail_records(c, self._pending(c), {"code": "batch_status_unknown", "message":
                           f"the provider's batch {status.id} stayed in an unknown state ({status.status[8:]})"})
        self.journal.write("settled", key=c.chunk.key, outcome="errors")

    def _lost(self, c: ChunkState, why: str) -> None:
        """The batch or its results are gone at the provider: its records are sent again (once), else failed."""
        leftover = self._pending(c)
        if leftover and c.chunk.attempt < MAX_ATTEMPT:
            log.warning("sending records again", chunk=c.chunk.key, records=len(leftover), why=why)
            resubmission(self.journal, c.chunk, leftover)
            self.counts["sent_again"] += len(leftover)
            self.journal.write("settled", key=c.chunk.key, outcome="resubmitted")
            return
        self._fail_records(c, leftover, {"code": "batch_unavailable", "message": why})
        self.journal.write("settled", key=c.chunk.key, outcome="errors")

    # -- the spending cap ----------------------------------------------------------------------

    def _hold_submitted(self) -> None:
        """Refuse a cap on a model without a price; reserve the worst case of batches sent before this run."""
        self.spend.cap.require_prices({c.chunk.model for c in self._live()})
        for c in self._live():
            if c.submitted:
                self.spend.hold(c, self._pending(c))

    def cap_error(self) -> SpendCapReached | None:
        """Why records were left unsubmitted, when the spending cap stopped them."""
        return self.spend.error(len(self.wanted)) if self.spend is not None else None

    # -- submitting exactly once ------------------------------------------------------------

    async def submit(self, c: ChunkState) -> None:
        """Upload (where the provider takes files) and create the chunk's batch, adopting what exists."""
        key = c.chunk.key
        try:
            if self.provider.uploads and c.file_id is None:
                file_id = await self.provider.find_file(c.chunk)
                if file_id is None:
                    file_id, _ = await self._once(c, "upload")
                self.journal.write("uploaded", key=key, file_id=file_id)
            if c.batch_id is None:
                batch_id = await self._find_batch(c)
                adopted = batch_id is not None
                if batch_id is None:
                    batch_id, adopted = await self._once(c, "create")
                self.journal.write("created", key=key, batch_id=batch_id, adopted=adopted)
                log.info("batch submitted", chunk=key, batch=batch_id, records=c.chunk.count, adopted=adopted)
        except RequestError as exc:
            if exc.retryable or exc.code == "authentication_error":
                raise
            self._fail_records(c, self._pending(c), {"code": "batch_rejected", "message": exc.message[:500]})
            self.journal.write("settled", key=key, outcome="errors")

    async def _find_batch(self, c: ChunkState) -> str | None:
        taken = {x.batch_id for x in self._live() if x.batch_id} | c.rejected
        return await self.provider.find_batch(c.chunk, c.create_at, taken)

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
                log.warning("no usable answer to a call; looking for what it made", step=step, chunk=c.chunk.key,
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
                    if not exc.retryable and exc.code != "authentication_error":
                        return self._lost(c, f"the results of batch {status.id} cannot be read ({exc.message[:200]})")
                    if not exc.retryable or attempt + 1 == self.opt.max_attempts:
                        raise
                    log.warning("download failed; downloading again", batch=status.id, error=exc.message[:200])
                    await asyncio.sleep(min(30.0, 2.0 ** attempt))
        self.journal.write("settled", key=c.chunk.key, outcome=self._fate(c, status, self._pending(c)))

    async def _download(self, c: ChunkState, status: BatchStatus) -> bool:
        """Append the batch's new results; False when they show the batch is not this chunk's."""
        block: list[Result] = []
        async for custom_id, result, why in self.provider.results(status, c.chunk):
            if why == "foreign":
                log.warning("adopted batch is not this run's; looking again", batch=c.batch_id)
                self.journal.write("rejected", key=c.chunk.key, batch_id=c.batch_id)
                return False
            if custom_id is None or why == "invented":
                self._refuse(c, why, custom_id)
                continue
            if result is None:
                continue
            if self._accept(c, custom_id):
                block.append(result)
            if len(block) >= WRITE_BLOCK:
                self._write(block, c)
                block = []
        self._write(block, c)
        return True

    def _accept(self, c: ChunkState, custom_id: str) -> bool:
        """Whether a result of ``custom_id`` from this chunk's batch goes to the store.

        Only ids this chunk asked for, with the request the run still wants, each once (the first answer
        wins); the store's ``accept`` then writes each id the run expects at most once, into one file."""
        asked = (self._asked(c) or {}).get(custom_id)
        if asked is None:
            self._refuse(c, "invented", custom_id)
            return False
        if self.wanted.get(custom_id) != asked:
            self.counts["results_not_wanted"] += 1  # answered twice, written before, or asked differently now
            return False
        del self.wanted[custom_id]
        return True

    def _refuse(self, c: ChunkState, why: str, custom_id: str | None) -> None:
        self.counts[f"results_{why}"] += 1
        log.warning("a result line was passed over", batch=c.batch_id, why=why,
                    custom_id=custom_id[:100] if custom_id else None)

    def _fate(self, c: ChunkState, status: BatchStatus, leftover: list) -> str:
        if not leftover:
            return "done"
        if c.cancel_reason == "deadline" or (self.switched and status.status in ("expired", "cancelled")):
            return "online"
        if status.status in ("expired", "cancelled") and c.cancel_reason is None and c.chunk.attempt == 0:
            resubmission(self.journal, c.chunk, leftover)
            self.counts["resubmitted"] += len(leftover)
            return "resubmitted"
        code = {"completed": "missing_from_results"}.get(status.status, f"batch_{status.status}")
        message = status.detail or f"the provider's batch {status.id} ended {status.status} without a result for this record"
        self._fail_records(c, leftover, {"code": code, "message": message})
        return "errors"

    def _write(self, block: list[Result], c: ChunkState | None = None) -> None:
        if not block:
            return
        crashpoint("write")
        verdict = self.store.accept(block)
        if verdict.refused:  # _accept lets through only what the store expects: a refusal here is a defect
            raise RuntimeError(f"the record store refused {verdict.refused} result(s) the run accepted")
        for result in block:
            usage = (result.body or {}).get("usage")
            usage = usage if isinstance(usage, dict) else {}
            self.tokens["prompt"] += usage.get("prompt_tokens") if type(usage.get("prompt_tokens")) is int else 0
            self.tokens["completion"] += usage.get("completion_tokens") if type(usage.get("completion_tokens")) is int else 0
            if c is not None and self.spend is not None:
                self.spend.bill(c, usage)
            elif c is not None and self.meter is not None:
                self.meter.count(c.chunk.model, usage)
        self.counts["batch_ok"] += verdict.ok
        self.counts["batch_failed"] += verdict.failed

    def _fail_records(self, c: ChunkState, lines: list, error: dict) -> None:
        block = []
        for line in lines:
            if self._accept(c, line.custom_id):
                block.append(Result(line.custom_id, False, error=dict(error), attempts=0))
        for start in range(0, len(block), WRITE_BLOCK):
            self._write(block[start : start + WRITE_BLOCK])

    # -- cancelling and the deadline ---------------------------------------------------------

    async def stop_batches(self, reason: str) -> None:
        """Cancel every unsettled batch (``user``: ``--cancel``; ``deadline``: the rest goes online)."""
        self.switched = self.switched or reason == "deadline"
        log.warning("cancelling the run's batches", reason=reason)
        for c in self._live():
            if c.cancel_reason is not None:
                continue
            if c.batch_id is None:
                found = await self._find_batch(c)  # a create whose answer never came: it may exist
                if found:
                    self.journal.write("created", key=c.chunk.key, batch_id=found, adopted=True)
            if c.batch_id is not None:
                await self._cancel(c.batch_id, reason)
            self.journal.write("cancel", key=c.chunk.key, reason=reason)

    def _settle_unsent(self, c: ChunkState) -> None:
        if c.cancel_reason == "deadline":
            self.journal.write("settled", key=c.chunk.key, outcome="online")
            return
        self._fail_records(c, self._pending(c), {"code": "cancelled", "message": "cancelled before the batch was created"})
        self.journal.write("settled", key=c.chunk.key, outcome="errors")

    def _switch_at(self) -> float | None:
        if self.opt.deadline_s is None:
            return None
        reserve = min(self.opt.online_reserve_s, self.opt.deadline_s / 2)
        if self.journal.state.started_at is None:  # the journal's first line was lost: the deadline counts from now
            self.journal.state.started_at = time.time()
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
        settings = self.online_settings
        cap = self.spend.cap if self.spend is not None else None
        if cap is not None:  # the online rest spends what the batches left of the cap, at online prices
            settings = dataclasses.replace(settings, max_cost=max(cap.cap - cap.spent, 1e-9))
        engine = Engine(settings, self.store.output, self.store.errors, keep_bodies=False)
        async with engine:
            for c in chunks:
                for line in self._pending(c):
                    if engine.stopping:
                        break
                    del self.wanted[line.custom_id]  # the engine writes it, or leaves it to a rerun
                    await engine.submit(line.custom_id, line.body, line.url)
        self.counts["online_ok"] += engine.stats.succeeded
        self.counts["online_failed"] += engine.stats.failed
        self.tokens["prompt"] += engine.stats.prompt_tokens
        self.tokens["completion"] += engine.stats.completion_tokens
        if cap is not None and engine.spend is not None:
            cap.spent += engine.spend.spent
            cap.capped = cap.capped or engine.spend.capped

    def close(self) -> None:
        """Close the files (idempotent)."""
        self.store.close()
        self.journal.close()


def new_run_id() -> str:
    """A short random run id (12 hex digits)."""
    return os.urandom(6).hex()
