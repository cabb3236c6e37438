"""One rate budget for a whole cluster: a budget actor that leases it, a worker-side limiter.

``Budget`` holds the cluster's requests-per-minute and tokens-per-minute as
buckets that may go into debt: a lease takes what a worker asked for at once
and answers how long the worker must wait before spending it, so leases are
served first come, first served and a worker calls again only when its lease
is spent. Each bucket holds half a second of budget (as ``RateLimits`` does on
one machine), so the cluster never bursts more than a server enforcing its
limit over one second accepts.

``Budget`` also carries the driver's heartbeat and the cluster-wide pause: a
worker that sees ``Retry-After`` or an exhausted ``x-ratelimit-remaining-*``
reports it, and every worker learns of it with its next lease or status poll.

``LeasedLimits`` is the worker's side, with the interface of
``odie_async.engine.limits.RateLimits`` (``active``, ``acquire``,
``settle_tokens``, ``pause_for``, ``rpm``, ``tpm``): it leases about
``lease_s`` seconds of the worker's share at a time and spends it locally.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Awaitable, Callable

import structlog

from ..engine.limits import BURST_SECONDS, RateLimits

log = structlog.get_logger(__name__)

LEASE_SECONDS = 1.0


class DebtBucket:
    """A refilling budget of ``per_minute`` whose level may go negative (a queue of leases)."""

    def __init__(self, per_minute: float, burst_seconds: float = BURST_SECONDS, now: float = 0.0) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.stamp = now

    def take(self, amount: float, now: float) -> float:
        """Take ``amount``; return the seconds until it may be spent (0 when at once)."""
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        self.level -= amount
        return max(0.0, -self.level / self.rate)

    def give_back(self, amount: float) -> None:
        """Return budget that was leased but not spent (or correct an estimate)."""
        self.level = min(self.capacity, self.level + amount)


class Budget:
    """The cluster's rate budget, pause and driver heartbeat: the state of the budget actor."""

    def __init__(self, rpm: float = 0, tpm: float = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        now = clock()
        self.rpm, self.tpm = rpm, tpm
        self._requests = DebtBucket(rpm, now=now) if rpm else None
        self._tokens = DebtBucket(tpm, now=now) if tpm else None
        self._paused_until = 0.0
        self._last_beat = now
        self.calls: Counter[str] = Counter()

    def lease(self, worker: int, requests: float, tokens: float, settle: float = 0.0,
              returned_requests: float = 0.0, returned_tokens: float = 0.0) -> dict:
        """Lend ``requests`` and ``tokens``; say how long to wait before spending them.

        ``settle`` is the worker's token corrections since its last lease (real
        usage minus estimates); ``returned_*`` is what it leased and never spent.
        """
        self.calls[f"lease:{worker}"] += 1
        now = self.clock()
        wait = 0.0
        if self._requests is not None:
            self._requests.give_back(returned_requests)
            wait = self._requests.take(requests, now)
        if self._tokens is not None:
            self._tokens.give_back(returned_tokens - settle)
            wait = max(wait, self._tokens.take(tokens, now))
        pause = self.pause_left(now)
        return {"requests": requests, "tokens": tokens, "wait_s": max(wait, pause), "pause_s": pause}

    def pause(self, seconds: float) -> None:
        """Hold every worker back for ``seconds`` (a server's retry or reset hint)."""
        self.calls["pause"] += 1
        self._paused_until = max(self._paused_until, self.clock() + seconds)

    def pause_left(self, now: float | None = None) -> float:
        """Seconds left of the cluster-wide pause."""
        return max(0.0, self._paused_until - (self.clock() if now is None else now))

    def beat(self) -> None:
        """The driver is alive."""
        self.calls["beat"] += 1
        self._last_beat = self.clock()

    def status(self, worker: int) -> dict:
        """What a worker polls: how long the driver has been silent, and the pause."""
        self.calls[f"status:{worker}"] += 1
        now = self.clock()
        return {"driver_silent_s": now - self._last_beat, "pause_s": self.pause_left(now)}

    def figures(self) -> dict:
        """Calls served, by kind (for the summary's cost figures)."""
        kinds: Counter[str] = Counter()
        for key, n in self.calls.items():
            kinds[key.split(":")[0]] += n
        return dict(kinds)


LeaseCall = Callable[..., Awaitable[dict]]


class LeasedLimits:
    """A worker's limiter drawing on the cluster budget, with ``RateLimits``' interface.

    ``lease`` is an async callable with ``Budget.lease``'s parameters (the
    budget actor's method, or a ``Budget`` itself in tests); ``report_pause``
    tells the cluster about a pause, fire and forget.
    """

    def __init__(self, lease: LeaseCall, report_pause: Callable[[float], None], worker: int,
                 rpm: float, tpm: float, workers: int, lease_s: float = LEASE_SECONDS) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.worker = worker
        self.lease_calls = 0
        self._lease, self._report_pause = lease, report_pause
        self._chunk_requests = max(1.0, rpm / 60.0 * lease_s / workers) if rpm else 0.0
        self._chunk_tokens = max(1.0, tpm / 60.0 * lease_s / workers) if tpm else 0.0
        self._lease_s = lease_s
        self._requests = self._tokens = 0.0
        self._unsettled = 0.0
        self._leased_at = 0.0
        self._pause = RateLimits()  # no budgets of its own: only the pause
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        """Whether a budget or a pause can make ``acquire`` wait."""
        return bool(self.rpm or self.tpm or self._pause.active)

    async def acquire(self, tokens: float = 0) -> None:
        """Wait until one request of about ``tokens`` tokens may be sent."""
        while True:
            await self._pause.acquire()
            if self._take(tokens):
                return
            async with self._lock:
                if not self._covers(tokens):
                    await self._renew(tokens)

    def _covers(self, tokens: float) -> bool:
        return (not self.rpm or self._requests >= 1.0) and (not self.tpm or self._tokens >= tokens)

    def _take(self, tokens: float) -> bool:
        if not self._covers(tokens):
            return False
        if self.rpm:
            self._requests -= 1.0
        if self.tpm:
            self._tokens -= tokens
        return True

    async def _renew(self, tokens: float) -> None:
        """Lease about ``lease_s`` of this worker's share; unspent stale budget goes back."""
        loop = asyncio.get_running_loop()
        stale = loop.time() - self._leased_at > 2 * self._lease_s
        back_r, back_t = (self._requests, self._tokens) if stale else (0.0, 0.0)
        want_r = self._chunk_requests if self.rpm else 0.0
        want_t = max(self._chunk_tokens, tokens - (0.0 if stale else self._tokens)) if self.tpm else 0.0
        settle, self._unsettled = self._unsettled, 0.0
        self.lease_calls += 1
        grant = await self._lease(self.worker, want_r, want_t, settle, back_r, back_t)
        if stale:
            self._requests = self._tokens = 0.0
        if grant["pause_s"] > 0:
            self._pause.pause_for(grant["pause_s"])
        if grant["wait_s"] > 0:
            await asyncio.sleep(grant["wait_s"])
        self._requests += grant["requests"]
        self._tokens += grant["tokens"]
        self._leased_at = loop.time()

    def settle_tokens(self, estimated: float, actual: float) -> None:
        """Correct the budget once the server reported real usage (sent with the next lease)."""
        if self.tpm and actual >= 0:
            self._unsettled += actual - estimated

    def pause_for(self, seconds: float) -> None:
        """Hold this worker back for ``seconds`` and tell the cluster."""
        self._pause.pause_for(seconds)
        self._report_pause(seconds)

    def apply_cluster_pause(self, seconds: float) -> None:
        """A pause another worker reported (learnt from a status poll)."""
        if seconds > 0:
            self._pause.pause_for(seconds)
