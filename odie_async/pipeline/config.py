"""Settings of ``odie generate``: one pydantic model per section of the YAML file.

``load_config`` reads a file (or a packaged preset by name) and reports every
mistake at once, with its path: an unknown key lists the known ones, a wrong type
names what was expected. ``odie config-schema generate`` writes the JSON Schema.
The ``stages`` section has one entry per stage of ``registry.STAGES``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, WithJsonSchema, create_model, field_validator, model_validator

from ..engine.keys import api_key_from_env
from ..engine.settings import EndpointConfig, EngineConfig, PoolEndpoint  # noqa: F401  (sections defined once, in engine/)
from ..exceptions import ConfigError
from ..paths import config_dir, find_config
from ..quality.gate_config import GateConfig, from_section, load_gate_config
from ..config_models import Section, load, validate
from . import registry

DEFAULT_CONFIG = "generate-default.yaml"
STAGE_NAMES = registry.NAMES
VARIANTS = registry.VARIANTS
Variant = Literal[VARIANTS]  # type: ignore[valid-type]


class RunConfig(Section):
    """Sizes of the run: final records attempted, the open-header share, table variants."""

    records: int = Field(200, ge=1)
    open_share: float = Field(0.5, ge=0, le=0.5, description="within [0, 0.5]: one open record per text")
    variants: list[Variant] = Field(default_factory=lambda: list(VARIANTS), min_length=1)
    seed: int = 0
    max_outstanding: int = Field(256, ge=1)


class StageConfig(Section):
    """Sampling and size knobs of one stage."""

    temperature: float = Field(1.0, ge=0)
    max_tokens: int = Field(256, ge=1)
    shots: int = Field(2, ge=0)
    per_call: int = Field(10, ge=1)
    chunk: int = Field(10, ge=1)
    max_tries: int = Field(3, ge=1)
    dedup_rouge: float = Field(0.7, ge=0, le=1)
    max_calls_factor: float = Field(4.0, gt=0)
    parallel_calls: int = Field(4, ge=1)


StagesConfig = create_model(
    "StagesConfig", __base__=Section, __doc__="Settings per stage; a stage left out keeps the defaults.",
    **{name: (StageConfig, Field(default_factory=StageConfig, description=f"the {name} stage"))
       for name in STAGE_NAMES},
)


class LimitsConfig(Section):
    """Bounds written into the JSON schemas of structured outputs."""

    max_columns: int = Field(8, ge=2)
    max_rows: int = Field(10, ge=1)
    cell_chars: int = Field(60, ge=1)
    instruction_chars: int = Field(300, ge=1)
    domain_chars: int = Field(40, ge=1)
    explanation_chars: int = Field(600, ge=1)


class VerifyConfig(Section):
    """Verified generation: more tries, within a budget, for a record whose answer the gate drops."""

    candidates: int = Field(4, ge=1, description="answers judged per record: the first, then the rest from one request")
    rounds: int = Field(2, ge=0, description="rounds after the first answer: one of candidates, then repair turns")
    max_tokens_per_record: int = Field(6000, ge=0, description="tokens one record's tries of a stage may spend; "
                                       "no round starts once they are spent")
    paraphrase_similarity: float = Field(0.45, ge=0, le=1, description="encoder similarity a paraphrase needs "
                                         "with its own original, else the original is kept")


class ScorerConfig(Section):
    """Which scorer judges consistency and faithfulness."""

    kind: Literal["auto", "llm", "offline", "unieval"] = "auto"
    unieval_dir: str | None = None
    batch_size: int = Field(16, ge=1)


# The `filter:` section names a filter config file and overrides its settings (see configs/filter-default.yaml).
_GATE_SECTION = {"type": "object", "properties": {"config": {"type": "string", "description": "a filter config file"}},
                 "additionalProperties": True,
                 "description": "the quality gate: `config:` a filter config file, plus overrides of its checks"}


class PipelineConfig(Section):
    """The whole ``odie generate`` configuration."""

    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    endpoints: list[PoolEndpoint] = Field(default_factory=list, description="a pool: more endpoints, each a lane")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)  # type: ignore[valid-type]
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    filter: Annotated[GateConfig, WithJsonSchema(_GATE_SECTION)] = Field(default_factory=load_gate_config,
                               description="the quality gate: `config:` a filter config file, plus overrides")
    scorer: ScorerConfig = Field(default_factory=ScorerConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    seeds: str = Field("seeds/seed_tasks.jsonl",
                       description="seed tasks: absolute, or under the config file's folder, else the packaged configs")
    prompts: str = Field("prompts", description="prompt templates folder: absolute, or under the config file's "
                         "folder, else the packaged configs")
    _source: str = PrivateAttr("<defaults>")

    @field_validator("filter", mode="before")
    @classmethod
    def _gate(cls, value):
        return value if isinstance(value, GateConfig) else from_section(value, "filter")

    @model_validator(mode="before")
    @classmethod
    def _sections_may_be_empty(cls, data):
        # `engine:` with nothing under it is an empty section, not a null one
        if isinstance(data, dict):
            return {k: ({} if v is None and k in cls.model_fields and k not in ("seeds", "prompts", "endpoints") else v)
                    for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _pool_names_the_endpoint(self):
        # A pool without `endpoint.base_url`: its first endpoint is the one the run talks about
        if self.endpoints and not self.endpoint.base_url:
            first = self.endpoints[0]
            self.endpoint.base_url = first.base_url
            self.endpoint.api_key_env = self.endpoint.api_key_env or first.api_key_env
            self.endpoint.model = self.endpoint.model or first.model
        return self

    @property
    def source(self) -> str:
        """Where the settings came from: the file, or ``<dict>``/``<defaults>``."""
        return self._source

    def stage(self, name: str) -> StageConfig:
        """The settings of stage ``name``."""
        return getattr(self.stages, name)

    @property
    def n_open(self) -> int:
        """Open-header records: the open share of the records (at most one per text)."""
        return min(self.run.records // 2, math.floor(self.run.records * self.run.open_share + 1e-9))

    @property
    def n_fixed(self) -> int:
        """Fixed-header records, one per fixed instruction (and text)."""
        return self.run.records - self.n_open

    def path(self, relative: str) -> Path:
        """A path named in the config: absolute, else under the config file's own folder when it is
        there (a copied config uses its copied prompts), else under the packaged configs folder."""
        path = Path(os.path.expanduser(relative))
        if path.is_absolute():
            return path
        own = Path(self._source).parent / path if Path(self._source).is_file() else None
        return own if own is not None and own.exists() else config_dir() / path

    def api_key(self) -> str | None:
        """The endpoint's key from its environment variable (never from the file)."""
        return api_key_from_env(self.endpoint.api_key_env, fallback=None, where=f"{self.source}: endpoint.api_key_env")

    def with_records(self, limit: int) -> PipelineConfig:
        """This config with ``run.records`` set to ``limit`` (``--limit``)."""
        if limit < 1:
            raise ConfigError("--limit must be at least 1")
        self.run.records = limit
        return self


