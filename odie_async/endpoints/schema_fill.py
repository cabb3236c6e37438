"""Deterministic instances of JSON schemas, for the mock endpoint's structured outputs."""

from __future__ import annotations

import random


def instance_for_schema(schema: dict, seed: int = 0) -> object:
    """A value that validates against ``schema`` (the subset structured outputs use)."""
    return _fill(schema, schema, random.Random(seed), 0)


def _resolve(ref: str, root: dict) -> dict:
    node = root
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def _fill(schema: dict, root: dict, rng: random.Random, depth: int) -> object:
    if "$ref" in schema:
        return _fill(_resolve(schema["$ref"], root), root, rng, depth)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return _fill(schema[key][0], root, rng, depth)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return _BUILDERS.get(kind, lambda *a: None)(schema, root, rng, depth)


def _object(schema, root, rng, depth):
    props = schema.get("properties", {})
    return {name: _fill(sub, root, rng, depth + 1) for name, sub in props.items()}


def _array(schema, root, rng, depth):
    low = schema.get("minItems", 1)
    high = schema.get("maxItems", max(low, 3))
    count = max(low, min(high, 3))
    items = schema.get("items", {"type": "string"})
    return [_fill(items, root, rng, depth + 1) for _ in range(count)]


def _string(schema, root, rng, depth):
    words = ["alpha", "delta", "river", "north", "amber", "quartz", "lumen", "cedar"]
    text = " ".join(rng.choice(words) for _ in range(3))
    low, high = schema.get("minLength", 0), schema.get("maxLength", 64)
    text = text[:high]
    return text + "x" * max(0, low - len(text))


def _integer(schema, root, rng, depth):
    return rng.randint(int(schema.get("minimum", 0)), int(schema.get("maximum", 100)))


def _number(schema, root, rng, depth):
    return round(rng.uniform(schema.get("minimum", 0.0), schema.get("maximum", 1.0)), 3)


_BUILDERS = {
    "object": _object,
    "array": _array,
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": lambda s, r, rng, d: rng.random() < 0.5,
    "null": lambda *a: None,
}
