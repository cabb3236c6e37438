"""The one settings model of the engine: ``EngineSettings``, the config sections that fill it, one
table of defaults and one factory.

- ``EngineSettings``: how the engine talks to its endpoint(s), checked when made.
- ``EndpointConfig``, ``PoolEndpoint``, ``EngineConfig``: the ``endpoint:``, ``endpoints:`` and
  ``engine:`` sections of a config file (``odie generate``, ``odie batch --config``).
- ``DEFAULTS``: the defaults of each preset (``batch`` for ``odie batch``, ``bench`` and the
  API; ``generate`` for the pipeline, whose long prompts want fewer, longer requests).
- ``build_settings``: the factory every command, config and the API builds settings through;
  ``PoolEndpoint`` is also what the engine's lanes take (``PoolEndpoint.keyed`` for one named on the
  command line or the API, ``PoolEndpoint.with_env_key`` for one a config names).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, WithJsonSchema, field_validator

from ..exceptions import ConfigError
from ..option_types import MAX_COUNT, MAX_DURATION_S, MAX_RATE, check_number
from ..config_models import Section
from .keys import api_key_from_env

__all__ = ["AUTO_START", "AUTO_WORKERS", "DEFAULTS", "EndpointConfig", "EngineConfig", "EngineSettings",
           "PoolEndpoint", "build_settings", "check_number"]

# The one table of defaults (docs/architecture.md, "Settings"): every command's options, the API's
# arguments and the config sections take theirs from here. ``generate``'s are deliberate: pipeline
# prompts are long and a stage waits on each answer, so fewer, more patient requests. ``predict``
# sends a test set to a model server it trusts: all at once, no back-off, a long per-answer wait.
_SHARED = {"rpm": 0.0, "tpm": 0.0, "max_retry_wait_s": 60.0, "max_outage_s": 300.0, "hedge_share": 0.02,
           "max_cost": 0.0}
DEFAULTS = {
    "batch": {"concurrency": 64, "max_attempts": 5, "timeout_s": 120.0, "drain_timeout_s": 30.0, **_SHARED},
    "generate": {"concurrency": 16, "max_attempts": 4, "timeout_s": 300.0, "drain_timeout_s": 60.0, **_SHARED},
    "predict": {"concurrency": 256, "max_attempts": 2, "timeout_s": 3600.0, "drain_timeout_s": 30.0,
                "adaptive": False, **_SHARED},
}
_BATCH = DEFAULTS["batch"]
# No concurrency given (command line or API): this many workers, the adaptive gate starting at
# AUTO_START and growing on success (or steered by a server that publishes its load).
AUTO_WORKERS, AUTO_START = 256, 64

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
    concurrency: int = _BATCH["concurrency"]
    rpm: float = _BATCH["rpm"]
    tpm: float = _BATCH["tpm"]
    max_attempts: int = _BATCH["max_attempts"]
    timeout_s: float = _BATCH["timeout_s"]
    queue_size: int = 0
    drain_timeout_s: float = _BATCH["drain_timeout_s"]
    max_retry_wait_s: float = _BATCH["max_retry_wait_s"]
    fsync_interval_s: float = 1.0
    default_max_tokens: int = 256
    adaptive: bool = True
    learn_limits: bool = True
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    breaker_window: int = 100
    breaker_threshold: float = 0.8
    # A pool: more endpoints (``PoolEndpoint``) beside, or instead of, ``base_url``.
    endpoints: list = field(default_factory=list)
    # Where the adaptive gate starts (None: at ``concurrency``); it grows from there on success.
    initial_concurrency: int | None = None
    max_outage_s: float = _BATCH["max_outage_s"]
    hedge_share: float = _BATCH["hedge_share"]
    # Send every request streamed and record its time to first token and inter-token latency.
    stream: bool = False
    # A spending cap in USD (0: none), and the prices it counts at: a price table file (None: the
    # packaged one) or one (input, output) price per million tokens for every model.
    max_cost: float = _BATCH["max_cost"]
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


class EndpointConfig(Section):
    """Where requests go. No ``base_url``: the embedded model is served for the run; ``mock``: a mock teacher."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    structured: Annotated[Literal["auto", "on", "off"], WithJsonSchema(
        {"enum": ["auto", "on", "off", True, False], "description": "JSON-schema outputs; bare on/off read as booleans"}
    )] = "auto"
    schema_drop: list[str] = Field(default_factory=list)
    strict: bool = True
    send_seed: bool = True
    mock_wrong_share: float = Field(0.0, ge=0, le=1, description="mock teacher only: share of its first answers "
                                    "made wrong in ways the gate catches (deterministic by run seed)")

    @field_validator("structured", mode="before")
    @classmethod
    def _on_off(cls, value):
        # YAML 1.1 reads a bare on/off as a boolean
        return ("on" if value else "off") if isinstance(value, bool) else value


