"""The requests a benchmark sends: the user's own Batch API input file, or synthetic prompts.

Every request is sent streamed (``"stream": true``) so that time to first token
and inter-token latency are measured per request. Input lines are validated
before anything is sent, with ``FILE:LINE`` on the first bad one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.batchfile import BatchReader
from ..exceptions import ConfigError, InputError

STREAMABLE = ("/v1/chat/completions", "/v1/completions")
KEPT = 10_000  # requests kept in memory; a bench rarely sends more distinct ones
_FILLER = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
           "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


@dataclass
class Workload:
    """Requests to cycle through, and what they are."""

    requests: list[tuple[str, dict]]
    description: str
    source: dict = field(default_factory=dict)
    _cycle: itertools.cycle | None = field(default=None, repr=False)

    def next(self) -> tuple[str, dict]:
        """The next request (path, body), round-robin over the workload."""
        if self._cycle is None:
            self._cycle = itertools.cycle(self.requests)
        return next(self._cycle)

    def with_model(self, model: str | None) -> "Workload":
        """Every body with ``model`` set (bodies without one get it; ``model`` None: unchanged)."""
        if model:
            for _path, body in self.requests:
                body["model"] = model
        return self

    @property
    def models(self) -> set[str]:
        """The models the bodies name."""
        return {body["model"] for _path, body in self.requests if body.get("model")}


def parse_synthetic(text: str) -> dict[str, int]:
    """``prompt_tokens=256,output_tokens=128[,count=1000]`` → a dict; a ``ConfigError`` when malformed."""
    spec = {"prompt_tokens": 256, "output_tokens": 128, "count": 1000}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in spec:
            raise ConfigError(f"--synthetic: expected KEY=N with KEY one of {', '.join(spec)}, got {part!r}")
        try:
            spec[key.strip()] = int(value)
        except ValueError:
            raise ConfigError(f"--synthetic: {key.strip()} must be a whole number, got {value!r}") from None
        if spec[key.strip()] < 1:
            raise ConfigError(f"--synthetic: {key.strip()} must be at least 1")
    return spec


def synthetic(spec: dict[str, int], model: str | None = None, path: str = "/v1/chat/completions") -> Workload:
    """``count`` distinct requests to ``path`` of about ``prompt_tokens`` words asking for ``output_tokens``."""
    if path not in STREAMABLE:
        raise ConfigError(f"synthetic requests go to {' or '.join(STREAMABLE)}, not {path}")
    requests = []
    for i in range(spec["count"]):
        words = [f"r{i}"] + [_FILLER[(i + j) % len(_FILLER)] for j in range(spec["prompt_tokens"] - 1)]
        prompt = " ".join(words)
        body = {"messages": [{"role": "user", "content": prompt}]} if path.endswith("chat/completions") else {"prompt": prompt}
        body["max_tokens"] = spec["output_tokens"]
        if model:
            body["model"] = model
        requests.append((path, body))
    label = f"synthetic: {spec['prompt_tokens']} prompt words, {spec['output_tokens']} output tokens"
    return Workload(requests, label, {"synthetic": spec, "path": path})


def from_file(path: str | Path, model: str | None = None) -> Workload:
    """The completion requests of a Batch API input file (all lines checked, the first ``KEPT`` kept)."""
    if not Path(path).is_file():
        raise ConfigError(f"input file {path} does not exist")
    requests, lines = [], 0
    for line in BatchReader(path):
        if line.url not in STREAMABLE:
            raise InputError(str(path), line.line_no, f"url {line.url} cannot be streamed (use {' or '.join(STREAMABLE)})")
        lines += 1
        if len(requests) < KEPT:
            requests.append((line.url, line.body))
    if not requests:
        raise ConfigError(f"input file {path} holds no requests")
    workload = Workload(requests, f"{path}: {lines:,} requests" + (f" (first {KEPT:,} used)" if lines > KEPT else ""),
                        {"input": str(path), "lines": lines})
    return workload.with_model(model)
