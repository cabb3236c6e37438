"""Process-wide plumbing: the event loop, offline model libraries, stop signals."""

from __future__ import annotations

import asyncio
import os

OFFLINE_HF = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_async(coro):
    """``asyncio.run`` on uvloop when it is installed (about 2× less loop overhead)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


def offline_hf(force: bool = False) -> None:
    """Keep Hugging Face libraries off the network: every model comes from a local folder.

    ``force`` overrides a value the user set (model conversion must never reach a hub).
    """
    for name, value in OFFLINE_HF.items():
        if force:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)
