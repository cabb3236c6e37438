"""Shared test helpers: request files, running coroutines, reading results."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson


def chat_line(custom_id: str, text: str = "", max_tokens: int = 8) -> bytes:
    body = {"model": "mock-model", "messages": [{"role": "user", "content": text or f"prompt {custom_id}"}], "max_tokens": max_tokens}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}) + b"\n"


def write_requests(path: Path, n: int, prefix: str = "r") -> Path:
    path.write_bytes(b"".join(chat_line(f"{prefix}{i}") for i in range(n)))
    return path


def ids_in(*paths: Path) -> Counter:
    counts: Counter = Counter()
    for path in paths:
        if path.exists():
            for raw in path.read_bytes().splitlines():
                counts[orjson.loads(raw)["custom_id"]] += 1
    return counts


def run(coro):
    return asyncio.run(coro)
