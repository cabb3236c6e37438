"""Prompt templates and seed tasks of the pipeline, both read from ``configs/``.

Each stage has one YAML file of templates under the prompts folder
(``configs/prompts/<stage>.yaml``); placeholders are ``${name}``
(``string.Template``), so JSON braces in a template need no escaping. The
export's system prompt is ``configs/prompts/system.txt``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..exceptions import ConfigError, InputError
from ..evaluation.tables import TableError, parse_table
from ..files import load_yaml
from .registry import STAGES

FIXED = "fixed header"
OPEN = "open header"
CATEGORIES = (FIXED, OPEN)


class Prompts:
    """The templates of every stage, loaded and checked once."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._stages = {name: self._load(name, spec.prompt_keys) for name, spec in STAGES.items()}
        system = self.folder / "system.txt"
        if not system.is_file():
            raise ConfigError(f"{system}: the export's system prompt is missing")
        self.export_system = system.read_text(encoding="utf-8").strip()

    def _load(self, stage: str, keys: tuple[str, ...]) -> dict:
        path = self.folder / f"{stage}.yaml"
        data = load_yaml(path, "prompt file")
        missing = [key for key in keys if not isinstance(data, dict) or key not in data]
        if missing:
            raise ConfigError(f"{path}: missing template keys {missing}")
        return data

    def raw(self, stage: str, key: str):
        """A template (or list, for ``styles``) as written in the file."""
        return self._stages[stage][key]

    def fill(self, stage: str, key: str, **values) -> str:
        """Template ``key`` of ``stage`` with its ``${name}`` placeholders filled."""
        try:
            return string.Template(self._stages[stage][key]).substitute(values).strip()
        except KeyError as exc:
            raise ConfigError(
                f"{self.folder / (stage + '.yaml')}: template {key!r} uses ${{{exc.args[0]}}}, "
                f"which this stage does not provide (it provides: {', '.join(sorted(values))})"
            ) from exc
        except ValueError as exc:
            raise ConfigError(f"{self.folder / (stage + '.yaml')}: template {key!r}: {exc}") from exc

    def fingerprint(self) -> bytes:
        """Every template, serialised: changes whenever a prompt changes."""
        return orjson.dumps(self._stages, option=orjson.OPT_SORT_KEYS) + self.export_system.encode()


@dataclass(frozen=True)
class Seed:
    """One hand-written seed task: an (instruction, text) → table example."""

    id: str
    category: str
    domain: str
    instruction: str
    text: str
    table: str
    explanation: str = ""


_SEED_FIELDS = ("id", "category", "domain", "instruction", "text", "table")


def load_seeds(path: Path) -> list[Seed]:
    """Read seed tasks (one JSON object a line); a bad line is an ``InputError`` naming it."""
    if not Path(path).is_file():
        raise ConfigError(f"seed file {path} does not exist")
    seeds = []
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            if raw.strip():
                seeds.append(_seed(path, line_no, raw))
    for category in CATEGORIES:
        if not any(seed.category == category for seed in seeds):
            raise InputError(str(path), len(seeds), f"the seeds hold no {category!r} task; the pipeline needs both")
    return seeds


def _seed(path: Path, line_no: int, raw: bytes) -> Seed:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(str(path), line_no, f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(str(path), line_no, "expected a JSON object")
    for name in _SEED_FIELDS:
        if not isinstance(data.get(name), str) or not data[name].strip():
            raise InputError(str(path), line_no, f"field {name!r} must be a non-empty string")
    if data["category"] not in CATEGORIES:
        raise InputError(str(path), line_no, f"category must be one of {CATEGORIES}, not {data['category']!r}")
    try:
        parse_table(data["table"])
    except TableError as exc:
        raise InputError(str(path), line_no, f"the table does not parse as a markdown table ({exc})") from exc
    fields = {name: data[name].strip() for name in _SEED_FIELDS}
    return Seed(**fields, explanation=str(data.get("explanation") or "").strip())
