"""The runs a viewer serves: what each RUN argument names, as a fixed list of files.

A RUN is a folder (``odie generate``'s run folder, ``odie filter``'s output
folder, ``odie bench``'s output folder, or any folder of JSONL files), an
``odie batch`` output (``OUT.jsonl``: its ``.errors.jsonl``, ``.summary.json``
and ``.metrics.jsonl`` come with it), an ``odie eval --json`` file or an
``odie bench`` ``results.json`` (which may not exist yet: the page waits for it).
Only the files listed here are ever opened, and only through the ``Scope`` of
the folders and files named on the command line: a link in a run folder that
points out of it is listed as such and never followed. Names that are not valid
UTF-8 are shown escaped (``\\xff``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..engine.metrics_log import SUFFIX as BATCH_METRICS
from ..exceptions import ConfigError, OdieError
from ..pipeline.fingerprint import HISTORY  # a generate folder's runs, not records
from . import bench as bench_files
from .access import Scope, everything
from .facets import FacetIndex
from .index import LineIndex

GENERATE_METRICS = "metrics.jsonl"
_SIDE_FILES = (".odie-idx", ".odie-facets", ".tmp")
MAX_JSON = 1 << 22  # the most of a summary or eval file read


def shown_name(name: str) -> str:
    """A file name as the page shows it: bytes that are not UTF-8 escaped (``\\xff``), never an error."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


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
    links: list[str] = field(default_factory=list)  # data files that are links out of the scope: listed, never read
    scope: Scope = field(default_factory=everything, repr=False)
    _indexes: dict[str, FacetIndex] = field(default_factory=dict, repr=False)

    def describe(self) -> dict:
        """What the page needs to list this run (names only, never paths)."""
        return {"name": shown_name(self.name), "kind": self.kind, "files": list(self.data), "links": self.links,
                "empty": [shown for shown, path in self.data.items() if _is_empty(path)],
                "live": self.metrics is not None,
                "eval": bool(self.evals), "summary": self.summary is not None,
                "bench": self.bench is not None}

    def facets(self, name: str) -> FacetIndex:
        """The (cached) index of data file ``name``; ``KeyError`` for a file not served."""
        if name not in self._indexes:
            path = self.data[name]
            default = "dropped" if "dropped" in path.name else ("error" if path.name.endswith(".errors.jsonl") else "kept")
            self._indexes[name] = FacetIndex(LineIndex(path, self.scope), default)
        return self._indexes[name]

    def read_summary(self) -> dict | None:
        """The run's summary JSON, or None."""
        return _read_json(self.summary, self.scope) if self.summary else None

    def read_bench(self, since: str | None = None) -> dict | None:
        """The bench result as the page draws it (``bench.snapshot``); None for a run that is not a bench."""
        if self.bench is None:
            return None
        snap = bench_files.snapshot(self.bench, os.path.join(self.shown, bench_files.RESULTS), since, self.scope)
        if not snap.get("unchanged"):
            snap["folder"] = shown_name(self.shown)
        if snap.get("results"):
            snap["command"] = bench_files.command(snap["results"], shown_name(self.shown), snap["recommended"] is not None)
        return snap

    def read_evals(self) -> list[dict]:
        """Every report in the run's eval files (``odie eval --json`` writes one object or a list)."""
        reports = []
        for path in self.evals:
            data = _read_json(path, self.scope)
            reports.extend(r for r in (data if isinstance(data, list) else [data]) if _is_eval(r))
        return reports


def _read_json(path: Path, scope: Scope):
    try:
        return orjson.loads(scope.read_bytes(path, MAX_JSON))
    except (OSError, OdieError, orjson.JSONDecodeError):
        return None


def _is_eval(report) -> bool:
    return isinstance(report, dict) and isinstance(report.get("header"), dict) and "overall" in report["header"]


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _data_name(name: str) -> bool:
    return (name.endswith(".jsonl") and not name.endswith(BATCH_METRICS)
            and name not in (GENERATE_METRICS, HISTORY) and not name.endswith(_SIDE_FILES))


def _files(path: Path, scope: Scope) -> tuple[dict[str, Path], list[str]]:
    """A folder's data files by shown name, and the names of links leading out of the scope."""
    data, links = {}, []
    for entry in sorted(path.iterdir()):
        if not _data_name(entry.name):
            continue
        name = shown_name(entry.name)
        while name in data:
            name += "'"
        if not scope.allows(entry):
            links.append(name)
        elif entry.is_file():
            data[name] = entry
    return data, links


