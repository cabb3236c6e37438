"""``EngineSettings``: how the engine talks to one endpoint, checked when made."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..option_types import MAX_COUNT, MAX_DURATION_S, MAX_RATE, check_number

__all__ = ["EngineSettings", "check_number"]

# name -> (smallest allowed, whether the smallest is allowed, option shown in messages, largest allowed)
_BOUNDS = {
    "concurrency": (1, True, "--concurrency", MAX_COUNT),
    "rpm": (0, True, "--rpm", MAX_RATE * 60),
    "tpm": (0, True, "--tpm", MAX_RATE * 60_000),
    "max_attempts": (1, True, "--max-attempts", 1000),
    "timeout_s": (0, False, "--timeout", MAX_DURATION_S),
    "queue_size": (0, True, "queue_size", MAX_COUNT * 100),
    "drain_timeout_s": (0, True, "--drain-timeout", MAX_DURATION_S),
    "max_retry_wait_s": (0, False, "--max-retry-wait", MAX_DURATION_S),
    "fsync_interval_s": (0, True, "fsync_interval_s", MAX_DURATION_S),
    "default_max_tokens": (1, True, "default_max_tokens", 10_000_000),
    "backoff_base_s": (0, True, "backoff_base_s", MAX_DURATION_S),
    "backoff_max_s": (0, True, "backoff_max_s", MAX_DURATION_S),
    "breaker_window": (1, True, "breaker_window", MAX_COUNT),
    "breaker_threshold": (0, False, "breaker_threshold", 1),
    "max_outage_s": (0, False, "--max-outage", MAX_DURATION_S),
    "hedge_share": (0, True, "--hedge-share", 1),
    "max_cost": (0, True, "--max-cost", 1e9),
}


@dataclass
class EngineSettings:
    """How the engine talks to one endpoint. Limits of 0 mean unlimited.

    With ``rpm``/``tpm`` at 0 the engine learns the limits from the endpoint's
    ``x-ratelimit-limit-*`` headers, or else from its 429s. A ``Retry-After``
    longer than ``max_retry_wait_s`` stops the run (the quota is likely spent).
    """

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 64
    rpm: float = 0
    tpm: float = 0
    max_attempts: int = 5
    timeout_s: float = 120.0
    queue_size: int = 0
    drain_timeout_s: float = 30.0
    max_retry_wait_s: float = 60.0
    fsync_interval_s: float = 1.0
    default_max_tokens: int = 256
    adaptive: bool = True
    learn_limits: bool = True
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    breaker_window: int = 100
    breaker_threshold: float = 0.8
    # A pool: more endpoints (``EndpointSpec``) beside, or instead of, ``base_url``.
    endpoints: list = field(default_factory=list)
    # Where the adaptive gate starts (None: at ``concurrency``); it grows from there on success.
    initial_concurrency: int | None = None
    max_outage_s: float = 300.0
    hedge_share: float = 0.02
    # Send every request streamed and record its time to first token and inter-token latency.
    stream: bool = False
    # A spending cap in USD (0: none), and the prices it counts at: a price table file (None: the
    # packaged one) or one (input, output) price per million tokens for every model.
    max_cost: float = 0.0
    prices_file: str | None = None
    price: tuple[float, float] | None = None
    # A shared answer cache's folder (None: no cache): answers are taken from it before sending.
    cache: str | None = None
    # Serve Prometheus metrics on 127.0.0.1:PORT while the run lasts (None: no).
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        for spec in fields(self):
            if spec.name in _BOUNDS:
                check_number(getattr(self, spec.name), *_BOUNDS[spec.name])
        if self.initial_concurrency is not None:
            check_number(self.initial_concurrency, 1, True, "initial_concurrency", MAX_COUNT)
