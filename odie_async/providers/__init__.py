"""Provider batch APIs (OpenAI Batch API, Anthropic Message Batches) behind one runner.

One module per provider behind ``base.BatchProvider``; ``factory.make_provider`` picks one.
``journal.py`` is the write-ahead journal that keeps every batch created once, ``chunks.py`` splits
the input within the provider's limits, ``runner.py`` drives a run, ``batch_spend.py`` holds it to a
spending cap and ``report.py`` shows its progress and summary. The command,
``odie batch --mode provider-batch``, is in ``cli/batch.py``.
"""

from .factory import make_provider
from .report import drive
from .runner import ProviderBatchRun, RunOptions

__all__ = ["ProviderBatchRun", "RunOptions", "drive", "make_provider"]
