"""A vLLM start that pays once: what it is doing while it starts, and whether to compile at all.

- ``StartWatch`` reads the server's log as it grows and names the phase (loading the model,
  compiling, warming up, ...), so the start-up line says more than "waiting".
- vLLM keeps its compiled graphs under ``VLLM_CACHE_ROOT`` (set to the project's cache folder), so
  only a machine's first compiled start pays for compiling. ``remember_compiled`` notes a
  successful compiled start for a server configuration; ``compiled_before`` asks.
- ``eager_is_sooner``: for a short job on a machine where nothing is compiled yet, eager mode
  starts sooner and the slower generation does not make up the difference. The figures are
  measured (``benchmarks/bench_start.py``).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..paths import cache_dir

# Measured on the 2-core machine for the embedded model (docs/benchmarks.md, "Start-up"):
# seconds to answer, cold compiled and eager, and output tokens/s at bulk load in each mode.
COMPILED_START_S, EAGER_START_S = 100.0, 49.0
COMPILED_TOK_S, EAGER_TOK_S = 186.0, 135.0

# (pattern in vLLM's log, the phase it starts): a line takes its first match, and the log's last one wins.
_PHASES = (
    (re.compile(r"non-default args|Resolved architecture"), "reading the model's configuration"),
    (re.compile(r"Initializing a V1 LLM engine"), "starting its engine"),
    (re.compile(r"Starting to load model|Loading weights|Loading model"), "loading the model"),
    (re.compile(r"Dynamo bytecode transform|torch\.compile|Compiling a graph|compile range|for the compilation",
                re.I), "compiling"),
    (re.compile(r"Directly load the compiled graph|load.*compiled graph|from the cache", re.I),
     "loading its compiled graphs"),
    (re.compile(r"[Ww]arming up|warmup|KV cache size|Maximum concurrency"), "warming up"),
    (re.compile(r"Starting vLLM API server|Application startup complete|Available routes"),
     "starting its API server"),
)
_READ_LIMIT = 1 << 20


class StartWatch:
    """Follows a growing log file and reports the start-up phase it shows."""

    def __init__(self, path: Path | None) -> None:
        self.path, self._offset, self._phase, self.changed = path, 0, "starting", False

    def phase(self) -> str:
        """The latest phase the log shows; ``changed`` says whether it moved since the last call."""
        before = self._phase
        for line in self._new_lines():
            self._phase = next((name for pattern, name in _PHASES if pattern.search(line)), self._phase)
        self.changed = self._phase != before
        return self._phase

    def _new_lines(self) -> list[str]:
        if self.path is None:
            return []
        try:
            with open(self.path, "rb") as log_file:
                log_file.seek(self._offset)
                data = log_file.read(_READ_LIMIT)
        except OSError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._offset += end
        return data[:end].decode("utf-8", "replace").splitlines()


def _marker(key: list[str]) -> Path:
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:32]
    return cache_dir() / "vllm" / "compiled" / digest


def compiled_before(key: list[str]) -> bool:
    """Whether a compiled server of this configuration started on this machine before."""
    return _marker(key).exists() and (cache_dir() / "vllm" / "torch_compile_cache").is_dir()


def remember_compiled(key: list[str]) -> None:
    """Note that a compiled server of this configuration started (its graphs are now cached)."""
    marker = _marker(key)
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
    except OSError:
        pass  # only a hint: the next start compiles or runs eager again


def eager_is_sooner(output_tokens: int | None) -> bool:
    """True when a job of ``output_tokens`` finishes sooner in eager mode, compiling from scratch."""
    if not output_tokens:
        return False
    eager = EAGER_START_S + output_tokens / EAGER_TOK_S
    compiled = COMPILED_START_S + output_tokens / COMPILED_TOK_S
    return eager < compiled
