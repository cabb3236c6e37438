"""Run policy: when to stop a run that keeps failing (a failure rate over a window, a streak of one
final error) and how long to wait before a retry."""

from __future__ import annotations

import collections

from tenacity import wait_random_exponential

from ..exceptions import AuthenticationError, RateLimitError, RequestError


class FailureBreaker:
    """Trips when most of the last ``window`` attempts failed.

    It judges only a full window (``min_samples`` defaults to the window), so an
    early unlucky streak at a high but survivable fault rate does not stop a
    run: at 50 % faults, 80 of 100 attempts failing has odds below 1e-9.
    """

    def __init__(self, window: int = 100, threshold: float = 0.8, min_samples: int | None = None) -> None:
        self.threshold = threshold
        self.min_samples = window if min_samples is None else min(min_samples, window)
        self._outcomes: collections.deque[bool] = collections.deque(maxlen=window)
        self._failures = 0
        self.last_error = ""

    def record(self, ok: bool, error: str = "") -> bool:
        """Record one attempt; return True when the failure rate says stop."""
        if len(self._outcomes) == self._outcomes.maxlen and not self._outcomes[0]:
            self._failures -= 1
        self._outcomes.append(ok)
        if ok:
            return False
        self._failures += 1
        self.last_error = error
        return (
            len(self._outcomes) >= self.min_samples
            and self._failures / len(self._outcomes) >= self.threshold
        )

    def describe(self) -> str:
        """Why the breaker tripped, in one line."""
        return f"{self._failures} of the last {len(self._outcomes)} attempts failed; last error: {self.last_error}"


class FinalStreak:
    """Counts records in a row that ended with the same final error (say, every one a 400)."""

    def __init__(self, limit: int = 20) -> None:
        self.limit = limit
        self.key: tuple | None = None
        self.count = 0

    def success(self) -> None:
        """A record succeeded: the streak is broken."""
        self.count = 0

    def failure(self, key: tuple) -> bool:
        """One record failed for good with ``key``; True when the streak reached the limit."""
        self.count = self.count + 1 if key == self.key else 1
        self.key = key
        return self.count >= self.limit


class _Attempt:
    """The one field of tenacity's retry state that its wait strategies read."""

    __slots__ = ("attempt_number",)

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number


class RunPolicy:
    """The engine's run policy: backoff between attempts, the run breaker (only for a lane alone:
    a pool's lanes have breakers of their own, one breaker per mode) and the final-error streak."""

    def __init__(self, settings, alone: bool) -> None:
        self.settings = settings
        self.breaker = FailureBreaker(settings.breaker_window, settings.breaker_threshold) if alone else None
        self.streak = FinalStreak()

    def wait_for(self, exc: BaseException | None, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1``: the server's hint (capped), else backoff with full jitter."""
        s = self.settings
        if isinstance(exc, RateLimitError) and exc.retry_after is not None:
            return min(exc.retry_after, s.max_retry_wait_s)
        return wait_random_exponential(multiplier=s.backoff_base_s, max=s.backoff_max_s)(_Attempt(attempt))

    def on_answer(self) -> None:
        """An attempt was answered."""
        if self.breaker is not None:
            self.breaker.record(True)

    def on_attempt_failed(self, exc: RequestError) -> str | None:
        """An attempt failed; why the run must stop (the run breaker tripped), or None."""
        if self.breaker is None or isinstance(exc, (RateLimitError, AuthenticationError)):
            return None  # a 429 slows the lane; a refused key stops it on its own
        if self.breaker.record(False, f"{exc.code}: {exc.message}"[:300]):
            return f"the endpoint keeps failing: {self.breaker.describe()}"
        return None

    def on_record_failed(self, exc: RequestError) -> str | None:
        """A record failed for good; a long streak of the same final error stops the run."""
        if not exc.retryable and self.streak.failure((exc.code, exc.status, exc.message[:200])):
            return f"{self.streak.count} records in a row failed with the same error: {exc.message[:300]}"
        return None

    def on_record_done(self) -> None:
        """A record succeeded: a streak of final errors is broken."""
        if self.streak.count:
            self.streak.success()
