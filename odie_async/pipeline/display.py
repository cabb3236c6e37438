"""The live progress line of ``odie generate``: every stage's done/expected, rates, ETA."""

from __future__ import annotations

import contextlib

from ..engine.progress import ProgressLine
from ..engine.stats import RunStats
from .. import notebook
from .registry import STAGES

SHORT = {name: spec.label for name, spec in STAGES.items()} | {"scored": "scored"}


def done_of(progress, expected: dict[str, int]) -> tuple[int, int]:
    """``(items done, items expected)`` over every stage."""
    return sum(min(progress[n], t) for n, t in expected.items()), sum(expected.values())


def render(progress, expected: dict[str, int], stats: RunStats, kept: int, dropped: int) -> str:
    """``[generate] instr 5/5 texts 3/5 ... | kept 2 dropped 1 | 4.1 req/s 310 tok/s | ETA 0m40s``."""
    parts = [f"{SHORT.get(name, name)} {progress[name]}/{total}" for name, total in expected.items()]
    elapsed = max(stats.elapsed, 1e-9)
    tokens = stats.prompt_tokens + stats.completion_tokens
    done, total = done_of(progress, expected)
    done_share = done / max(1, total)
    eta = elapsed * (1 - done_share) / done_share if done_share > 0 else None
    eta_text = "--" if eta is None else f"{int(eta) // 60}m{int(eta) % 60:02d}s"
    return (f"[generate] {' '.join(parts)} | kept {kept} dropped {dropped} | "
            f"{stats.done / elapsed:.1f} req/s {tokens / elapsed:.0f} tok/s cached {stats.resumed} | ETA {eta_text}")


class StageProgress(ProgressLine):
    """The pipeline's line: redrawn on a terminal, printed every ``interval`` seconds when piped."""

    def __init__(self, flow, stats: RunStats, stream=None, interval: float | None = None) -> None:
        super().__init__(stats, label="generate", stream=stream, interval=interval)
        self.flow = flow

    def line(self) -> str:
        """The current line."""
        kept = sum(o.kept for o in self.flow.outcomes)
        return render(self.flow.progress, self.flow.expected(), self.stats, kept, len(self.flow.outcomes) - kept)


def progress_for(flow, stats: RunStats, show: bool):
    """The run's progress display: none, a terminal line, or a notebook bar (see ``notebook.wanted``)."""
    if not show:
        return contextlib.nullcontext()
    if notebook.wanted():
        line = StageProgress(flow, stats)
        return notebook.NotebookBar("generate", lambda: done_of(flow.progress, flow.expected()),
                           lambda: line.line().split(" | ", 1)[1])
    return StageProgress(flow, stats)
