"""Settings of ``odie generate``, read from a YAML file under ``configs/``.

Every section maps onto a dataclass below; an unknown key or a wrong type is a
``ConfigError`` naming the file and the key, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..exceptions import ConfigError
from ..paths import config_dir
from ..quality.config import GateConfig, from_section, load_gate_config

STRUCTURED_MODES = ("auto", "on", "off")
SCORERS = ("auto", "llm", "offline", "unieval")
VARIANTS = ("plain", "cot")


@dataclass
class EndpointConfig:
    """Where requests go. No ``base_url``: the embedded model is served for the run."""

    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    structured: str = "auto"
    schema_drop: list[str] = field(default_factory=list)
    strict: bool = True
    send_seed: bool = True


@dataclass
class EngineConfig:
    """Concurrency, rate limits and retries of the engine."""

    concurrency: int = 16
    rpm: float = 0
    tpm: float = 0
    max_attempts: int = 4
    timeout_s: float = 300.0
    drain_timeout_s: float = 60.0


@dataclass
class RunConfig:
    """Sizes of the run: final records attempted, the open-header share, table variants."""

    records: int = 200
    open_share: float = 0.5
    variants: list[str] = field(default_factory=lambda: ["plain", "cot"])
    seed: int = 0
    max_outstanding: int = 256


@dataclass
class StageConfig:
    """Sampling and size knobs of one stage."""

    temperature: float = 1.0
    max_tokens: int = 256
    shots: int = 2
    per_call: int = 10
    chunk: int = 10
    max_tries: int = 3
    dedup_rouge: float = 0.7
    max_calls_factor: float = 4.0
    parallel_calls: int = 4


@dataclass
class LimitsConfig:
    """Bounds written into the JSON schemas of structured outputs."""

    max_columns: int = 8
    max_rows: int = 10
    cell_chars: int = 60
    instruction_chars: int = 300
    domain_chars: int = 40
    explanation_chars: int = 600


@dataclass
class ScorerConfig:
    """Which scorer judges consistency and faithfulness."""

    kind: str = "auto"
    unieval_dir: str | None = None
    batch_size: int = 16


STAGE_NAMES = ("instructions", "texts", "open_instructions", "paraphrase", "tables", "tables_cot", "judge")


@dataclass
class PipelineConfig:
    """The whole ``odie generate`` configuration."""

    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    run: RunConfig = field(default_factory=RunConfig)
    stages: dict[str, StageConfig] = field(default_factory=dict)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    filter: GateConfig = field(default_factory=load_gate_config)  # the quality gate, configs/filter-*.yaml
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    seeds: str = "seeds/seed_tasks.jsonl"
    prompts: str = "prompts"
    source: str = "<defaults>"

    def stage(self, name: str) -> StageConfig:
        """The settings of stage ``name``."""
        return self.stages[name]

    @property
    def n_open(self) -> int:
        """Open-header records: the open share of the records (at most one per text)."""
        return min(self.run.records // 2, math.floor(self.run.records * self.run.open_share + 1e-9))

    @property
    def n_fixed(self) -> int:
        """Fixed-header records, one per fixed instruction (and text)."""
        return self.run.records - self.n_open

    def path(self, relative: str) -> Path:
        """A path named in the config: absolute, or relative to ``configs/``."""
        path = Path(os.path.expanduser(relative))
        return path if path.is_absolute() else config_dir() / path

    def api_key(self) -> str | None:
        """The endpoint's key from its environment variable (never from the file)."""
        name = self.endpoint.api_key_env
        if not name:
            return None
        value = os.environ.get(name)
        if not value:
            raise ConfigError(f"{self.source}: endpoint.api_key_env names {name}, which is not set")
        return value


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(fields)})")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(fields[key], value, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(f: dataclasses.Field, value, where: str):
    kind = str(f.type)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{where}: may not be empty")
    if kind.startswith(("int", "float")):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return int(value) if kind.startswith("int") else float(value)
    if kind.startswith("bool") and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind.startswith("list") and not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if kind.startswith("str") and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(data: dict, source: str = "<dict>") -> PipelineConfig:
    """Build and validate a config from parsed YAML."""
    data = dict(data or {})
    endpoint = data.get("endpoint")
    if isinstance(endpoint, dict) and isinstance(endpoint.get("structured"), bool):
        # YAML 1.1 reads a bare on/off as a boolean
        data["endpoint"] = endpoint | {"structured": "on" if endpoint["structured"] else "off"}
    sections = {"endpoint": EndpointConfig, "engine": EngineConfig, "run": RunConfig, "limits": LimitsConfig,
                "scorer": ScorerConfig}
    kwargs = {name: _build(cls, data.pop(name) or {}, f"{source}: {name}") for name, cls in sections.items() if name in data}
    if "filter" in data:
        kwargs["filter"] = from_section(data.pop("filter"), f"{source}: filter")
    stages = data.pop("stages", None) or {}
    kwargs["stages"] = {name: _build(StageConfig, stages.get(name) or {}, f"{source}: stages.{name}") for name in STAGE_NAMES}
    for name in stages:
        if name not in STAGE_NAMES:
            raise ConfigError(f"{source}: stages: unknown stage {name!r} (known: {', '.join(STAGE_NAMES)})")
    config = _build(PipelineConfig, data, source)
    config = dataclasses.replace(config, **kwargs, source=source)
    validate(config)
    return config


def validate(config: PipelineConfig) -> None:
    """Reject settings the pipeline cannot run with."""
    src = config.source
    if config.endpoint.structured not in STRUCTURED_MODES:
        raise ConfigError(f"{src}: endpoint.structured must be one of {STRUCTURED_MODES}")
    if config.scorer.kind not in SCORERS:
        raise ConfigError(f"{src}: scorer.kind must be one of {SCORERS}")
    if not config.run.variants or any(v not in VARIANTS for v in config.run.variants):
        raise ConfigError(f"{src}: run.variants must be a non-empty list of {VARIANTS}")
    if config.run.records < 1 or not 0 <= config.run.open_share <= 0.5:
        raise ConfigError(f"{src}: run.records must be ≥ 1 and run.open_share within [0, 0.5] (one open record per text)")
    if config.engine.concurrency < 1 or config.engine.max_attempts < 1:
        raise ConfigError(f"{src}: engine.concurrency and engine.max_attempts must be ≥ 1")
    for name, stage in config.stages.items():
        if stage.max_tokens < 1 or stage.per_call < 1 or stage.chunk < 1 or stage.max_tries < 1:
            raise ConfigError(f"{src}: stages.{name}: max_tokens, per_call, chunk and max_tries must be ≥ 1")


def load_config(path: str | Path | None = None, limit: int | None = None) -> PipelineConfig:
    """Read a config file (default ``configs/generate-default.yaml``); ``limit`` sets run.records."""
    path = Path(path) if path else config_dir() / "generate-default.yaml"
    if not path.is_file() and not path.is_absolute() and (config_dir() / path).is_file():
        path = config_dir() / path
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    config = from_dict(data or {}, str(path))
    if limit is not None:
        if limit < 1:
            raise ConfigError("--limit must be at least 1")
        config.run.records = limit
    return config