def _inside(path: Path, scope: Scope) -> Path | None:
    return path if scope.allows(path) and path.is_file() else None


def _folder(path: Path, name: str, scope: Scope) -> Run:
    data, links = _files(path, scope)
    summary = _inside(path / "summary.json", scope)
    kind = "generate" if (path / "requests.jsonl").is_file() and summary else "folder"
    metrics = path / GENERATE_METRICS
    evals = [p for p in sorted(path.glob("*.json")) if p.name != "summary.json" and _is_eval_file(p, scope)]
    batch_metrics = [p for p in sorted(path.glob("*" + BATCH_METRICS)) if scope.allows(p)]
    if not (kind == "generate" or metrics.is_file()):
        metrics = batch_metrics[0] if batch_metrics else None
    if metrics is not None and not scope.allows(metrics):
        metrics = None
    return Run(name, kind, path, data, summary, metrics, evals, links=links, scope=scope)


def _is_eval_file(path: Path, scope: Scope) -> bool:
    data = _read_json(path, scope)
    return any(_is_eval(r) for r in (data if isinstance(data, list) else [data]))


def _batch_files(path: Path) -> list[Path]:
    """An ``odie batch`` output and the files that come with it."""
    stem = path.with_suffix("")
    return [path, stem.with_name(stem.name + ".errors.jsonl"), stem.with_name(stem.name + ".summary.json"),
            path.with_suffix(BATCH_METRICS)]


def _batch(path: Path, name: str, scope: Scope) -> Run:
    out, errors, summary, metrics = _batch_files(path)
    data, links = {}, []
    for file in (out, errors):
        if scope.allows(file):
            data[shown_name(file.name)] = file
        else:
            links.append(shown_name(file.name))
    return Run(name, "batch", path.parent, data, _inside(summary, scope),
               metrics if scope.allows(metrics) else None, links=links, scope=scope)


def _bench(results: Path, name: str, folder: str, scope: Scope) -> Run:
    """A bench run; a ``results.json`` already there must be one (``ConfigError`` naming it otherwise)."""
    if results.exists():
        bench_files.read(results, os.path.join(folder, bench_files.RESULTS), scope)
    return Run(name, "bench", results.parent, bench=results, shown=folder, scope=scope)


def scope_of(paths: list[str]) -> Scope:
    """What the viewer may read: each folder named, and each file named with the files that come with it."""
    scope = Scope()
    for raw in paths:
        path = Path(raw).resolve()
        if path.is_dir():
            scope.add_root(path)
        elif path.name == bench_files.RESULTS:
            scope.add_file(path)
            scope.add_file(path.with_name(bench_files.RECOMMENDED))
        elif path.suffix == ".jsonl":
            for file in _batch_files(path):
                scope.add_file(file)
        else:
            scope.add_file(path)
    return scope


def load_runs(paths: list[str]) -> list[Run]:
    """A ``Run`` for each argument; ``ConfigError`` naming the first that is not a run."""
    runs, names, scope = [], set(), scope_of(paths)
    for raw in paths:
        path = Path(raw).resolve()
        name = (path.parent.name if path.name == bench_files.RESULTS else path.name) or raw
        while name in names:
            name += "'"
        names.add(name)
        if path.is_dir() and bench_files.is_bench_folder(path, scope):
            runs.append(_bench(path / bench_files.RESULTS, name, raw, scope))
        elif path.is_dir():
            runs.append(_folder(path, name, scope))
        elif path.suffix == ".jsonl" and path.parent.is_dir():  # an output a running batch has yet to create
            runs.append(_batch(path, name, scope))
        elif path.is_file() and path.suffix == ".json" and _is_eval_file(path, scope):
            runs.append(Run(name, "eval", path.parent, evals=[path], scope=scope))
        elif path.name == bench_files.RESULTS:  # a bench before its first load level ends: the page waits for it
            runs.append(_bench(path, name, os.path.dirname(raw) or ".", scope))
        else:
            raise ConfigError(f"{shown_name(raw)}: not a run folder, a .jsonl output, an eval .json file or an "
                              "odie bench results.json (give OUT/results.json to wait for a bench still running)")
    return runs
