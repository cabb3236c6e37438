"""The runs a viewer serves: what each RUN argument names, as a fixed list of files.

A RUN is a folder (``odie generate``'s run folder, ``odie filter``'s output
folder, ``odie bench``'s output folder, or any folder of JSONL files), an
``odie batch`` output (``OUT.jsonl``: its ``.errors.jsonl``, ``.summary.json``
and ``.metrics.jsonl`` come with it), an ``odie eval --json`` file or an
``odie bench`` ``results.json`` (which may not exist yet: the page waits for it).
Only the files listed here are ever opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..engine.metrics_log import SUFFIX as BATCH_METRICS
from ..exceptions import ConfigError
from ..pipeline.fingerprint import HISTORY  # a generate folder's runs, not records
from . import bench as bench_files
from .facets import FacetIndex
from .index import LineIndex

GENERATE_METRICS = "metrics.jsonl"
_SIDE_FILES = (".odie-idx", ".odie-facets", ".tmp")


@dataclass
class Run:
    """One run: a name, a kind, its JSONL data files, and its summary, metrics and eval files."""

    name: str
    kind: str  # generate, batch, folder, eval, bench
    root: Path
    data: dict[str, Path] = field(default_factory=dict)
    summary: Path | None = None
    metrics: Path | None = None
    evals: list[Path] = field(default_factory=list)
    bench: Path | None = None  # an odie bench results.json
    shown: str = ""  # the run's folder as the user named it (for the command lines the page suggests)
    _indexes: dict[str, FacetIndex] = field(default_factory=dict, repr=False)

    def describe(self) -> dict:
        """What the page needs to list this run (names only, never paths)."""
        return {"name": self.name, "kind": self.kind, "files": list(self.data), "live": self.metrics is not None,
                "eval": bool(self.evals), "summary": self.summary is not None,
                "bench": self.bench is not None}

    def facets(self, name: str) -> FacetIndex:
        """The (cached) index of data file ``name``; ``KeyError`` for a file not served."""
        if name not in self._indexes:
            path = self.data[name]
            default = "dropped" if "dropped" in path.name else ("error" if path.name.endswith(".errors.jsonl") else "kept")
            self._indexes[name] = FacetIndex(LineIndex(path), default)
        return self._indexes[name]

    def read_summary(self) -> dict | None:
        """The run's summary JSON, or None."""
        return _read_json(self.summary) if self.summary else None

    def read_bench(self, since: str | None = None) -> dict | None:
        """The bench result as the page draws it (``bench.snapshot``); None for a run that is not a bench."""
        if self.bench is None:
            return None
        snap = bench_files.snapshot(self.bench, os.path.join(self.shown, bench_files.RESULTS), since)
        if not snap.get("unchanged"):
            snap["folder"] = self.shown
        return snap

    def read_evals(self) -> list[dict]:
        """Every report in the run's eval files (``odie eval --json`` writes one object or a list)."""
        reports = []
        for path in self.evals:
            data = _read_json(path)
            reports.extend(r for r in (data if isinstance(data, list) else [data]) if _is_eval(r))
        return reports


def _read_json(path: Path):
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def _is_eval(report) -> bool:
    return isinstance(report, dict) and isinstance(report.get("header"), dict) and "overall" in report["header"]


def _data_file(path: Path) -> bool:
    name = path.name
    return (path.is_file() and name.endswith(".jsonl") and not name.endswith(BATCH_METRICS)
            and name not in (GENERATE_METRICS, HISTORY) and not name.endswith(_SIDE_FILES))


def _folder(path: Path, name: str) -> Run:
    data = {p.name: p for p in sorted(path.iterdir()) if _data_file(p)}
    summary = path / "summary.json"
    kind = "generate" if (path / "requests.jsonl").is_file() and summary.is_file() else "folder"
    metrics = path / GENERATE_METRICS
    evals = [p for p in sorted(path.glob("*.json")) if p.name != "summary.json" and _is_eval_file(p)]
    batch_metrics = sorted(path.glob("*" + BATCH_METRICS))
    return Run(name, kind, path, data, summary if summary.is_file() else None,
               metrics if kind == "generate" or metrics.is_file() else (batch_metrics[0] if batch_metrics else None),
               evals)


def _is_eval_file(path: Path) -> bool:
    data = _read_json(path)
    return any(_is_eval(r) for r in (data if isinstance(data, list) else [data]))


def _batch(path: Path, name: str) -> Run:
    stem = path.with_suffix("")
    data = {path.name: path}
    errors = stem.with_name(stem.name + ".errors.jsonl")
    data[errors.name] = errors
    summary = stem.with_name(stem.name + ".summary.json")
    return Run(name, "batch", path.parent, data, summary if summary.is_file() else None,
               path.with_suffix(BATCH_METRICS))


def _bench(results: Path, name: str, folder: str) -> Run:
    """A bench run; a ``results.json`` already there must be one (``ConfigError`` naming it otherwise)."""
    if results.exists():
        bench_files.read(results, os.path.join(folder, bench_files.RESULTS))
    return Run(name, "bench", results.parent, bench=results, shown=folder)


def load_runs(paths: list[str]) -> list[Run]:
    """A ``Run`` for each argument; ``ConfigError`` naming the first that is not a run."""
    runs, names = [], set()
    for raw in paths:
        path = Path(raw).resolve()
        name = (path.parent.name if path.name == bench_files.RESULTS else path.name) or raw
        while name in names:
            name += "'"
        names.add(name)
        if path.is_dir() and bench_files.is_bench_folder(path):
            runs.append(_bench(path / bench_files.RESULTS, name, raw))
        elif path.is_dir():
            runs.append(_folder(path, name))
        elif path.suffix == ".jsonl" and path.parent.is_dir():  # an output a running batch has yet to create
            runs.append(_batch(path, name))
        elif path.is_file() and path.suffix == ".json" and _is_eval_file(path):
            runs.append(Run(name, "eval", path.parent, evals=[path]))
        elif path.name == bench_files.RESULTS:  # a bench before its first load level ends: the page waits for it
            runs.append(_bench(path, name, os.path.dirname(raw) or "."))
        else:
            raise ConfigError(f"{raw}: not a run folder, a .jsonl output, an eval .json file or an odie bench "
                              "results.json (give OUT/results.json to wait for a bench still running)")
    return runs
