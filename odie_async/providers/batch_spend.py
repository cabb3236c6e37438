"""The spending cap of a provider-batch run: a batch is submitted only when its worst case fits.

A chunk's worst case is every record's prompt estimate and whole output budget at the **batch**
prices of ``configs/prices.yaml`` (half the online price at OpenAI and Anthropic). It is reserved
when its batch is submitted and released when the chunk settles; the results are billed at their
real usage as they are written. A chunk that fits only once the batches in flight are billed waits
for them; one that does not fit when nothing is in flight reaches the cap: no batch is submitted any
more, the batches in flight are collected, and the run ends with ``SpendCapReached`` (exit 5). The
journal keeps the unsubmitted chunks, so a rerun with a higher cap submits them, and only them.
"""

from __future__ import annotations

import structlog

from ..engine.core import EngineSettings, estimate_tokens
from ..engine.spend import HELD, REACHED, Charge, SpendCap
from ..exceptions import SpendCapReached
from .chunks import encode_line
from .journal import ChunkState

log = structlog.get_logger(__name__)


class ChunkSpend:
    """The cap over a run's chunks: what each submitted, unsettled chunk holds of it."""

    def __init__(self, cap: SpendCap) -> None:
        self.cap = cap
        self.charges: dict[str, Charge] = {}  # chunk key -> the worst case its batch holds until it settles

    def charge(self, c: ChunkState, lines: list) -> Charge:
        """The worst case of submitting ``lines`` (the chunk's pending records) as one batch."""
        tokens = sum(estimate_tokens(line.body, len(encode_line(line)), EngineSettings.default_max_tokens)
                     for line in lines)
        return self.cap.charge(c.chunk.model, tokens)

    def hold(self, c: ChunkState, lines: list) -> None:
        """Reserve the worst case of a batch submitted before this run (it will be billed whatever the cap)."""
        self.charges[c.chunk.key] = self.charge(c, lines)
        self.cap.hold(self.charges[c.chunk.key])

    def admit(self, c: ChunkState, lines: list) -> bool:
        """Whether the chunk's batch may be submitted now; the cap is marked reached when it never will.
        False also while it may fit once the batches in flight are billed."""
        if c.chunk.key in self.charges:
            return True
        if self.cap.capped:
            return False
        charge = self.charge(c, lines)
        verdict = self.cap.reserve(charge)
        if verdict == HELD:
            self.charges[c.chunk.key] = charge
        elif verdict == REACHED:
            log.warning(f"spending cap reached: ${self.cap.spent:.4f} spent of ${self.cap.cap:g}; "
                        "no more batches are submitted")
        return verdict == HELD

    def bill(self, c: ChunkState, usage) -> None:
        """Count one written result of the chunk's batch at its real usage."""
        if c.chunk.key in self.charges:
            self.cap.bill(self.charges[c.chunk.key], usage)

    def release_settled(self, chunks) -> None:
        """Give back what settled chunks held."""
        for c in chunks:
            if c.settled and c.chunk.key in self.charges:
                self.cap.release(self.charges.pop(c.chunk.key))

    def error(self, unsubmitted: int) -> SpendCapReached | None:
        """Why records were left unsubmitted, when the cap stopped them."""
        return self.cap.reached("run", f" and {unsubmitted:,} record(s) not done")
