"""Provider batch APIs (OpenAI Batch API, Anthropic Message Batches) behind one runner.

One module per provider behind ``base.BatchProvider``; ``command.make_provider``
picks one. ``journal.py`` is the write-ahead journal that keeps every batch
created once, ``chunks.py`` splits the input within the provider's limits,
``runner.py`` drives a run and ``command.py`` is ``odie batch --mode provider-batch``.
"""

from .command import make_provider, run_provider_batch

__all__ = ["make_provider", "run_provider_batch"]
