"""Where odie_async finds its configs, shared reference data and cache.

The configs (prompt templates, seed tasks, presets, chat templates) ship inside
the package as data and are found through ``importlib.resources``, so a plain
``pip install`` (not editable) runs every command. The repository's top-level
``configs`` is a link to the same folder, for paths such as
``--config configs/generate-openai.yaml`` in a checkout.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def packaged_configs() -> Path:
    """The configs folder shipped in the package (a real folder: wheels install unzipped)."""
    return Path(str(resources.files("odie_async") / "configs"))


def config_dir() -> Path:
    """The configs folder: prompts, seeds and settings (``ODIE_CONFIG_DIR`` overrides)."""
    override = os.environ.get("ODIE_CONFIG_DIR")
    return Path(override) if override else packaged_configs()


def find_config(name: str | Path, prefix: str = "") -> Path:
    """A config file by path, by name under the configs folder, or by preset name.

    ``configs/generate-mock.yaml``, ``generate-mock.yaml`` and (with ``prefix="generate-"``)
    ``mock`` all name the same packaged preset; a path that exists wins.
    """
    path = Path(os.path.expanduser(str(name)))
    if path.is_file() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    stem = Path(*parts) if parts else path
    for candidate in (config_dir() / stem, config_dir() / f"{prefix}{stem}.yaml"):
        if candidate.is_file():
            return candidate
    return path


def shared_dir() -> Path:
    """The InstructIE reference data folder (``ODIE_SHARED_DIR`` overrides)."""
    return Path(os.environ.get("ODIE_SHARED_DIR") or _PACKAGE.parents[1] / "shared")


def cache_dir() -> Path:
    """Converted models and other derived files (``ODIE_CACHE_DIR`` overrides)."""
    path = Path(os.environ.get("ODIE_CACHE_DIR") or Path.home() / ".cache" / "odie_async")
    path.mkdir(parents=True, exist_ok=True)
    return path



def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, built by ``build(folder)`` into a temporary folder and renamed into place.

    An interrupted build never leaves a partial folder behind, and when two processes
    build at once the first rename wins and the other's copy is discarded.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
