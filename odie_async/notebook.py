"""Progress where a terminal line would not render: a notebook cell.

The sync API run inside a running event loop (a notebook cell) shows a ``tqdm.auto``
bar, a widget where ``ipywidgets`` is installed and plain text elsewhere, refreshed
from the same figures as the terminal's progress line.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from .runtime import called_from_loop


def wanted() -> bool:
    """Whether progress should be a notebook bar: the sync API inside a running loop, or a Jupyter kernel."""
    return called_from_loop() or ("ipykernel" in sys.modules and not sys.stderr.isatty())


class NotebookBar:
    """An async context manager that keeps a tqdm bar in step with ``counts() -> (done, total)``."""

    def __init__(self, label: str, counts: Callable[[], tuple[int, int]], text: Callable[[], str] | None = None,
                 interval: float = 1.0, unit: str = "step") -> None:
        self.label, self.counts, self.text = label, counts, text
        self.interval, self.unit = interval, unit
        self.bar = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> NotebookBar:
        from tqdm.auto import tqdm

        done, total = self.counts()
        self.bar = tqdm(total=total, initial=done, desc=self.label, unit=self.unit, dynamic_ncols=True)
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.update()
        self.bar.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.update()

    def update(self) -> None:
        """Move the bar to the current figures."""
        done, total = self.counts()
        self.bar.total, self.bar.n = total, done
        if self.text is not None:
            self.bar.set_postfix_str(self.text(), refresh=False)
        self.bar.refresh()
