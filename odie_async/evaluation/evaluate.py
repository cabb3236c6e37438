"""``odie eval``: score prediction files with the InstructIE paper's two metrics.

Reads one or more prediction files in the released format (a JSON list, or JSONL,
of objects with ``gold``, ``output``, ``category``, ``difficulty``, ``source_type``
and usually ``instruction``, ``text``, ``domain``), prints their scores side by
side, and optionally writes them as JSON (``--json``) and as one bar chart per
metric (``--plot DIR``). ``compat`` reproduces the original scripts exactly.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from .embedder import DEFAULT_BATCH_SIZE, DEFAULT_THREADS, get_embedder
from ..exceptions import EvalError
from ..files import read_json_records, write_atomic
from .metrics import GROUP_FIELDS, REQUIRED_FIELDS, evaluate_records, key_order

log = structlog.get_logger(__name__)

METRICS = {"header": "header soft-match F1", "content": "content ROUGE-Lsum"}


def load_predictions(path: str | Path) -> list[dict]:
    """Read a predictions file (JSON list or JSONL) and check every record's fields.

    Raises ``EvalError`` naming the file and the line (JSONL, bad JSON) or the item
    index (JSON list) of the first problem.
    """
    entries = read_json_records(path, "predictions", error=EvalError, line_error=_line_error)
    records = [_checked(entry.where(path), entry.value) for entry in entries]
    if not records:
        raise EvalError(f"{path}: no predictions in the file")
    return records


def _line_error(path: str, line_no: int, message: str) -> EvalError:
    return EvalError(f"{path}:{line_no}: {message}")


def _checked(location: str, record: object) -> dict:
    """The record if it is an object with every scored field as a string."""
    if not isinstance(record, dict):
        raise EvalError(f"{location}: expected a JSON object, got {type(record).__name__}")
    for field in REQUIRED_FIELDS:
        if field not in record:
            raise EvalError(f"{location}: missing field {field!r}")
        if not isinstance(record[field], str):
            raise EvalError(f"{location}: field {field!r} must be a string, got {type(record[field]).__name__}")
    return record


def coverage_warnings(loaded: Sequence[tuple[str, list]], expect: int | None = None) -> dict[str, str]:
    """A warning per file that holds fewer items than expected (or than the largest file), by path."""
    full = expect or max(len(records) for _path, records in loaded)
    warnings = {}
    for path, records in loaded:
        if len(records) < full:
            warnings[path] = (f"coverage: {path} holds {len(records)} of {full} items "
                              f"({100.0 * len(records) / full:.1f} %); its scores are not comparable")
            log.warning("incomplete predictions", file=path, items=len(records), expected=full)
    return warnings


def score_files(paths: Sequence[str | Path], compat: bool, device: str = "cpu",
                batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = DEFAULT_THREADS,
                expect_items: int | None = None) -> list[dict]:
    """Score each file; every file is validated before the encoder loads."""
    return score_sets([(str(p), load_predictions(p)) for p in paths], compat, device, batch_size, threads,
                      expect_items=expect_items)


def checked_records(records: Sequence[object], source: str = "records") -> list[dict]:
    """In-memory predictions, checked as a file's would be (``source: item N`` names a bad one)."""
    checked = [_checked(f"{source}: item {i}", record) for i, record in enumerate(records)]
    if not checked:
        raise EvalError(f"{source}: no predictions")
    return checked


def score_sets(sets: Sequence[tuple[str, list[dict]]], compat: bool, device: str = "cpu",
               batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = DEFAULT_THREADS,
               on_scored: Callable[[int], None] | None = None, expect_items: int | None = None) -> list[dict]:
    """Score ``(name, records)`` sets with one encoder; ``on_scored(n)`` after each of them.

    A set holding fewer items than ``expect_items`` (or than the largest set) gets a coverage note.
    """
    coverage = coverage_warnings(sets, expect_items)
    started = time.monotonic()
    embedder = get_embedder(device=device, batch_size=batch_size, threads=threads or None)
    log.info("sentence encoder ready", seconds=round(time.monotonic() - started, 2))
    reports = []
    for i, (name, records) in enumerate(sets, start=1):
        started = time.monotonic()
        report = {"file": name, **evaluate_records(records, embedder.encode, compat)}
        if name in coverage:
            report["notes"] = [coverage[name], *report["notes"]]
        log.info("scored", file=name, items=len(records), done=f"{i}/{len(sets)}",
                 seconds=round(time.monotonic() - started, 2))
        reports.append(report)
        if on_scored is not None:
            on_scored(i)
    return reports


def _labels(reports: Sequence[dict]) -> list[str]:
    """Short column names: file stems, or full paths where two stems clash."""
    stems = [Path(r["file"]).stem for r in reports]
    return [s if stems.count(s) == 1 else r["file"] for s, r in zip(stems, reports)]


def _rows(reports: Sequence[dict]) -> list[tuple[str, str, list[float | None]]]:
    """(metric, row label, one score per file) for every metric and group."""
    rows = []
    for metric in METRICS:
        names = ["overall"] + (["precision", "recall"] if metric == "header" else [])
        rows += [(metric, name, [r[metric][name] for r in reports]) for name in names]
        for field in GROUP_FIELDS:
            keys = sorted({k for r in reports for k in r[metric][field]}, key=key_order)
            rows += [(metric, f"{field}={k}", [r[metric][field].get(k) for r in reports]) for k in keys]
    return rows


def format_table(reports: Sequence[dict]) -> str:
    """The scores of every file side by side, with the mode and its notes on top."""
    labels = _labels(reports)
    width = max(12, *(len(label) + 2 for label in labels))
    lines = [f"mode: {reports[0]['mode']}"]
    for report, label in zip(reports, labels):
        lines += [f"note ({label}): {note}" for note in report["notes"]]
    lines.append(f"{'metric':<9}{'group':<26}" + "".join(f"{label:>{width}}" for label in labels))
    for metric, name, values in _rows(reports):
        cells = "".join(f"{'-' if v is None else f'{v:.2f}':>{width}}" for v in values)
        lines.append(f"{metric:<9}{name:<26}{cells}")
    lines.append(f"{'items':<35}" + "".join(f"{r['n']:>{width}}" for r in reports))
    return "\n".join(lines)


def plot_reports(reports: Sequence[dict], out_dir: str | Path) -> list[Path]:
    """One PNG per metric: a group of bars per score, one bar per file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels, written = _labels(reports), []
    for metric, title in METRICS.items():
        rows = [(name, values) for m, name, values in _rows(reports)
                if m == metric and name not in ("precision", "recall")]
        fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(rows) * max(1, len(reports)) ** 0.5), 4.5))
        bar = 0.8 / len(reports)
        for j, label in enumerate(labels):
            heights = [math.nan if values[j] is None else values[j] for _, values in rows]
            xs = [i + (j - (len(reports) - 1) / 2) * bar for i in range(len(rows))]
            ax.bar(xs, heights, width=bar, label=label)
        ax.set_xticks(range(len(rows)), [name.split("=")[-1] for name, _ in rows], rotation=30, ha="right")
        ax.set_ylabel("score (0-100)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{title} ({reports[0]['mode']} mode)")
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"{metric}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
        log.info("wrote plot", path=str(path))
    return written


def write_scores(reports: Sequence[dict], path: str | Path) -> None:
    """The scores as JSON: one object for one file, a list for several."""
    payload = reports[0] if len(reports) == 1 else list(reports)
    write_atomic(path, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))
    log.info("wrote scores", path=str(path))