_GENERATE = DEFAULTS["generate"]


class EngineConfig(Section):
    """Concurrency, rate limits and retries of the engine: each key is an ``EngineSettings`` field.

    Its defaults are the ``generate`` preset of ``DEFAULTS``; ``odie batch --config`` applies only
    the keys a file sets."""

    concurrency: int = Field(_GENERATE["concurrency"], ge=1, le=MAX_COUNT)
    rpm: float = Field(_GENERATE["rpm"], ge=0, allow_inf_nan=False)
    tpm: float = Field(_GENERATE["tpm"], ge=0, allow_inf_nan=False)
    max_attempts: int = Field(_GENERATE["max_attempts"], ge=1, le=1000)
    timeout_s: float = Field(_GENERATE["timeout_s"], gt=0, le=MAX_DURATION_S, allow_inf_nan=False)
    drain_timeout_s: float = Field(_GENERATE["drain_timeout_s"], ge=0, le=MAX_DURATION_S, allow_inf_nan=False)
    stream: bool = Field(False, description="stream every request; its output line records TTFT and inter-token latency")
    max_cost: float = Field(_GENERATE["max_cost"], ge=0, allow_inf_nan=False,
                            description="a spending cap in USD (0: none): intake stops before it could be passed")
    prices_file: str | None = Field(None, description="a price table shaped like configs/prices.yaml")
    price: list[float] | None = Field(None, min_length=2, max_length=2,
                                      description="[IN, OUT] USD per million tokens for every model")
    cache: str | None = Field(None, description="a shared answer cache's folder: answers are taken from it "
                                                "before sending (odie cache stats|prune manage it)")
    metrics_port: int | None = Field(None, ge=1, le=65535,
                                     description="serve Prometheus metrics on 127.0.0.1:PORT while the run lasts")


class PoolEndpoint(Section):
    """One endpoint of a pool: an entry of a config file's ``endpoints:`` list, an ``--endpoint``, or
    one of the API's ``endpoints=``; the engine gives each its own lane.

    Its key is never a config key (keys come from the environment): ``keyed`` makes one with a key
    already read, ``with_env_key`` reads the one ``api_key_env`` names."""

    base_url: str
    api_key_env: str | None = None
    model: str | None = Field(None, description="the model name this endpoint serves (rewritten per request)")
    rpm: float = Field(0, ge=0, allow_inf_nan=False)
    tpm: float = Field(0, ge=0, allow_inf_nan=False)
    max_concurrency: int | None = Field(None, ge=1, le=MAX_COUNT)
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    name: str | None = None
    _api_key: str | None = PrivateAttr(None)

    @classmethod
    def keyed(cls, base_url: str, api_key: str | None = None, **fields) -> "PoolEndpoint":
        """An endpoint whose key (if any) is already read."""
        endpoint = cls(base_url=base_url, **fields)
        endpoint._api_key = api_key
        return endpoint

    def with_env_key(self, source: str) -> "PoolEndpoint":
        """A copy holding the key its ``api_key_env`` names, read from the environment now."""
        try:
            key = api_key_from_env(self.api_key_env) if self.api_key_env else None
        except ConfigError as exc:
            raise ConfigError(f"{source}: endpoints: {exc}") from None
        copy = self.model_copy()
        copy._api_key = key
        return copy

    @property
    def api_key(self) -> str | None:
        """The key sent to this endpoint (None: none)."""
        return self._api_key

    @property
    def label(self) -> str:
        """The name used in progress lines and summaries."""
        return self.name or self.base_url


def build_settings(base_url: str, *, concurrency: int | None = None, preset: str = "batch", **fields) -> EngineSettings:
    """``EngineSettings`` from the ``preset``'s defaults and ``fields``; no ``concurrency``: the adaptive
    start (``AUTO_WORKERS`` workers, the gate from ``AUTO_START``). Every caller builds them here."""
    values = {**DEFAULTS[preset], **fields}
    if concurrency is None and "initial_concurrency" not in fields:
        values.update(concurrency=AUTO_WORKERS, initial_concurrency=AUTO_START)
    elif concurrency is not None:
        values["concurrency"] = concurrency
    return EngineSettings(base_url=base_url, **values)
