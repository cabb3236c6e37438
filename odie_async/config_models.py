"""Config files as pydantic v2 models: one base class, one error translation, JSON Schemas.

Every model here is strict (no string is quietly read as a number, no number as a
bool) and closed (an unknown key is an error that lists the known ones). YAML is
read through ``files.load_yaml``, so ``3e-4`` and ``5e-1`` are floats. A file with
several mistakes reports all of them at once, each with its dotted path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .exceptions import ConfigError
from .files import load_yaml

M = TypeVar("M", bound=BaseModel)

_KINDS = {"int_type": "a number", "float_type": "a number", "int_from_float": "a whole number",
          "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
          "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping"}


class Section(BaseModel):
    """Base of every config section: strict types, unknown keys rejected, checked on assignment."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class that holds the last key of ``loc`` (for listing its known keys)."""
    current: Any = model
    for key in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if fields is None or key not in fields:
            return None
        current = fields[key].annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _message(model: type[BaseModel], error: dict) -> str:
    loc, kind = tuple(error["loc"]), error["type"]
    path = ".".join(str(part) for part in loc)
    if kind == "extra_forbidden":
        owner = _model_at(model, loc)
        known = ", ".join(owner.model_fields) if owner else "?"
        what = "stage" if loc[:-1] == ("stages",) else "key"
        parent = ".".join(str(p) for p in loc[:-1])
        return f"{parent + ': ' if parent else ''}unknown {what} {loc[-1]!r} (known: {known})"
    if kind in _KINDS:
        return f"{path}: expected {_KINDS[kind]}, got {error['input']!r}"
    if kind == "value_error":
        return f"{path + ': ' if path else ''}{error['ctx']['error']}"
    return f"{path}: {error['msg']}"


def validate(model: type[M], data: object, source: str) -> M:
    """``model`` from parsed data; every problem in one ``ConfigError`` naming ``source`` and each path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_message(model, error) for error in exc.errors()]
        if len(problems) == 1:
            raise ConfigError(f"{source}: {problems[0]}") from None
        raise ConfigError(f"{source}: {len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems)) from None


def load(model: type[M], path: str | Path, what: str = "config") -> M:
    """Read a YAML file into ``model``."""
    return validate(model, load_yaml(path, what), str(path))


def json_schema(model: type[BaseModel]) -> dict:
    """The model's JSON Schema (draft 2020-12), for editors that check YAML against it."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
