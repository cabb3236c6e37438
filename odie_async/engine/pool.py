"""Sending one attempt through a pool of lanes: routing, adaptive timeouts, hedging, failover.

``Pool.attempt`` picks the freest lane whose breaker allows, waits for that
lane's rate budget and concurrency slot, and sends. A watchdog armed at the
lane's expected latency (a high quantile, scaled by the request's size) then
decides what a slow request means:

- the lane has answered nothing since the request left: the lane is stuck, so
  the attempt times out and the retry goes to another lane;
- the lane is answering others: the server is busy, not broken. That is
  backpressure (the lane's concurrency shrinks) and the request keeps waiting,
  since sending it again would throw the server's work away. Once intake is
  empty (the tail of a run), a bounded share of such requests is hedged: one
  duplicate goes to another lane and the first answer wins; the loser is
  cancelled and never written.

When every lane is open the pool waits for the first probe, says so once, and
gives up after ``max_outage_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import structlog

from ..exceptions import RequestError, RunAborted, TransportError
from .lanes import Lane, Router

log = structlog.get_logger(__name__)


@dataclass
class PoolSettings:
    """Straggler and outage control; the per-attempt ceiling is the client's timeout."""

    timeout_factor: float = 4.0
    timeout_floor_s: float = 2.0
    timeout_ceiling_s: float = 120.0
    hedge_share: float = 0.02
    max_outage_s: float = 300.0