def from_dict(data: dict, source: str = "<dict>", limit: int | None = None) -> PipelineConfig:
    """Build and validate a config from parsed YAML."""
    config = validate(PipelineConfig, data, source)
    config._source = source
    return config.with_records(limit) if limit is not None else config


def load_config(path: str | Path | None = None, limit: int | None = None) -> PipelineConfig:
    """Read a config file or packaged preset (default ``generate-default.yaml``); ``limit`` sets run.records."""
    found = find_config(path or DEFAULT_CONFIG, prefix="generate-")
    config = load(PipelineConfig, found)
    config._source = str(found)
    return config.with_records(limit) if limit is not None else config


def override_engine(config, engine: dict | None) -> None:
    """Set the ``engine`` section's keys given apart from the file (``--max-cost``, ``--price``,
    ``--metrics-port``...), validated as the section is; a None value keeps the file's."""
    overrides = {key: value for key, value in (engine or {}).items() if value is not None}
    if overrides:
        config.engine = type(config.engine).model_validate(config.engine.model_dump() | overrides)


def override_endpoint(config, endpoint: dict | None) -> None:
    """Set the ``endpoint`` section's keys given apart from the file (``--base-url``, ``--api-key-env``,
    ``--model``); a None value keeps the file's."""
    for key, value in (endpoint or {}).items():
        if value is not None:
            setattr(config.endpoint, key, value)
