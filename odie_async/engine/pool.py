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
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import structlog

from ..exceptions import EndpointStopped, RequestError, TransportError
from .client import ChatClient
from .lane_control import FlowControl
from .lanes import Lane, LaneBreaker, Router
from .settings import DEFAULTS, PoolEndpoint
from .stats import summary
from .streaming import StreamingChatClient

log = structlog.get_logger(__name__)


@dataclass
class PoolSettings:
    """Straggler and outage control; the per-attempt ceiling is the client's timeout."""

    timeout_factor: float = 4.0
    timeout_floor_s: float = 2.0
    timeout_ceiling_s: float = DEFAULTS["batch"]["timeout_s"]
    hedge_share: float = DEFAULTS["batch"]["hedge_share"]
    max_outage_s: float = DEFAULTS["batch"]["max_outage_s"]


# A request whose lane keeps answering others is let run this many --timeout's before it is cut.
HARD_CAP_FACTOR = 5


def build_lanes(settings, stats, client=None, limits=None) -> list[Lane]:
    """One lane per endpoint of ``settings`` (``endpoints``, else ``base_url`` alone).

    The same endpoint named twice (URL, key and model) is one lane: one budget, not two.
    Alone, an endpoint has no breaker of its own: the run's breaker stops the run within
    seconds of a sustained failure. In a pool, each lane opens and closes on its own breaker,
    and the run stops only when every lane has been out for ``max_outage_s``. ``client`` (a
    test's fake transport, or a list of them, one per lane) and ``limits`` (a cluster-wide
    budget) go to the first lane.
    """
    specs = unique_endpoints(list(settings.endpoints) or [
        PoolEndpoint.keyed(settings.base_url, settings.api_key, rpm=settings.rpm, tpm=settings.tpm)])
    pooled = len(specs) > 1
    clients = client if isinstance(client, (list, tuple)) else [client]
    lanes = []
    for i, spec in enumerate(specs):
        own = dataclasses.replace(settings, base_url=spec.base_url, api_key=spec.api_key, rpm=spec.rpm,
                                  tpm=spec.tpm, concurrency=spec.max_concurrency or settings.concurrency,
                                  endpoints=[])
        flow = FlowControl(own, stats, limits if i == 0 else None)
        kind = StreamingChatClient if settings.stream else ChatClient
        given = clients[i] if i < len(clients) else None
        transport = given if given is not None else kind(
            spec.base_url, spec.api_key, own.concurrency, settings.timeout_s * HARD_CAP_FACTOR)
        if given is None:
            # A given limit needs no rate-limit headers; a learned or shared (cluster) one does.
            transport.read_limits = flow.learning or (i == 0 and limits is not None)
        lanes.append(Lane(spec, transport, flow, LaneBreaker() if pooled else None))
    stats.latency_parts = [lane.latencies for lane in lanes]
    return lanes


def unique_endpoints(specs: list[PoolEndpoint]) -> list[PoolEndpoint]:
    """``specs`` with each endpoint once: the same URL, key and model twice would get two budgets
    for one quota. The first one named keeps its settings."""
    seen: dict[tuple, PoolEndpoint] = {}
    for spec in specs:
        key = (spec.base_url.rstrip("/"), spec.api_key, spec.model)
        if key in seen:
            log.warning("endpoint named twice; one lane serves both", endpoint=seen[key].label)
        else:
            seen[key] = spec
    return list(seen.values())


# How often the watchdog looks at the attempts in flight. One sweep for all of them costs far
# less than a timer per attempt (measured: a timer and a timeout scope each cost 13 µs an attempt).
SWEEP_S = 0.1


class _Watch:
    """The watchdog's record of one attempt in flight; reused from attempt to attempt."""

    __slots__ = ("pool", "lane", "job", "sent", "delay", "deadline", "task", "cancelling", "hedge",
                 "hedge_reply", "expired", "provisional", "stuck")

    def __init__(self, pool: "Pool") -> None:
        self.pool = pool

    def arm(self, lane: Lane, job, sent: float, delay: float, provisional: bool) -> None:
        """Watch ``job`` sent on ``lane`` at ``sent``; ``provisional``: no latency model set ``delay``."""
        self.lane, self.job, self.sent, self.delay, self.provisional = lane, job, sent, delay, provisional
        self.deadline = sent + delay
        self.task = asyncio.current_task()
        self.cancelling = self.task.cancelling()
        self.hedge = self.hedge_reply = None
        self.expired = self.stuck = False

    def check(self, now: float) -> None:
        """Past the deadline: cut a stuck or straggling attempt; otherwise let it wait (and maybe hedge)."""
        lane = self.lane
        if not lane.progressed_since(self.sent) or lane.later_answered(self.sent):
            # Stuck: silent while the other lanes answered (when all are silent, the client may be the slow one).
            self.stuck = not lane.progressed_since(self.sent) and self.pool.others_answered(lane, self.sent)
            self.expire()  # the lane is stuck, or answered requests sent after this one: a straggler
            return
        if self.hedge is None and self.pool.may_hedge():
            self.hedge = asyncio.ensure_future(self.pool.hedge(self))
        self.deadline = now + self.delay

    def won(self, reply) -> None:
        """The hedge answered first: end the original attempt now."""
        self.hedge_reply = reply
        self.expire()

    def expire(self) -> None:
        if not self.expired:
            self.expired = True
            self.task.cancel()

    def ended(self) -> bool:
        """Whether a cancellation of the attempt was the watchdog's own (then it is taken back)."""
        return self.expired and self.task.uncancel() <= self.cancelling

    def disarm(self) -> None:
        if self.hedge is not None and not self.hedge.done():
            self.hedge.cancel()
        self.job = self.task = self.hedge = self.hedge_reply = None


