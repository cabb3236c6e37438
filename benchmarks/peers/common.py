"""What every contender's runner shares: its options, the input, its output rows and its meter.

Runners run inside the contender's own environment, so this module uses the
standard library only. Each runner reads the same OpenAI Batch API input file,
writes one JSON line ``{"custom_id", "content"}`` per answered record (unless the
tool has an output format of its own, named in the harness), and prints one
``BENCH {...}`` line with the wall and CPU seconds of its working phase.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

API_KEY = "sk-mock"  # the mock checks no key; tools that insist on one get this
MODEL = "mock-model"


@dataclass(frozen=True)
class Record:
    """One input record: its id, its chat messages and its completion budget."""

    custom_id: str
    messages: list
    max_tokens: int

    @property
    def prompt(self) -> str:
        """The user turn's text (every benchmark record has exactly one)."""
        return self.messages[-1]["content"]


def parse_args(description: str) -> argparse.Namespace:
    """The options every runner takes; 0 for ``--rpm``/``--tpm`` means no limit."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--state-dir", required=True, help="the tool's own cache/checkpoint folder")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--rpm", type=float, default=0)
    parser.add_argument("--tpm", type=float, default=0)
    parser.add_argument("--max-attempts", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=30.0)
    return parser.parse_args()


def read_input(path: str) -> list[Record]:
    """The records of a Batch API input file."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            body = row["body"]
            records.append(Record(row["custom_id"], body["messages"], int(body.get("max_tokens") or 16)))
    return records


def cpu_seconds() -> float:
    """User + system CPU of this process and of its children that were waited for."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@contextmanager
def meter(**extra):
    """Time the working phase (after imports and set-up) and print it as ``BENCH {json}``."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    try:
        yield extra
    finally:
        figures = {"work_wall_s": time.perf_counter() - wall, "work_cpu_s": cpu_seconds() - cpu, **extra}
        print("BENCH " + json.dumps(figures), flush=True)
        sys.stdout.flush()
