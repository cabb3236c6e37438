"""The backend for a provider's name: one module per provider behind ``base.BatchProvider``."""

from __future__ import annotations

from ..exceptions import ConfigError
from .base import BatchProvider


def provider_class(name: str) -> type[BatchProvider]:
    """The backend class for ``name`` (``openai`` or ``anthropic``)."""
    from .anthropic import AnthropicBatches
    from .openai import OpenAIBatches

    backends = {cls.name: cls for cls in (OpenAIBatches, AnthropicBatches)}
    if name not in backends:
        raise ConfigError(f"unknown provider {name!r}; choose from {', '.join(backends)}")
    return backends[name]


def make_provider(name: str, base_url: str | None, api_key: str | None, run_id: str, **kw) -> BatchProvider:
    """The backend for ``name``, on ``base_url`` or the provider's own API."""
    cls = provider_class(name)
    return cls(base_url or cls.default_base_url, api_key, run_id, **kw)
