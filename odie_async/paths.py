"""Where odie_async finds its configs, shared reference data and cache."""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def config_dir() -> Path:
    """The ``configs/`` folder: prompts, seeds and settings (``ODIE_CONFIG_DIR`` overrides)."""
    return Path(os.environ.get("ODIE_CONFIG_DIR") or _REPO / "configs")


def shared_dir() -> Path:
    """The InstructIE reference data folder (``ODIE_SHARED_DIR`` overrides)."""
    return Path(os.environ.get("ODIE_SHARED_DIR") or _REPO.parent / "shared")


def cache_dir() -> Path:
    """Converted models and other derived files (``ODIE_CACHE_DIR`` overrides)."""
    path = Path(os.environ.get("ODIE_CACHE_DIR") or Path.home() / ".cache" / "odie_async")
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_config_text(relative: str) -> str:
    """Read a text file under ``configs/`` (a prompt template, for instance)."""
    return (config_dir() / relative).read_text(encoding="utf-8")
