"""An event loop whose clock jumps instead of sleeping, for limiter tests."""

from __future__ import annotations

import asyncio
import selectors


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self, loop: "FakeClockLoop") -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout=None):
        events = super().select(0)
        # Each loop iteration costs one virtual microsecond, as real time would pass.
        self._loop.now += timeout if (not events and timeout) else 1e-6
        return events


class FakeClockLoop(asyncio.SelectorEventLoop):
    """``loop.time()`` is virtual: a wait of N seconds advances it by N at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def run_fake(coro):
    """Run ``coro`` on a fresh fake-clock loop; return (result, virtual seconds elapsed)."""
    loop = FakeClockLoop()
    try:
        start = loop.time()
        result = loop.run_until_complete(coro)
        elapsed = loop.time() - start
        return result, elapsed
    finally:
        pending = asyncio.all_tasks(loop)  # background tasks left (a watchdog), ended as asyncio.run does
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
