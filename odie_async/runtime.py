"""Running coroutines on the fastest event loop available."""

from __future__ import annotations

import asyncio


def run_async(coro):
    """``asyncio.run`` on uvloop when it is installed (about 2× less loop overhead)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
    return uvloop.run(coro)
