"""The live progress line of ``odie generate``: every stage's done/expected, rates, ETA."""

from __future__ import annotations

from ..engine.progress import ProgressLine
from ..engine.stats import RunStats

SHORT = {"instructions": "instr", "texts": "texts", "open_instructions": "open", "paraphrase": "para",
         "tables": "tables", "tables_cot": "cot", "scored": "scored"}


def render(progress, expected: dict[str, int], stats: RunStats, kept: int, dropped: int) -> str:
    """``[generate] instr 5/5 texts 3/5 ... | kept 2 dropped 1 | 4.1 req/s 310 tok/s | ETA 0m40s``."""
    parts = [f"{SHORT.get(name, name)} {progress[name]}/{total}" for name, total in expected.items()]
    elapsed = max(stats.elapsed, 1e-9)
    tokens = stats.prompt_tokens + stats.completion_tokens
    done_share = sum(min(progress[n], t) for n, t in expected.items()) / max(1, sum(expected.values()))
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
