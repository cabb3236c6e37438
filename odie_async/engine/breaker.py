"""When to stop a run that keeps failing: a failure rate over a window, or a streak of one final error."""

from __future__ import annotations

import collections


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