class _Watch:
    """The watchdog of one in-flight attempt."""

    __slots__ = ("pool", "lane", "job", "sent", "scope", "timer", "hedge", "hedge_reply", "stuck")

    def __init__(self, pool: "Pool", lane: Lane, job, sent: float) -> None:
        self.pool, self.lane, self.job, self.sent = pool, lane, job, sent
        self.scope = self.timer = self.hedge = self.hedge_reply = None
        self.stuck = False

    def arm(self, scope, delay: float) -> None:
        self.scope = scope
        self.timer = asyncio.get_running_loop().call_later(delay, self._check, delay)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.hedge is not None and not self.hedge.done():
            self.hedge.cancel()

    def _check(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        if not self.lane.progressed_since(self.sent):
            self.stuck = True
            self.scope.reschedule(loop.time())
            return
        if self.lane.adaptive:
            self.lane.gate.on_congestion(loop.time())
        if self.hedge is None and self.pool.may_hedge():
            self.hedge = asyncio.ensure_future(self.pool.hedge(self))
        self.timer = loop.call_later(delay, self._check, delay)

    def won(self, reply) -> None:
        """The hedge answered first: end the original attempt now."""
        self.hedge_reply = reply
        self.scope.reschedule(asyncio.get_running_loop().time())


class Pool:
    """Lanes behind one engine. ``intake_idle`` says whether nothing waits to be sent."""

    def __init__(self, lanes: list[Lane], settings: PoolSettings | None = None,
                 intake_idle: Callable[[], bool] = lambda: False) -> None:
        self.router = Router(lanes)
        self.lanes = lanes
        self.settings = settings or PoolSettings()
        self.intake_idle = intake_idle
        self.attempts = 0
        self.hedges_sent = 0
        self.hedges_won = 0
        self._outage_since: float | None = None

    async def attempt(self, job, avoid: Lane | None = None) -> tuple[Lane, object]:
        """Send ``job`` once on the freest lane; return the lane and its reply."""
        lane = await self._choose(avoid)
        return lane, await self._on_lane(lane, job)

    async def _on_lane(self, lane: Lane, job) -> object:
        lane.outstanding += 1
        try:
            if lane.limits.active:
                await lane.limits.acquire(job.tokens)
            await lane.gate.acquire()
            try:
                return await self._send(lane, job)
            finally:
                lane.gate.release()
        finally:
            lane.outstanding -= 1

    async def _choose(self, avoid: Lane | None) -> Lane:
        loop = asyncio.get_running_loop()
        while True:
            lane = self.router.pick(loop.time(), avoid)
            if lane is not None:
                return lane
            await self._wait_outage(loop)

    async def _wait_outage(self, loop) -> None:
        now = loop.time()
        if self._outage_since is None:
            self._outage_since = now
            log.error("every endpoint is failing; waiting for one to recover",
                      max_outage_s=self.settings.max_outage_s)
        if now - self._outage_since >= self.settings.max_outage_s:
            raise RunAborted(f"every endpoint failed for {self.settings.max_outage_s:g} s (--max-outage); rerun to resume")
        await asyncio.sleep(min(1.0, max(0.01, self.router.next_reopen(now))))

    async def _send(self, lane: Lane, job) -> object:
        loop = asyncio.get_running_loop()
        lane.breaker.on_send()
        self.attempts += 1
        sent = loop.time()
        payload = self._payload(lane, job)
        try:
            reply = await self._post(lane, job, payload, sent)
        except RequestError as exc:
            lane.on_error(exc, loop.time())
            raise
        lane.on_reply(job.tokens, reply, loop.time())
        if self._outage_since is not None:
            log.warning("an endpoint answers again; resuming", endpoint=lane.label)
            self._outage_since = None
        return reply

    async def _post(self, lane: Lane, job, payload: bytes, sent: float):
        delay = lane.model.timeout(job.tokens, self.settings.timeout_factor,
                                   self.settings.timeout_floor_s, self.settings.timeout_ceiling_s)
        if delay >= self.settings.timeout_ceiling_s:
            return await lane.client.post(job.path, payload)
        watch = _Watch(self, lane, job, sent)
        try:
            async with asyncio.timeout(None) as scope:
                watch.arm(scope, delay)
                return await lane.client.post(job.path, payload)
        except TimeoutError:
            if watch.hedge_reply is not None:
                return watch.hedge_reply
            raise TransportError(f"no answer within {delay:.1f} s while the endpoint answered nothing else") from None
        finally:
            watch.disarm()

    @staticmethod
    def _payload(lane: Lane, job) -> bytes:
        if not lane.spec.model:
            return job.payload
        body = orjson.loads(job.payload)
        body["model"] = lane.spec.model
        return orjson.dumps(body)

    def may_hedge(self) -> bool:
        """Hedge only at the tail of a run, within the configured share of attempts."""
        if not self.intake_idle():
            return False
        return self.hedges_sent + 1 <= self.settings.hedge_share * max(self.attempts, 1)

    async def hedge(self, watch: _Watch) -> None:
        """Send a duplicate of a slow attempt to another lane; the first answer wins."""
        self.hedges_sent += 1
        watch.lane.counts["hedged_from"] += 1
        lane = self.router.pick(asyncio.get_running_loop().time(), avoid=watch.lane)
        if lane is None:
            return
        try:
            async with asyncio.timeout(self.settings.timeout_ceiling_s):
                reply = await self._on_lane(lane, watch.job)
        except (RequestError, TimeoutError):
            return
        self.hedges_won += 1
        lane.counts["hedges_won"] += 1
        watch.won(reply)


    def summary(self) -> list[dict]:
        """Per-lane figures for the run summary."""
        total = sum(lane.counts["ok"] for lane in self.lanes) or 1
        return [_lane_summary(lane, total) for lane in self.lanes]


def _lane_summary(lane: Lane, total_ok: int) -> dict:
    values = sorted(lane.latencies)

    def q(p: float):
        return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 1) if values else None

    return {
        "endpoint": lane.label,
        "counts": dict(lane.counts),
        "share": round(lane.counts["ok"] / total_ok, 4),
        "latency_ms": {"p50": q(0.5), "p95": q(0.95)},
        "concurrency": lane.gate.limit,
        "breaker": [f"{state}@{t:.1f}" for t, state in lane.breaker.transitions],
    }
