"""What ``odie generate`` adds to the run's metrics file: the funnel through the stages and the filter."""

from __future__ import annotations

from collections import Counter
from typing import Callable

from ..engine.metrics_log import MetricsLog

__all__ = ["METRICS", "MetricsLog", "funnel"]

METRICS = "metrics.jsonl"


def funnel(flow) -> Callable[[], dict]:
    """A sampler of ``flow``: per stage done/expected, and per variant kept and dropped by reason."""
    seen = 0
    kept: Counter = Counter()
    dropped: dict[str, Counter] = {}

    def sample() -> dict:
        nonlocal seen
        for outcome in flow.outcomes[seen:]:  # outcomes only grow: count each once
            if outcome.kept:
                kept[outcome.variant] += 1
            else:
                dropped.setdefault(outcome.variant, Counter())[outcome.reason or "unknown"] += 1
        seen = len(flow.outcomes)
        expected = flow.expected()
        return {
            "stages": {name: {"done": flow.progress[name], "expected": total} for name, total in expected.items()},
            "filter": {v: {"kept": kept[v], "dropped": dict(dropped.get(v, {}))} for v in flow.variants},
        }

    return sample
