"""A run folder belongs to one run: its fingerprint, checked before anything is sent.

``RUN/run.json`` holds what the folder's data were made from: the config (less
``run.records``, so a larger ``--limit`` extends the run, and less the engine's
pacing, which changes no answer), the teacher (endpoint and model, a pool's
too), a digest of every prompt file and of the seeds, and the package version.
A rerun with another fingerprint stops with a ``ConfigError`` naming what
changed, the folder untouched. With ``update`` the new fingerprint is taken:
requests whose content changed get new ids (their digest is in the id) and are
sent, the others are answered from the checkpoint, and the change is appended to
``RUN/history.jsonl``, which the dataset card lists.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import orjson

from .. import __version__
from ..endpoints.embedded import EMBEDDED_NAME
from ..endpoints.resolve import MOCK, MOCK_MODEL, discover_model
from ..exceptions import ConfigError
from ..files import write_atomic
from .config import PipelineConfig

FINGERPRINT = "run.json"
SHOWN = 6  # changes named in the error; the rest are counted
HISTORY = "history.jsonl"
LOCK = "run.json.lock"  # held by the run writing the folder
# Left out of the config part: the engine's pacing changes how fast requests go, never what they
# ask; the pool's lanes are part of the teacher; prompts and seeds count by content, not by path;
# the verification budget only adds tries (a larger one sends what it adds, as checkpointed requests).
OUTSIDE = ("engine", "endpoints", "seeds", "prompts", "verify")
# Files a run folder holds once a run has written into it.
RUN_DATA = ("requests.jsonl", "errors.jsonl", "train.jsonl", "train_cot.jsonl", "dropped.jsonl", "summary.json")


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def teacher(config: PipelineConfig, api_key: str | None = None) -> dict:
    """The teacher the run will ask: endpoint (``embedded``, ``mock`` or a URL) and model, and a pool's lanes."""
    cfg = config.endpoint
    if cfg.base_url is None:
        endpoint, model = "embedded", cfg.model or EMBEDDED_NAME
    elif cfg.base_url == MOCK:
        endpoint, model = MOCK, cfg.model or MOCK_MODEL
    else:
        endpoint, model = cfg.base_url, cfg.model or discover_model(cfg.base_url, api_key)
    pool = [{"endpoint": e.base_url, "model": e.model} for e in config.endpoints]
    return {"endpoint": endpoint, "model": model} | ({"pool": pool} if pool else {})


def inputs(prompts: Path, seeds: Path) -> dict:
    """Digests of the prompt files (by name) and of the seeds file."""
    files = sorted(p for p in prompts.iterdir() if p.is_file()) if prompts.is_dir() else []
    return {"prompts": {p.name: _digest(p.read_bytes()) for p in files},
            "seeds": _digest(seeds.read_bytes()) if seeds.is_file() else None}


def fingerprint(config: PipelineConfig, prompts: Path, seeds: Path, api_key: str | None = None) -> dict:
    """The run's fingerprint (see the module's docstring)."""
    settings = config.model_dump(mode="json", exclude=set(OUTSIDE))
    settings["run"].pop("records", None)
    for key in ("base_url", "model", "api_key_env"):
        settings["endpoint"].pop(key, None)
    return {"teacher": teacher(config, api_key), "config": settings, **inputs(prompts, seeds),
            "version": __version__}


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out: dict = {}
        for key, inner in value.items():
            out |= _flat(inner, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: value}


def differences(old: dict, new: dict) -> list[str]:
    """Every setting that differs, by its dotted key: ``key old → new``."""
    was, now = _flat(old), _flat(new)
    return [f"{key} {was.get(key)} → {now.get(key)}" for key in sorted(set(was) | set(now)) if was.get(key) != now.get(key)]


def _refusal(where: Path, said: list[str], way_on: str) -> ConfigError:
    shown = "; ".join(said[:SHOWN]) + (f"; and {len(said) - SHOWN} more" if len(said) > SHOWN else "")
    return ConfigError(f"{where} holds another run ({shown}): {way_on}")


def keep_one(path: Path, new: dict, way_on: str) -> None:
    """Store ``new`` at ``path`` (the fingerprint of files made beside it), or refuse with a
    ``ConfigError`` naming every difference when another is stored there."""
    old = _read(path)
    if old is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, orjson.dumps(new, option=orjson.OPT_INDENT_2) + b"\n")
    elif said := differences(old, new):
        raise _refusal(path, said, way_on)


def _kind(endpoint: str | None) -> str | None:
    return endpoint if endpoint in ("embedded", MOCK, None) else "url"


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, in words (empty when they match).

    The same model at another URL (a server restarted on another port) is the same teacher."""
    said = []
    if old.get("teacher", {}).get("model") != new["teacher"]["model"]:
        said.append(f"teacher {old.get('teacher', {}).get('model')} → {new['teacher']['model']}")
    was_at, now_at = old.get("teacher", {}).get("endpoint"), new["teacher"]["endpoint"]
    if was_at != now_at and not _kind(was_at) == _kind(now_at) == "url":
        said.append(f"teacher endpoint {was_at} → {now_at}")
    if [lane.get("model") for lane in old.get("teacher", {}).get("pool", [])] != [
            lane.get("model") for lane in new["teacher"].get("pool", [])]:
        said.append(f"teacher pool {old.get('teacher', {}).get('pool')} → {new['teacher'].get('pool')}")
    before, after = old.get("prompts", {}), new["prompts"]
    said += [f"prompts/{name} {'added' if name not in before else 'removed' if name not in after else 'changed'}"
             for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]
    if old.get("seeds") != new["seeds"]:
        said.append("seeds changed")
    said += differences(old.get("config", {}), new["config"])
    if old.get("version") != new["version"]:
        said.append(f"odie_async {old.get('version')} → {new['version']}")
    return said


def read(out: Path) -> dict | None:
    """The fingerprint stored in ``out`` (None when there is none)."""
    return _read(out / FINGERPRINT)


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: unreadable run fingerprint ({exc}); fix or remove it") from None


def claim(out: Path, new: dict, update: bool = False) -> list[str]:
    """Check ``out`` against the run's fingerprint before anything is sent; return the changes taken.

    A folder without a fingerprint gets this one. A changed fingerprint is a ``ConfigError``
    naming the changes (nothing written) unless ``update``: then it replaces the stored one and the
    change is appended to the folder's history.
    """
    old = read(out)
    said = changes(old, new) if old is not None else []
    if said and not update:
        raise _refusal(out, said, "rerun with --update to re-send only the requests whose content changed and "
                                  "keep the rest, or name a new output folder")
    if old is None and any((out / name).exists() for name in RUN_DATA):
        said = ["fingerprint first recorded on a folder made before fingerprints"]
    elif old is not None and not said and old.get("teacher") != new["teacher"]:  # only a URL moved
        said = [f"teacher moved to {new['teacher']['endpoint']} (the same model)"]
    if old is None or said:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / FINGERPRINT, orjson.dumps(new, option=orjson.OPT_INDENT_2) + b"\n")
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "changes": said or ["started"],
                 "teacher": new["teacher"]}
        with open(out / HISTORY, "ab") as handle:
            handle.write(orjson.dumps(entry) + b"\n")
    return said


def history(out: Path) -> list[dict]:
    """The folder's history: one entry per start or accepted change."""
    path = out / HISTORY
    if not path.is_file():
        return []
    return [orjson.loads(raw) for raw in path.read_bytes().splitlines() if raw.strip()]
