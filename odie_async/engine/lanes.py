"""One lane per endpoint: its limits, concurrency gate, latency model and breaker.

A pool is a list of lanes behind one engine. Each lane is throttled, slowed and
opened on its own, so a 429 or an outage on one endpoint never holds the others
back. ``Router.pick`` sends each attempt to the lane that will be through its
outstanding work soonest (outstanding requests over the rate the lane can take:
its concurrency over its latency, capped by its RPM, times its weight), skipping
lanes whose breaker is open.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Protocol

from ..exceptions import RateLimitError, RequestError
from .server_load import ServerLoad
from .stats import LogHistogram, percentile

if TYPE_CHECKING:
    from .settings import PoolEndpoint

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Transport(Protocol):
    """What a lane sends through: ``ChatClient``, ``StreamingChatClient`` or a test's fake."""

    async def __aenter__(self) -> "Transport": ...

    async def __aexit__(self, *exc_info) -> None: ...

    async def post(self, path: str, payload: bytes): ...


class Limiter(Protocol):
    """A lane's rate budget: ``RateLimits``, or a cluster-wide lease (``distributed/budget.py``)."""

    rpm: float
    tpm: float
    active: bool

    async def acquire(self, tokens: float = 0) -> None: ...

    def pause_for(self, seconds: float) -> None: ...


class LaneBreaker:
    """closed → open on sustained failure → half-open (one probe) → closed.

    It opens when ``threshold`` of the last ``window`` attempts failed (at least
    ``min_samples`` seen) or after ``consecutive`` failures in a row; it stays
    open for a cooldown that doubles each time a probe fails, up to ``max_cooldown_s``.
    """

    def __init__(self, window: int = 20, threshold: float = 0.8, min_samples: int = 10,
                 consecutive: int = 8, cooldown_s: float = 1.0, max_cooldown_s: float = 5.0) -> None:
        self.state = CLOSED
        self.threshold = threshold
        self.min_samples = min(min_samples, window)
        self.consecutive = consecutive
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.transitions: collections.deque[tuple[float, str]] = collections.deque(maxlen=64)  # the latest
        self._outcomes: collections.deque[bool] = collections.deque(maxlen=window)
        self._streak = 0
        self._cooldown_s = cooldown_s
        self._reopen_at = 0.0
        self._probing = False

    def allows(self, now: float) -> bool:
        """Whether an attempt may go to this lane now (a half-open lane takes one probe)."""
        if self.state == OPEN and now >= self._reopen_at:
            self._move(HALF_OPEN, now)
        if self.state == HALF_OPEN:
            return not self._probing
        return self.state == CLOSED

    def on_send(self) -> None:
        """An attempt was sent; in half-open state it is the probe."""
        if self.state == HALF_OPEN:
            self._probing = True

    def record(self, ok: bool, now: float) -> None:
        """Record one finished attempt."""
        self._outcomes.append(ok)
        self._streak = 0 if ok else self._streak + 1
        if self.state == HALF_OPEN:
            self._probing = False
            if ok:
                self._cooldown_s = self.base_cooldown_s
                self._outcomes.clear()
                self._move(CLOSED, now)
            else:
                self._cooldown_s = min(self.max_cooldown_s, self._cooldown_s * 2)
                self._open(now)
        elif self.state == CLOSED and not ok and self._tripped():
            self._open(now)

    def trip(self, now: float) -> None:
        """Open now (the lane was found stuck), with the usual cool-down before a probe."""
        if self.state == CLOSED:
            self._open(now)

    def force_open(self, now: float) -> None:
        """Open for good: no probe will ever be let through."""
        self._reopen_at = float("inf")
        self._move(OPEN, now)

    def reopens_in(self, now: float) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        return max(0.0, self._reopen_at - now) if self.state == OPEN else 0.0

    def _tripped(self) -> bool:
        if self._streak >= self.consecutive:
            return True
        seen = len(self._outcomes)
        failures = seen - sum(self._outcomes)
        return seen >= self.min_samples and failures / seen >= self.threshold

    def _open(self, now: float) -> None:
        self._reopen_at = now + self._cooldown_s
        self._move(OPEN, now)

    def _move(self, state: str, now: float) -> None:
        self.state = state
        self.transitions.append((now, state))


class LatencyModel:
    """Recent latencies of one lane, for adaptive timeouts and straggler detection.

    Latency is modelled per requested output token, since a request's time grows
    with its ``max_tokens``: ``expected(n)`` is a high quantile of seconds per
    token times ``n``, plus the fixed part seen on the fastest requests.
    """

    def __init__(self, size: int = 256, quantile: float = 0.95, min_samples: int = 20) -> None:
        self.quantile = quantile
        self.min_samples = min_samples
        self._per_token: collections.deque[float] = collections.deque(maxlen=size)
        self._floor: collections.deque[float] = collections.deque(maxlen=size)
        self._sorted: list[float] | None = None
        self._fresh = 0

    def observe(self, latency: float, max_tokens: float) -> None:
        """Record one successful attempt's latency for a request of ``max_tokens``."""
        self._per_token.append(latency / max(1.0, max_tokens))
        self._floor.append(latency)
        self._fresh -= 1
        if self._fresh <= 0:  # the quantile is recomputed every few answers, not on every one
            self._sorted, self._fresh = None, 16

    @property
    def ready(self) -> bool:
        """Whether enough samples were seen to predict anything."""
        return len(self._per_token) >= self.min_samples

    def expected(self, max_tokens: float) -> float | None:
        """A high-quantile latency for a request of ``max_tokens`` (None until ready)."""
        if not self.ready:
            return None
        if self._sorted is None:
            self._sorted = sorted(self._per_token)
            self._fastest = min(self._floor)
        values = self._sorted
        per_token = percentile(values, self.quantile * 100)
        return max(per_token * max(1.0, max_tokens), self._fastest)

    def timeout(self, max_tokens: float, factor: float, floor_s: float, ceiling_s: float) -> float:
        """The per-attempt timeout: ``factor`` × the expected latency, within [floor, ceiling]."""
        expected = self.expected(max_tokens)
        if expected is None:
            return ceiling_s
        return min(ceiling_s, max(floor_s, factor * expected))


