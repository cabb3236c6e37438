"""The one reader of a LoRA adapter folder's JSON files: peft's ``adapter_config.json`` and
``odie train``'s ``train_summary.json``.

A missing required file, an unreadable one and invalid JSON each raise ``error`` (a
``ConfigError`` unless the caller names another) naming the file; only an optional file
that is absent gives None.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..exceptions import ConfigError, OdieError

CONFIG = "adapter_config.json"
SUMMARY = "train_summary.json"


def read_adapter_json(adapter_dir: str | Path, name: str = CONFIG, *, required: bool = True,
                      error: type[OdieError] = ConfigError) -> dict | None:
    """The JSON object in ``adapter_dir/name``; None only when the file is absent and not ``required``."""
    path = Path(adapter_dir) / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not required:
            return None
        raise error(f"LoRA adapter {adapter_dir}: no {name} there") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise error(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
