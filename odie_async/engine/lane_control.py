"""How one lane reacts to what its endpoint says: budgets, pauses, learned limits, its gate.

``FlowControl`` owns one endpoint's rate budgets, adaptive concurrency gate,
latency watch and limit learner. Its lane tells it about each answer and each
error; it answers with a reason the lane cannot go on (the key is refused, the
quota is spent), or None. Run policy (retries, the run breaker, the streak of
one final error) is the engine's.

The gate has one controller with two policies: AIMD on answers and 429s, or,
once ``steered`` (the server publishes its load), the server's own queue
figures. Only one of them moves the gate at a time.
"""

from __future__ import annotations

import asyncio

import structlog

from .client import Reply
from ..exceptions import AuthenticationError, RateLimitError, RequestError
from .limits import AdaptiveConcurrency, LatencyWatch, RateLearner, RateLimits, header_limit, parse_duration
from .settings import EngineSettings
from .stats import RunStats

log = structlog.get_logger(__name__)


class FlowControl:
    """Flow-control state of one engine and its reactions to answers and errors."""

    def __init__(self, settings: EngineSettings, stats: RunStats, limits: RateLimits | None = None) -> None:
        self.settings = settings
        self.stats = stats
        self.limits = limits if limits is not None else RateLimits(settings.rpm, settings.tpm)
        self.gate = AdaptiveConcurrency(settings.concurrency, minimum=1)
        if settings.initial_concurrency:
            self.gate.resize(settings.initial_concurrency)
        self.latency = LatencyWatch()
        self.steered = False  # the server's load figures steer the gate: AIMD stands aside
        self.learner = RateLearner()
        # With no limit given, the first request goes alone so that the endpoint's
        # limit headers (if any) are known before the others are sent.
        # An injected limiter (a cluster-wide budget) owns the limits: nothing to learn here.
        self.learning = settings.learn_limits and not (settings.rpm or settings.tpm) and limits is None
        self.probe: asyncio.Event | None = asyncio.Event() if self.learning else None
        self._learned_rpm = False

    def start(self, now: float) -> None:
        """Begin measuring (the answer rate the learner compares against)."""
        self.learner.start(now)

    def on_error(self, exc: RequestError) -> str | None:
        """React to one failed attempt; return why this endpoint cannot go on, if it cannot."""
        if isinstance(exc, RateLimitError):
            return self._on_429(exc)
        if isinstance(exc, AuthenticationError):
            return f"the endpoint refused the API key ({exc.message}); check the key's environment variable"
        return None

    def _on_429(self, exc: RateLimitError) -> str | None:
        self.stats.rate_limited += 1
        now = asyncio.get_running_loop().time()
        if exc.retry_after:
            if exc.retry_after > self.settings.max_retry_wait_s:
                return (f"the endpoint asks to wait {exc.retry_after:.0f} s (quota exhausted?), more than "
                        f"--max-retry-wait {self.settings.max_retry_wait_s:g} s; rerun to resume")
            self.limits.pause_for(exc.retry_after)
        if self.learning:
            self._learn(getattr(exc, "limit_requests", None), getattr(exc, "limit_tokens", None))
            if not self._learned_rpm:
                rpm = self.learner.on_429(now, self.stats.succeeded)
                if rpm is not None:
                    self.limits.set_rpm(rpm)
                    log.info("rate learned from 429s", rpm=round(rpm, 1))
        if self.settings.adaptive and not self.steered:
            self.gate.on_congestion(now)
        return None

    def _learn(self, limit_requests: str | None, limit_tokens: str | None) -> None:
        """Take the endpoint's own limits from its ``x-ratelimit-limit-*`` headers."""
        rpm, tpm = header_limit(limit_requests), header_limit(limit_tokens)
        if rpm and rpm * 0.97 != self.limits.rpm:
            self.limits.set_rpm(rpm * 0.97)  # a little under: two clocks never agree exactly
            self._learned_rpm = True
            log.info("rate limit learned from the endpoint", rpm=rpm)
        if tpm and tpm * 0.97 != self.limits.tpm:
            self.limits.set_tpm(tpm * 0.97)
            log.info("token limit learned from the endpoint", tpm=tpm)

    def on_reply(self, tokens: float, reply: Reply) -> None:
        """React to one successful answer: settle tokens, honour exhausted budgets, grow the gate."""
        if self.learning:
            self._learn_from_reply(reply)
        if self.limits.tpm:
            self.limits.settle_tokens(tokens, reply.total_tokens)
        if reply.remaining_requests == "0" or reply.remaining_tokens == "0":
            reset = reply.reset_requests if reply.remaining_requests == "0" else reply.reset_tokens
            self.limits.pause_for(min(parse_duration(reset) or 1.0, self.settings.max_retry_wait_s))
        if self.settings.adaptive:
            congested = self.latency.observe(reply.latency)  # the router reads its average either way
            if self.steered:
                return
            if congested:
                self.gate.on_congestion(asyncio.get_running_loop().time())
            else:
                self.gate.on_success()

    def _learn_from_reply(self, reply: Reply) -> None:
        if reply.limit_requests is not None or reply.limit_tokens is not None:
            self._learn(reply.limit_requests, reply.limit_tokens)
        elif self.learner.rpm and not self._learned_rpm:
            rpm = self.learner.probe_up(asyncio.get_running_loop().time(), self.stats.succeeded)
            if rpm is not None:
                self.limits.set_rpm(rpm)