class Lane:
    """One endpoint with its own flow control (``FlowControl``: budgets, learned limits, AIMD gate),
    breaker, latency model and server-load reading. ``client`` is anything with ``post``."""

    def __init__(self, spec: "PoolEndpoint", client: Transport, flow, breaker: LaneBreaker | None | object = ...) -> None:
        self.spec = spec
        self.client = client
        self.flow = flow
        self.limits = flow.limits
        self.gate = flow.gate
        self.adaptive = flow.settings.adaptive
        self.model = LatencyModel()
        # None: no breaker of its own (a lane alone, which the run's breaker judges: one per mode).
        self.breaker = LaneBreaker() if breaker is ... else breaker
        self.server = ServerLoad()
        self.outstanding = 0
        self.started = 0
        self.last_success = 0.0
        self.latest_sent_answered = 0.0
        self.disabled: str | None = None
        self.counts: collections.Counter[str] = collections.Counter()
        self.latencies = LogHistogram()  # the run's summary and metrics read these, every lane's together

    @property
    def label(self) -> str:
        """The endpoint's name in progress and summary."""
        return self.spec.label

    def rate(self) -> float:
        """Requests per second this lane can take: its concurrency over its latency, capped by its
        request budget, times its weight."""
        seconds = self.flow.latency.ewma or 1.0  # a lane yet unanswered is assumed to take a second
        rate = max(1, self.gate.limit) / max(seconds, 1e-3)
        rpm = getattr(self.limits, "rpm", 0)
        if rpm:
            rate = min(rate, rpm / 60.0)
        return rate * max(self.spec.weight, 1e-6)

    def load(self) -> float:
        """Seconds this lane needs for the work it holds (and its server's queue): lower is freer."""
        return (self.outstanding + self.server.waiting_share()) / self.rate()

    def on_reply(self, tokens: float, reply, now: float, sent: float = 0.0) -> None:
        """After an answer to a request sent at ``sent``: the lane's flow control, breaker and latency model."""
        if self.breaker is not None:
            self.breaker.record(True, now)
        self.last_success = now
        if sent > self.latest_sent_answered:
            self.latest_sent_answered = sent
        self.counts["ok"] += 1
        self.latencies.add(reply.latency)
        self.model.observe(reply.latency, tokens)
        self.flow.on_reply(tokens, reply)

    def on_error(self, exc: RequestError, now: float) -> str | None:
        """After a failed attempt: a 429 slows this lane only; others feed its breaker.
        Returns why this lane cannot go on (its key is refused, its quota spent), if it cannot."""
        self.counts[exc.code] += 1
        if self.breaker is not None and not isinstance(exc, RateLimitError):
            self.breaker.record(False, now)
        return self.flow.on_error(exc)

    def steer(self, text: str | None) -> None:
        """Take one ``/metrics`` reading; keep the running batch full behind a short queue."""
        self.server.update(text)
        self.flow.steered = self.server.available and self.adaptive  # one policy moves the gate
        if not self.flow.steered:
            return
        gate, server = self.gate, self.server
        target = server.target()
        if target is not None:
            gate.resize(target)
        elif self.outstanding >= gate.limit * 0.9:
            grown = gate.limit + max(2, gate.limit // 4)  # the server queues nothing now: grow
            ceiling = server.ceiling()
            gate.resize(grown if ceiling is None else max(gate.limit, min(grown, ceiling)))

    def disable(self, reason: str, now: float) -> None:
        """Take this lane out of the pool for good (its key was refused, its quota is spent)."""
        self.disabled = reason
        if self.breaker is None:
            self.breaker = LaneBreaker()
        self.breaker.force_open(now)

    def progressed_since(self, t: float) -> bool:
        """Whether any answer arrived on this lane after loop time ``t``."""
        return self.last_success > t

    def later_answered(self, t: float) -> bool:
        """Whether a request sent after loop time ``t`` has been answered: a server working through a
        queue answers in about the order it was asked, so one sent at ``t`` is then a straggler."""
        return self.latest_sent_answered > t


class Router:
    """Chooses a lane for each attempt: least load among lanes whose breaker allows."""

    def __init__(self, lanes: list[Lane]) -> None:
        if not lanes:
            raise ValueError("a pool needs at least one endpoint")
        self.lanes = lanes

    def pick(self, now: float, avoid: Lane | None = None) -> Lane | None:
        """The freest open lane (``avoid`` only when it is the sole choice), else None."""
        if len(self.lanes) == 1:
            lane = self.lanes[0]
            return lane if lane.breaker is None or lane.breaker.allows(now) else None
        best, best_load = None, float("inf")
        for lane in self.lanes:
            if not lane.breaker.allows(now):
                continue
            load = lane.load() + (1e6 if lane is avoid else 0.0)
            if load < best_load:
                best, best_load = lane, load
        return best

    def next_reopen(self, now: float) -> float:
        """Seconds until some open lane takes a probe."""
        return min(lane.breaker.reopens_in(now) if lane.breaker is not None else 0.0 for lane in self.lanes)

    def all_open(self, now: float) -> bool:
        """Whether no lane takes traffic now."""
        return all(lane.breaker is not None and not lane.breaker.allows(now) for lane in self.lanes)
