"""Settings of the quality gate: which checks run and their thresholds, read from ``configs/filter-*.yaml``.

Every check group has ``enabled``; a switched-off check is named in the run's
summary as off, never silently skipped. An unknown key or a wrong type is a
``ConfigError`` naming the file and the key. The pipeline config embeds the same
model under its ``filter:`` section (``config:`` names the file, other keys override it).
Every file is read over ``filter-default.yaml``, so it names only what it changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..exceptions import ConfigError
from ..files import load_yaml
from ..paths import config_dir

DEFAULT_FILE = "filter-default.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = True


class InstructionChecks(_Section):
    """Refusals, meta remarks, descriptions of the document, statements, placeholders, near-copies of the text."""

    refusal_patterns: list[str] = Field(default_factory=list)
    placeholder_patterns: list[str] = Field(default_factory=list)
    request_cues: list[str] = Field(default_factory=list)  # words (or word starts) a request clause opens with
    question_cues: list[str] = Field(default_factory=list)  # words a question opens a sentence with
    request_phrases: list[str] = Field(default_factory=list)  # patterns that make a request anywhere ("could you")
    meta_patterns: list[str] = Field(default_factory=list)  # a remark about the request itself
    describes_text_patterns: list[str] = Field(default_factory=list)  # a sentence about the document
    min_words: int = 4
    max_copied_share: float = 0.5  # share of the instruction's word 4-grams found verbatim in the text


class TextChecks(_Section):
    """The paper's text-length rule."""

    max_words: int = 768


class StructureChecks(_Section):
    """Header, separator, body rows, column count, size, and N/A cells."""

    min_columns: int = 2
    min_size: int = 4  # rows + columns > 3
    max_na: int | None = None  # the paper's "fewer than 4 N/A" is max_na: 3
    max_na_share: float = 0.6


class DegenerateChecks(_Section):
    """One value repeated across cells, rows or columns; header cells in the body; few distinct cells."""

    max_value_share: float = 0.5
    max_header_in_body_share: float = 0.2
    max_repeating_row_share: float = 0.5
    max_constant_column_share: float = 0.5
    min_distinct_share: float = 0.4
    min_cells: int = 4  # tables with fewer informative cells are judged by the other checks


class TruncationChecks(_Section):
    """A last row cut short, and cells that end mid-phrase."""

    max_dangling_share: float = 0.34


class LeakageCheck(_Section):
    """Cells copied from a few-shot example: a value of the seed tasks' tables that the text does not hold."""

    seeds: str = "seeds/seed_tasks.jsonl"  # the few-shot examples (relative to configs/ or absolute)
    min_chars: int = 4  # shorter values ("1", "N/A", "Yes") are too common to tell a copy


class FaithfulnessCheck(_Section):
    """Share of informative body cells the text supports (strings and numbers, then the encoder)."""

    min_score: float = 0.4
    min_open: float | None = None  # for open-header records (None: min_score)
    paraphrase_similarity: float = 0.7
    min_column: float = 0.2  # a column mostly unsupported: the least mean similarity of those cells with the text
    min_judge: float = 0.5  # with the llm or unieval scorer: its table-level score (the paper's 0.5)


class ConsistencyCheck(_Section):
    """The header answers the instruction."""

    min_fixed: float = 0.45
    min_open: float = 0.1
    min_judge: float = 0.5  # with the llm or unieval scorer (fixed-header records, as in the paper)


class RelevanceCheck(_Section):
    """The instruction belongs to the text."""

    min_score: float = 0.05


class BelongsCheck(_Section):
    """The instruction belongs to the text and to the header it produced: encoder consistency plus relevance."""

    min_fixed: float = 0.75
    min_open: float = 0.4


class GateConfig(BaseModel):
    """Every check of the quality gate."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    source: str = "<defaults>"
    instruction: InstructionChecks = Field(default_factory=InstructionChecks)
    text: TextChecks = Field(default_factory=TextChecks)
    structure: StructureChecks = Field(default_factory=StructureChecks)
    degenerate: DegenerateChecks = Field(default_factory=DegenerateChecks)
    truncation: TruncationChecks = Field(default_factory=TruncationChecks)
    leakage: LeakageCheck = Field(default_factory=LeakageCheck)
    faithfulness: FaithfulnessCheck = Field(default_factory=FaithfulnessCheck)
    consistency: ConsistencyCheck = Field(default_factory=ConsistencyCheck)
    relevance: RelevanceCheck = Field(default_factory=RelevanceCheck)
    belongs: BelongsCheck = Field(default_factory=BelongsCheck)

    def switched_off(self) -> list[str]:
        """Names of the check groups that are off."""
        return [name for name, value in self if isinstance(value, _Section) and not value.enabled]

    def thresholds(self) -> dict[str, float]:
        """The score thresholds, by score name (what the report draws)."""
        return {"faithfulness": self.faithfulness.min_score, "consistency_fixed": self.consistency.min_fixed,
                "consistency_open": self.consistency.min_open, "relevance": self.relevance.min_score,
                "faithfulness_open": self.faithfulness.min_score if self.faithfulness.min_open is None
                else self.faithfulness.min_open, "belongs_fixed": self.belongs.min_fixed,
                "belongs_open": self.belongs.min_open, "columns": self.faithfulness.min_column}


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _read(path: Path) -> dict:
    data = load_yaml(path, "filter config") or {}  # the one YAML reader: 3e-4 is a float here too
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def resolve(path: str | Path | None) -> Path:
    """A filter config path: as given, or relative to ``configs/``; None is the default file."""
    path = Path(path) if path else config_dir() / DEFAULT_FILE
    if not path.is_file() and not path.is_absolute() and (config_dir() / path).is_file():
        path = config_dir() / path
    return path


def build(data: dict[str, Any], source: str) -> GateConfig:
    """Validate a mapping into a ``GateConfig``; errors name ``source`` and the key."""
    try:
        return GateConfig.model_validate(data | {"source": source})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{source}: {where}: {first['msg']}") from exc


def load_gate_config(path: str | Path | None = None, overrides: dict | None = None) -> GateConfig:
    """Read a filter config file with optional overrides.

    Any file is read over ``configs/filter-default.yaml``: it names only what it
    changes (``consistency: {enabled: false}``); a list it gives replaces the default's.
    """
    path, default = resolve(path), resolve(None)
    data = _read(path)
    if path.resolve() != default.resolve():
        data = _merge(_read(default), data)
    return build(_merge(data, overrides or {}), str(path))


def from_section(section: dict | None, where: str) -> GateConfig:
    """The gate config a pipeline config's ``filter:`` section describes (``config:`` plus overrides)."""
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(section).__name__}")
    section = dict(section or {})
    name = section.pop("config", None)
    try:
        return load_gate_config(name, section)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