@dataclass(slots=True)
class Outcome:
    """What one attempt came to: the reply, or a failure classified with where the record goes next.

    ``reroute``: the lane failed, not the record (its key was refused, it left the pool), so
    another lane takes the record at once and the attempt is not one of its retries.
    ``stop``: why the run must stop (a lane alone that cannot go on), else None.
    """

    lane: Lane
    reply: object = None
    error: RequestError | None = None
    reroute: bool = False
    stop: str | None = None


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
        self._watched: dict[int, _Watch] = {}
        self._spare: list[_Watch] = []
        self._provisional = 0  # watches armed at the ceiling, for want of any latency model
        self._sweeper: asyncio.Future | None = None

    async def attempt(self, job, avoid: Lane | None = None, lane: Lane | None = None) -> Outcome:
        """Send ``job`` once on ``lane`` (default: the freest); say what came of it.

        One coroutine from the lane's slot to its answer: each level more cost ~2 µs an attempt.
        """
        loop = asyncio.get_running_loop()
        if lane is None:
            lane = self.router.pick(loop.time(), avoid) or await self._choose(avoid)
        lane.outstanding += 1
        probe = lane.flow.probe  # while learning limits, a lane's first request goes alone
        watch = None
        try:
            if probe is not None and not probe.is_set() and lane.started:
                await probe.wait()
            lane.started += 1
            gate = lane.gate
            if not gate.try_acquire():
                await gate.acquire()
            try:
                # The budget is taken only once a slot is free: taken earlier, it would let a
                # burst through when slots free up at once.
                if lane.limits.active:
                    await lane.limits.acquire(job.tokens)
                payload = self._payload(lane, job)
                if lane.breaker is not None:
                    lane.breaker.on_send()
                self.attempts += 1
                sent = loop.time()
                watch = self._watch(lane, job, sent)
                reply = await lane.client.post(job.path, payload)
            except asyncio.CancelledError:
                if watch is None or not watch.ended():
                    raise
                if watch.hedge_reply is not None:
                    return Outcome(lane, watch.hedge_reply)  # the hedge's own lane was told already
                exc = TransportError(f"no answer within the timeout ({watch.delay:.1f} s) while the endpoint "
                                     "answered nothing else, or requests sent after it")
                if watch.stuck and lane.breaker is not None:
                    lane.breaker.trip(loop.time())  # a stuck lane, not a slow request: open it now
                return self._failed(lane, exc, loop.time())
            except RequestError as exc:
                return self._failed(lane, exc, loop.time())
            finally:
                gate.release()
                if watch is not None:
                    self._unwatch(watch)
        finally:
            lane.outstanding -= 1
            if probe is not None and not probe.is_set():
                probe.set()
        lane.on_reply(job.tokens, reply, loop.time(), sent)
        if self._outage_since is not None:
            log.warning("an endpoint answers again; resuming", endpoint=lane.label)
            self._outage_since = None
        return Outcome(lane, reply)

    def _watch(self, lane: Lane, job, sent: float) -> _Watch:
        delay, provisional = self._timeout(lane, job.tokens)
        watch = self._spare.pop() if self._spare else _Watch(self)
        watch.arm(lane, job, sent, delay, provisional)
        self._watched[id(watch)] = watch
        self._provisional += provisional
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self.sweep(forever=False))
        return watch

    def _unwatch(self, watch: _Watch) -> None:
        del self._watched[id(watch)]
        self._provisional -= watch.provisional
        watch.disarm()
        self._spare.append(watch)

    def _timeout(self, lane: Lane, tokens: float) -> tuple[float, bool]:
        """The attempt's deadline after sending, and whether it is provisional (no model set it).

        A lane without a model of its own borrows the slowest ready one of the pool, so a hung
        endpoint is cut at the straggler deadline, not at ``--timeout``. (Cut only while it
        answered nothing at all: an endpoint that answers within the deadline earns its own.)
        """
        s = self.settings
        model = lane.model if lane.model.ready else self._reference()
        if model is None:
            return s.timeout_ceiling_s, True
        return model.timeout(tokens, s.timeout_factor, s.timeout_floor_s, s.timeout_ceiling_s), False

    def _reference(self):
        """The slowest ready latency model among the lanes, or None."""
        ready = [lane.model for lane in self.lanes if lane.model.ready]
        return max(ready, key=lambda model: model.expected(1.0)) if ready else None

    def _rearm(self) -> None:
        """Give provisional watches a real deadline as soon as some lane has a latency model."""
        if self._reference() is None:
            return
        for watch in self._watched.values():
            if watch.provisional and not watch.expired:
                watch.delay, watch.provisional = self._timeout(watch.lane, watch.job.tokens)
                watch.deadline = watch.sent + watch.delay
                self._provisional -= not watch.provisional

    async def _choose(self, avoid: Lane | None) -> Lane:
        loop = asyncio.get_running_loop()
        while True:
            lane = self.router.pick(loop.time(), avoid)
            if lane is not None:
                return lane
            await self._wait_outage(loop)

    async def _wait_outage(self, loop) -> None:
        now = loop.time()
        if all(lane.disabled for lane in self.lanes):
            reasons = "; ".join(f"{lane.label}: {lane.disabled}" for lane in self.lanes)
            raise EndpointStopped(reasons if len(self.lanes) > 1 else self.lanes[0].disabled)
        if self._outage_since is None:
            self._outage_since = now
            log.error("every endpoint is failing; waiting for one to recover",
                      max_outage_s=self.settings.max_outage_s)
        if now - self._outage_since >= self.settings.max_outage_s:
            raise EndpointStopped(f"every endpoint failed for {self.settings.max_outage_s:g} s (--max-outage); rerun to resume")
        await asyncio.sleep(min(1.0, max(0.01, self.router.next_reopen(now))))

    async def sweep(self, forever: bool = True) -> None:
        """The watchdog: every ``SWEEP_S``, look at the attempts past their deadline. The engine runs
        it for the whole run; elsewhere ``attempt`` starts one that ends when nothing is in flight."""
        if forever:
            self._sweeper = asyncio.current_task()
        loop = asyncio.get_running_loop()
        try:
            while forever or self._watched:
                await asyncio.sleep(SWEEP_S)
                if self._provisional:
                    self._rearm()
                now = loop.time()
                for watch in [w for w in self._watched.values() if now >= w.deadline and not w.expired]:
                    watch.check(now)
        finally:
            if self._sweeper is asyncio.current_task():
                self._sweeper = None

    def _failed(self, lane: Lane, exc: RequestError, now: float) -> Outcome:
        """Classify a failed attempt: a lane out of the pool sends the record elsewhere."""
        reason = lane.on_error(exc, now)
        if len(self.lanes) == 1:
            return Outcome(lane, error=exc, stop=reason)
        if reason is not None and not lane.disabled:
            log.error("endpoint taken out of the pool", endpoint=lane.label, reason=reason)
            lane.disable(reason, now)
        return Outcome(lane, error=exc, reroute=lane.disabled is not None)

    async def probe_servers(self, fetch, timeout_s: float = 3.0) -> None:
        """Ask each lane's server once for its load figures (``fetch(lane)`` → ``/metrics`` text or
        None). A server that has them starts slowly: its queue will show how far to go."""
        async def one(lane: Lane) -> None:
            try:
                text = await asyncio.wait_for(fetch(lane), timeout_s)
            except (OSError, RequestError, TimeoutError):
                text = None
            lane.steer(text)
            if lane.server.available and lane.adaptive:
                lane.gate.resize(min(lane.gate.limit, 8))

        await asyncio.gather(*(one(lane) for lane in self.lanes))

    async def watch_servers(self, fetch, interval_s: float = 0.5) -> None:
        """Read the load figures of the lanes that have them every ``interval_s`` and steer their gates."""
        lanes = [lane for lane in self.lanes if lane.server.available and lane.adaptive]
        while lanes:
            await asyncio.sleep(interval_s)
            texts = await asyncio.gather(*(fetch(lane) for lane in lanes), return_exceptions=True)
            for lane, text in zip(lanes, texts):
                lane.steer(None if isinstance(text, BaseException) else text)

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
                outcome = await self.attempt(watch.job, lane=lane)
        except TimeoutError:
            return
        if outcome.reply is None:
            return
        self.hedges_won += 1
        lane.counts["hedges_won"] += 1
        watch.won(outcome.reply)


    def others_answered(self, lane: Lane, t: float) -> bool:
        """Whether a lane other than ``lane`` got an answer after loop time ``t``."""
        return any(other is not lane and other.progressed_since(t) for other in self.lanes)

    def in_flight(self) -> int:
        """Attempts holding a slot, over every lane."""
        return sum(lane.gate.active for lane in self.lanes)

    def concurrency_limit(self) -> int:
        """The concurrency every lane allows now, together."""
        return sum(lane.gate.limit for lane in self.lanes)

    def summary(self) -> list[dict]:
        """Per-lane figures for the run summary."""
        total = sum(lane.counts["ok"] for lane in self.lanes) or 1
        return [_lane_summary(lane, total) for lane in self.lanes]


def _lane_summary(lane: Lane, total_ok: int) -> dict:
    return {
        "endpoint": lane.label,
        "counts": dict(lane.counts),
        "share": round(lane.counts["ok"] / total_ok, 4),
        "latency_ms": summary(lane.latencies, 1000),
        "concurrency": lane.gate.limit,
        "breaker": [f"{state}@{t:.1f}" for t, state in lane.breaker.transitions] if lane.breaker else [],
        "out_of_pool": lane.disabled,
    }
