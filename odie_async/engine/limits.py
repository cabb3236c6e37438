"""Client-side flow control: rate budgets, a server-imposed pause, adaptive concurrency.

``RateLimits`` keeps requests-per-minute and tokens-per-minute budgets in leaky
buckets of our own (``LeakyBucket``: aiolimiter's public API can neither resize a
bucket for a learned limit nor settle it against reported usage). Each bucket
holds half a second of budget, so the
client never bursts more than a server that enforces its limit over one second
(as OpenAI and the mock server do) will accept. Token estimates made before a
call are settled against the ``usage`` the server reports after it.

``AdaptiveConcurrency`` is an AIMD gate: it shrinks by 30 % when the server
signals congestion (429s, latency far above its baseline) and grows back by one
slot per round of successes.
"""

from __future__ import annotations

import asyncio
import collections
import re

BURST_SECONDS = 0.5
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Parse a reset or retry hint: ``"1.5"``, ``"20ms"``, ``"6m0s"`` → seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts:
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


class LeakyBucket:
    """``capacity`` units of budget, draining at ``rate`` units a second; waiters are served in order.

    ``set_rate`` resizes it in place (requests already waiting keep their turn at the new
    rate) and ``settle`` corrects what was taken once the real cost is known.
    """

    def __init__(self, per_minute: float, burst_seconds: float) -> None:
        self.capacity = self.rate = 0.0
        self.level = 0.0
        self._last: float | None = None
        self._turn = asyncio.Lock()
        self._resize(per_minute, burst_seconds)

    def _resize(self, per_minute: float, burst_seconds: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = min(self.level, self.capacity)

    def _leak(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._last is not None:
            self.level = max(0.0, self.level - (now - self._last) * self.rate)
        self._last = now

    async def acquire(self, amount: float = 1.0) -> None:
        """Wait until ``amount`` (at most the capacity) fits, then take it."""
        amount = min(amount, self.capacity)
        if not self._turn.locked():
            self._leak()
            if self.level + amount <= self.capacity:  # the fast path: no coroutine waits
                self.level += amount
                return
        async with self._turn:
            while True:
                self._leak()
                if self.level + amount <= self.capacity:
                    self.level += amount
                    return
                await asyncio.sleep((self.level + amount - self.capacity) / self.rate)

    def set_rate(self, per_minute: float, burst_seconds: float) -> None:
        """Change the rate and capacity in place."""
        self._leak()
        self._resize(per_minute, burst_seconds)

    def settle(self, delta: float) -> None:
        """Add ``delta`` (negative to refund) to what has been taken from the bucket."""
        self._leak()
        self.level = max(0.0, self.level + delta)

    def spend(self) -> "LeakyBucket":
        """Use the whole budget up now (a replaced limit must not add a burst); returns itself."""
        self._leak()
        self.level = self.capacity
        return self


class RateLimits:
    """Requests-per-minute and tokens-per-minute budgets plus a shared pause.

    A limit of 0 means unlimited. ``acquire`` waits for any pause the server
    imposed (``Retry-After``, exhausted ``x-ratelimit-remaining-*``), then for
    one request and the estimated tokens.
    """

    def __init__(self, rpm: float = 0, tpm: float = 0, burst_seconds: float = BURST_SECONDS) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._burst = burst_seconds
        self._requests = self._bucket(rpm, burst_seconds)
        self._tokens = self._bucket(tpm, burst_seconds)
        self._paused_until = 0.0

    @staticmethod
    def _bucket(per_minute: float, burst_seconds: float) -> LeakyBucket | None:
        return LeakyBucket(per_minute, burst_seconds) if per_minute else None

    def set_rpm(self, rpm: float) -> None:
        """Set the requests budget (a limit learned from the endpoint); a new one starts spent, no burst."""
        self.rpm = rpm
        if self._requests is None:
            self._requests = LeakyBucket(rpm, self._burst).spend()
        else:
            self._requests.set_rate(rpm, self._burst)

    def set_tpm(self, tpm: float) -> None:
        """Set the tokens budget (a limit learned from the endpoint); a new one starts spent, no burst."""
        self.tpm = tpm
        if self._tokens is None:
            self._tokens = LeakyBucket(tpm, self._burst).spend()
        else:
            self._tokens.set_rate(tpm, self._burst)

    @property
    def active(self) -> bool:
        """Whether any budget or pause can make ``acquire`` wait."""
        return bool(self._requests or self._tokens or self._paused_until)

    async def acquire(self, tokens: float = 0) -> None:
        """Wait until one request of about ``tokens`` tokens may be sent."""
        await self._wait_pause()
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None:
            take = min(tokens, self._tokens.capacity)
            await self._tokens.acquire(take)
            if tokens > take:
                self._tokens.settle(tokens - take)

    def settle_tokens(self, estimated: float, actual: float) -> None:
        """Correct the token budget once the server reported real usage."""
        if self._tokens is not None and actual >= 0:
            self._tokens.settle(actual - estimated)

    def pause_for(self, seconds: float) -> None:
        """Hold every sender back for ``seconds`` (a server's retry or reset hint)."""
        until = asyncio.get_running_loop().time() + seconds
        self._paused_until = max(self._paused_until, until)

    async def _wait_pause(self) -> None:
        loop = asyncio.get_running_loop()
        while self._paused_until:
            delay = self._paused_until - loop.time()
            if delay <= 0:
                self._paused_until = 0.0
                return
            await asyncio.sleep(delay)


class AdaptiveConcurrency:
    """A semaphore whose size follows congestion: AIMD between ``minimum`` and ``maximum``."""

    def __init__(self, maximum: int, minimum: int = 1, decrease: float = 0.7) -> None:
        if maximum < 1:
            raise ValueError("concurrency must be at least 1")
        self.maximum = maximum
        self.minimum = max(1, min(minimum, maximum))
        self.limit = maximum
        self.active = 0
        self.decreases = 0
        self._decrease = decrease
        self._credit = 0.0
        self._cooldown_until = 0.0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def try_acquire(self) -> bool:
        """Take a slot if one is free now, without a coroutine (the fast path); False if none is."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting while ``limit`` slots are busy."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back and wake waiters while there is room."""
        self.active -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        """Set the limit (within ``minimum``..``maximum``) and let waiters in if it grew."""
        self.limit = max(self.minimum, min(self.maximum, int(limit)))
        self._wake()

    def on_success(self) -> None:
        """Additive increase: one more slot per ``limit`` successes."""
        if self.limit >= self.maximum:
            return
        self._credit += 1.0 / self.limit
        if self._credit >= 1.0:
            self._credit = 0.0
            self.limit += 1
            self._wake()

    def on_congestion(self, now: float, cooldown: float = 1.0) -> None:
        """Multiplicative decrease, at most once per ``cooldown`` seconds."""
        if now < self._cooldown_until:
            return
        self._cooldown_until = now + cooldown
        self.limit = max(self.minimum, int(self.limit * self._decrease))
        self._credit = 0.0
        self.decreases += 1

    def _wake(self) -> None:
        while self._waiters and self.active < self.limit:
            future = self._waiters.popleft()
            if not future.done():
                self.active += 1
                future.set_result(None)


class LatencyWatch:
    """Flags congestion when the smoothed latency climbs far above its baseline."""

    def __init__(self, factor: float = 3.0, margin_s: float = 0.5, alpha: float = 0.05) -> None:
        self.factor = factor
        self.margin_s = margin_s
        self.alpha = alpha
        self.ewma: float | None = None
        self.baseline: float | None = None

    def observe(self, latency: float) -> bool:
        """Record one latency; return True when it signals congestion."""
        if self.ewma is None:
            self.ewma = self.baseline = latency
            return False
        self.ewma += self.alpha * (latency - self.ewma)
        self.baseline = min(self.baseline * 1.001, self.ewma)
        return self.ewma > self.factor * self.baseline and self.ewma - self.baseline > self.margin_s


def header_limit(text: str | None) -> float | None:
    """A positive ``x-ratelimit-limit-*`` value, or None when absent or unusable."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value < float("inf") else None


class RateLearner:
    """Learns a request rate from 429s when the endpoint sends no limit headers.

    On a 429 (at most once per ``cooldown`` seconds) the rate becomes
    ``decrease`` times the rate of answers since the previous decrease; after
    ``cooldown`` seconds without a 429 it grows by ``increase`` of itself, once
    per ``cooldown``. It costs nothing per answer until the first 429.
    """

    def __init__(self, decrease: float = 0.8, increase: float = 0.05, cooldown: float = 2.0) -> None:
        self.decrease = decrease
        self.increase = increase
        self.cooldown = cooldown
        self.rpm: float = 0.0
        self._mark = (0.0, 0)  # when the answer count was last taken, and the count
        self._last_429 = float("-inf")
        self._last_raise = float("-inf")

    def start(self, now: float) -> None:
        """Begin measuring the answer rate."""
        self._mark = (now, 0)

    def on_429(self, now: float, answered: int) -> float | None:
        """Return the lowered rate (requests per minute), or None inside the cooldown."""
        recent = now - self._last_429 < self.cooldown
        self._last_429 = now
        if self.rpm and recent:
            return None
        since, count = self._mark
        observed = (answered - count) / max(now - since, 1.0) * 60.0
        base = min(self.rpm, observed) if self.rpm else observed
        self.rpm = max(6.0, base * self.decrease)
        self._mark = (now, answered)
        return self.rpm

    def probe_up(self, now: float, answered: int) -> float | None:
        """A raised rate once ``cooldown`` passed without a 429 (and since the last raise), else None."""
        if now - self._last_429 < self.cooldown or now - self._last_raise < self.cooldown:
            return None
        self._last_raise = now
        self.rpm *= 1.0 + self.increase
        return self.rpm
