"""What a self-hosted server says about its own load, from its Prometheus ``/metrics``.

vLLM and SGLang publish how many requests are running, how many wait in their
queue and how full the KV cache is. A lane that can read these keeps the
server's running batch full with a short queue in front of it, no deeper:
requests held in our queue cost nothing, while requests held in the server's
queue run into timeouts and get sent twice.
"""

from __future__ import annotations

import re

# Gauges by server: (running, waiting, cache usage 0..1).
_GAUGES = {
    "running": ("vllm:num_requests_running", "sglang:num_running_reqs"),
    "waiting": ("vllm:num_requests_waiting", "sglang:num_queue_reqs"),
    "cache": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "vllm:cpu_cache_usage_perc",
              "sglang:token_usage"),
}
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Sum each known gauge over its label sets; names that are absent are left out."""
    wanted = {name: key for key, names in _GAUGES.items() for name in names}
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or match.group(1) not in wanted:
            continue
        key = wanted[match.group(1)]
        try:
            found[key] = found.get(key, 0.0) + float(match.group(2))
        except ValueError:
            continue
    return found


class ServerLoad:
    """The latest reading of one server's load, and the in-flight count it calls for."""

    def __init__(self, queue_margin: float = 0.1, min_margin: int = 2) -> None:
        self.available = False
        self.running = 0.0
        self.waiting = 0.0
        self.cache = 0.0
        self.max_running = 0.0
        self.queued = False  # the server once held a queue: it runs no more than max_running then
        self.queue_margin = queue_margin
        self.min_margin = min_margin

    def update(self, text: str | None) -> None:
        """Take one ``/metrics`` body (None: the server has none)."""
        values = parse_metrics(text) if text else {}
        if "running" not in values or "waiting" not in values:
            self.available = False
            return
        self.available = True
        self.running, self.waiting = values["running"], values["waiting"]
        self.cache = values.get("cache", 0.0)
        self.max_running = max(self.max_running, self.running)
        self.queued = self.queued or self.waiting > self._margin() or self.cache >= 0.95

    def waiting_share(self) -> float:
        """The server's queue depth, for routing (0 where unknown)."""
        return self.waiting if self.available else 0.0

    def target(self) -> int | None:
        """The in-flight count that keeps the batch full behind a short queue.

        While requests wait, the server runs all it can: its capacity is what is
        running, and we allow a margin on top. Without a queue (and cache to
        spare) the server can take more: None leaves the gate free to grow.
        """
        if not self.available:
            return None
        margin = self._margin()
        if self.waiting > margin or self.cache >= 0.95:
            return max(1, int(self.running) + margin)
        return None

    def ceiling(self) -> int | None:
        """How far the gate may grow while no queue shows: the most the server was seen running, plus
        the margin, once it has queued (a moment without a queue at its capacity is not room for more);
        None before. Keeping the margin in flight lets the server show it can run more, if it can."""
        return int(self.max_running) + self._margin() if self.available and self.queued else None

    def _margin(self) -> int:
        return max(self.min_margin, int(self.max_running * self.queue_margin))
