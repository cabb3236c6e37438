"""The live progress line of ``odie generate``: every stage's done/expected, rates, ETA."""

from __future__ import annotations

import asyncio
import sys

from ..stats import RunStats

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


class StageProgress:
    """Redraws the line on a terminal; prints it every ``interval`` seconds when piped."""

    def __init__(self, flow, stats: RunStats, stream=None, interval: float | None = None) -> None:
        self.flow = flow
        self.stats = stats
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval or (0.5 if self.tty else 10.0)
        self._task: asyncio.Task | None = None

    def line(self) -> str:
        """The current line."""
        kept = sum(o.kept for o in self.flow.outcomes)
        return render(self.flow.progress, self.flow.expected(), self.stats, kept, len(self.flow.outcomes) - kept)

    async def __aenter__(self) -> "StageProgress":
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._draw(final=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._draw()

    def _draw(self, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
